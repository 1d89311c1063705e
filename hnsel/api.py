"""The one facade the CLI and Python callers use: every user job, by name. Everything the CLI can do is here.

>>> from hnsel import api, load_config
>>> config = load_config()
>>> result = api.select(config, budget=1000)            # doctest: +SKIP  (records round N, as `hnsel select` does)
>>> look = api.select(config, budget=20, record=False)  # doctest: +SKIP  (records nothing)

Names resolve lazily (PEP 562): ``api.status`` imports the store and nothing else, so a command that needs no
model never pays for torch. Each name lives in the ``hnsel.workflows`` module of its job; the same names are
imported under ``TYPE_CHECKING`` so editors and mypy see their real signatures (tests/test_packaging.py keeps
the two lists equal).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what editors and mypy see; at run time each name is imported on first use (``__getattr__``)
    from .data.scenes import generate_scenes
    from .data.synthetic import generate_vectors
    from .data.shards import ShardSource, open_shards
    from .report import ReportResult
    from .report import build_report as report
    from .store.problem import build_problem
    from .workflows.annotate import ExportReport, ImportReport, export_round, import_annotations
    from .workflows.embed import EmbedReport, embed, write_bulk
    from .workflows.ingest import IngestReport, ingest, status
    from .workflows.label_studio import PullReport, PushReport, pull_round, push_round
    from .workflows.ray_cluster import connect as connect_ray
    from .workflows.ray_embed import embed_shards
    from .workflows.ray_select import select_hardneg
    from .workflows.reembed import ReembedReport, reembed
    from .workflows.repair import repair
    from .workflows.rounds import release, show_round
    from .workflows.select import SelectResult, select
    from .workflows.simulate import SimulateReport, simulate
    from .workflows.train import EvalReport, TrainReport, evaluate, train

_WHERE = {
    "ingest": "workflows.ingest", "IngestReport": "workflows.ingest", "status": "workflows.ingest",
    "select": "workflows.select", "SelectResult": "workflows.select",
    "build_problem": "store.problem",
    "reembed": "workflows.reembed", "ReembedReport": "workflows.reembed",
    "embed": "workflows.embed", "EmbedReport": "workflows.embed", "write_bulk": "workflows.embed",
    "train": "workflows.train", "TrainReport": "workflows.train", "evaluate": "workflows.train", "EvalReport": "workflows.train",
    "release": "workflows.rounds", "show_round": "workflows.rounds",
    "repair": "workflows.repair",
    "export_round": "workflows.annotate", "ExportReport": "workflows.annotate",
    "import_annotations": "workflows.annotate", "ImportReport": "workflows.annotate",
    "push_round": "workflows.label_studio", "PushReport": "workflows.label_studio", "pull_round": "workflows.label_studio", "PullReport": "workflows.label_studio",
    "simulate": "workflows.simulate", "SimulateReport": "workflows.simulate",
    "report": "report", "ReportResult": "report",
    "generate_scenes": "data.scenes", "generate_vectors": "data.synthetic",
    "open_shards": "data.shards", "ShardSource": "data.shards",
    "connect_ray": "workflows.ray_cluster", "embed_shards": "workflows.ray_embed", "select_hardneg": "workflows.ray_select",
}
_RENAMED = {"report": "build_report", "connect_ray": "connect"}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'hnsel.api' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"hnsel.{_WHERE[name]}"), _RENAMED.get(name, name))
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return __all__
