"""BulkWriter files for a Milvus server's ``bulk_import``: rows into Parquet files, one LocalBulkWriter per
collection, with the schema ``Store`` creates (``milvus.collection_schema``)."""

from __future__ import annotations

import logging
from pathlib import Path

from ..config import StoreConfig
from ..errors import InputError
from ..schema import KINDS, SCALAR_FIELDS
from .milvus import collection_schema

__all__ = ["BulkSink"]


class BulkSink:
    """``write(kind, data)`` appends rows (``data``: column lists with ``id`` and ``vector``); ``close()`` flushes
    and returns the files written per collection."""

    def __init__(self, config: StoreConfig, out_dir: Path, dim: int):
        try:
            from pymilvus.bulk_writer import BulkFileType, LocalBulkWriter
        except ModuleNotFoundError as exc:
            raise InputError(f"--bulk needs pymilvus's bulk_writer extra ({exc}); pip install 'hnsel[bulk]'") from None
        for name in [n for n in logging.root.manager.loggerDict if n.startswith("pymilvus.bulk_writer")] + ["bulk_writer"]:
            logging.getLogger(name).setLevel(logging.WARNING)  # it logs every flush at INFO
        self.fields = {kind: getattr(config, kind) for kind in KINDS}
        self.writers = {kind: LocalBulkWriter(schema=collection_schema(self.fields[kind], kind, dim), local_path=str(out_dir / kind),
                                              file_type=BulkFileType.PARQUET) for kind in KINDS}

    def write(self, kind: str, data: dict) -> None:
        f, writer = self.fields[kind], self.writers[kind]
        scalars = [c for c in SCALAR_FIELDS[kind] if c in data and c != "round"]
        for i, row_id in enumerate(data["id"]):
            row = {f.id: str(row_id), f.vector: data["vector"][i].tolist(), f.round: -1}
            row.update({getattr(f, c): data[c][i] for c in scalars})
            writer.append_row(row)

    def close(self) -> dict[str, list[str]]:
        files: dict[str, list[str]] = {}
        for kind, writer in self.writers.items():
            writer.commit()
            files[kind] = [str(p) for batch in writer.batch_files for p in batch]
        return files
