"""The manifest column options every command that reads a source shares (``embed``, ``train``, ``eval``, ``simulate``)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

__all__ = ["IdColumnOpt", "UriColumnOpt", "CaptionColumnOpt", "column_options"]

_PANEL = "Manifest columns"
IdColumnOpt = Annotated[Optional[str], typer.Option(
    "--id-column", help="Manifest: the column of image ids (default: id; without one, an image's id is its path relative to "
                        "--images-dir, as for a folder).", rich_help_panel=_PANEL)]
UriColumnOpt = Annotated[Optional[str], typer.Option(
    "--uri-column", help="Manifest: the column of image paths or URLs, e.g. filename (default: uri).", rich_help_panel=_PANEL)]
CaptionColumnOpt = Annotated[Optional[str], typer.Option(
    "--caption-column", help="Manifest: the column of captions (default: caption); several captions of an image are several rows, "
                             "rows without one leave the image unpaired.", rich_help_panel=_PANEL)]


def column_options(id_column: str | None, uri_column: str | None, caption_column: str | None) -> dict[str, str | None]:
    """The keyword arguments the api functions take."""
    return {"id_column": id_column, "uri_column": uri_column, "caption_column": caption_column}
