"""``hnsel report``: a static HTML page of what a selection picked and why (``build_report``).

``picks`` reads a recorded round or a selection file, ``evidence`` recomputes each pick's violations with
hardneg's threshold code, ``mapdata`` and ``layout`` place samples and picks on the 2-D map (UMAP or PCA),
``thumbs`` makes the thumbnails, ``page`` renders ``templates/report.html`` (Jinja2) and copies ``static/``;
``build`` joins them. The page's decisions file is read by ``workflows.decisions``.
"""

from .build import ReportResult, build_report

__all__ = ["build_report", "ReportResult"]
