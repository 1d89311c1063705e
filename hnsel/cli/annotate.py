"""``hnsel annotate export|import``: what annotators need out, their captions back in."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import api
from . import app
from ._common import ConfigOpt, JsonOpt, NamespaceOpt, TokenOpt, UriOpt, console, get_config, handle_errors, print_json

annotate_app = typer.Typer(help="Export a round for annotators; import their captions (all or nothing).", no_args_is_help=True)
app.add_typer(annotate_app, name="annotate")


@annotate_app.command("export")
@handle_errors
def export(
    round_: Annotated[int, typer.Option("--round", help="The round to export (hnsel round list).")],
    format: Annotated[str, typer.Option("--format", help="csv, jsonl, or label-studio (tasks .json + .label_config.xml).")] = "csv",
    out: Annotated[Optional[Path], typer.Option("--out", help="File to write (default round-NNNN.csv/.jsonl/.json here).")] = None,
    include_annotated: Annotated[bool, typer.Option("--include-annotated", help="Also the samples already annotated.")] = False,
    decisions: Annotated[Optional[Path], typer.Option("--from", help="Export only the accepted picks of this decisions file (the report's download).")] = None,
    config: ConfigOpt = None, milvus_uri: UriOpt = None, token: TokenOpt = None, namespace: NamespaceOpt = None, json_output: JsonOpt = False,
) -> None:
    """Write round N's samples awaiting annotation: ids and uris (image modality) or captions (text modality)."""
    report = api.export_round(get_config(config, milvus_uri, token, namespace), round_, format, out, include_annotated, decisions=decisions)
    if json_output:
        print_json(report.__dict__)
    else:
        console.print(f"round {report.round} ({report.modality} modality): {report.rows} samples written to {', '.join(report.files)}", markup=False)


@annotate_app.command("import")
@handle_errors
def import_(
    file: Annotated[Path, typer.Argument(help="CSV/JSONL with image_id, caption [, caption_id, vector] (or text_id, image_id), or a Label Studio JSON export.")],
    model_name: Annotated[Optional[str], typer.Option("--model-name", help="open_clip model to embed captions (default: the store's model record).")] = None,
    pretrained: Annotated[Optional[str], typer.Option("--pretrained", help="Its weights (default: the store's model record).")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps.")] = "auto",
    config: ConfigOpt = None, milvus_uri: UriOpt = None, token: TokenOpt = None, namespace: NamespaceOpt = None, json_output: JsonOpt = False,
) -> None:
    """Add the annotators' captions as paired texts and pair their images; any bad row refuses the whole file."""
    report = api.import_annotations(get_config(config, milvus_uri, token, namespace), file, model_name=model_name, pretrained=pretrained,
                                    device=device)
    if json_output:
        print_json(report.summary())
        return
    for line in report.repaired:
        console.print(f"repaired: {line}", markup=False, highlight=False)
    console.print(f"{file}: {report.rows} rows; {report.texts_written} captions written ({report.texts_unchanged} already there), "
                  f"{report.images_paired} images paired ({report.images_already_paired} already paired)", markup=False)
