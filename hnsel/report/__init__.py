"""``hnsel report``: a static HTML page of what a selection picked and why (``build_report``).

``picks`` reads a recorded round or a selection file, ``evidence`` recomputes each pick's violations with
hardneg's threshold code, ``thumbs`` makes the thumbnails, ``page`` writes the HTML; ``build`` joins them.
"""

from .build import ReportResult, build_report

__all__ = ["build_report", "ReportResult"]
