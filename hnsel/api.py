"""The workflows the CLI calls, for Python callers too. Everything the CLI can do is here.

>>> from hnsel import api, load_config
>>> config = load_config()
>>> result = api.select(config, budget=1000)            # doctest: +SKIP
"""

from __future__ import annotations

from .workflows_embed import EmbedReport, check_model, embed, write_bulk
from .workflows_select import IngestReport, SelectResult, build_problem, ingest, select, status
from .workflows_train import EvalReport, TrainReport, evaluate, train
from .workflows_annotate import ExportReport, ImportReport, export_round, import_annotations
from .workflows_rounds import release, show_round
from .workflows_repair import repair
from .simulate import SimulateReport, simulate
from .report import ReportResult, build_report as report

__all__ = [
    "ingest", "IngestReport", "select", "SelectResult", "status", "build_problem",
    "embed", "EmbedReport", "check_model", "write_bulk",
    "train", "TrainReport", "evaluate", "EvalReport",
    "release", "show_round", "repair", "export_round", "ExportReport", "import_annotations", "ImportReport",
    "simulate", "SimulateReport",
    "report", "ReportResult",
]
