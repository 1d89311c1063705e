"""The one facade the CLI and Python callers use: every user job, by name. Everything the CLI can do is here.

>>> from hnsel import api, load_config
>>> config = load_config()
>>> result = api.select(config, budget=1000)            # doctest: +SKIP

Names resolve lazily (PEP 562): ``api.status`` imports the store and nothing else, so a command that needs no
model never pays for torch. Each name lives in the ``hnsel.workflows`` module of its job.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "ingest": "workflows.ingest", "IngestReport": "workflows.ingest", "status": "workflows.ingest",
    "select": "workflows.select", "SelectResult": "workflows.select",
    "build_problem": "store.problem",
    "reembed": "workflows.reembed", "ReembedReport": "workflows.reembed",
    "embed": "workflows.embed", "EmbedReport": "workflows.embed", "check_model": "workflows.embed", "write_bulk": "workflows.embed",
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
