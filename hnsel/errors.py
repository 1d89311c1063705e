"""Errors hnsel raises for a user's mistake.

Every error carries a one-line message that names the file, row or id involved and says what to do.
The CLI turns any ``HnselError`` into that line on stderr and exit code 1, with no traceback.
"""

from __future__ import annotations

__all__ = [
    "HnselError",
    "ConfigError",
    "InputError",
    "StoreError",
    "StoreLockedError",
    "ModelMismatchError",
    "SelectionError",
]


class HnselError(Exception):
    """Base class: a problem the user can fix. ``str(err)`` is the whole one-line message."""

    exit_code = 1


class ConfigError(HnselError):
    """hnsel.toml or a flag holds a value hnsel cannot use."""


class InputError(HnselError):
    """An input file (vectors, manifest, annotations, images) is malformed."""

    def __init__(self, message: str, *, path: object = None, row: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}"
            if row is not None:
                where += f", row {row}"
            where += ": "
        super().__init__(where + message)
        self.path = path
        self.row = row


class StoreError(HnselError):
    """Milvus refused an operation, or the store holds something hnsel cannot use."""


class StoreLockedError(StoreError):
    """A Milvus Lite file is already opened by another process."""


class ModelMismatchError(StoreError):
    """Vectors from one embedding model would be mixed with vectors of another."""


class SelectionError(HnselError):
    """A selection cannot be made as asked (budget, empty pools, unknown strategy)."""
