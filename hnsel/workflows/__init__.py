"""One module per user job, end to end: ``ingest`` (and ``status``), ``embed``, ``select``, ``rounds``, ``annotate``,
``repair``, ``train`` (and ``evaluate``), ``simulate``. ``hnsel.api`` is the facade over them; import from there.
"""
