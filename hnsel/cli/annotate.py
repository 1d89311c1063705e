"""``hnsel annotate export|import``: what annotators need out, their captions back in."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import api
from . import app
from ._common import ConfigOpt, DeviceOpt, JsonOpt, NamespaceOpt, TokenOpt, UriOpt, console, get_config, handle_errors, print_json

annotate_app = typer.Typer(help="Export a round for annotators (a file, or a Label Studio project); import their captions (all or nothing).",
                           no_args_is_help=True)
app.add_typer(annotate_app, name="annotate")

DocRootOpt = Annotated[Optional[str], typer.Option("--document-root", help="Label Studio's LOCAL_FILES_DOCUMENT_ROOT, a folder above the images: "
                                                   "local images become /data/local-files/?d=PATH-UNDER-IT. Env: LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT; default /.")]
PrefixOpt = Annotated[Optional[str], typer.Option("--url-prefix", help="Images served by a web server of yours: PREFIX/PATH-UNDER-THE-DOCUMENT-ROOT "
                                                  "instead of Label Studio's local files.")]
LsUrlOpt = Annotated[Optional[str], typer.Option("--url", help="Label Studio server, e.g. http://localhost:8080. Env: LABEL_STUDIO_URL.")]
LsKeyOpt = Annotated[Optional[str], typer.Option("--api-key", help="Label Studio API token (Account & Settings). Env: LABEL_STUDIO_API_KEY.")]
ProjectOpt = Annotated[Optional[str], typer.Option("--project", help="Project title or id (default: 'hnsel NAMESPACE round N').")]


@annotate_app.command("export")
@handle_errors
def export(
    round_: Annotated[int, typer.Option("--round", help="The round to export (hnsel round list).")],
    format: Annotated[str, typer.Option("--format", help="csv, jsonl, or label-studio (tasks .json + .label_config.xml).")] = "csv",
    out: Annotated[Optional[Path], typer.Option("--out", help="File to write (default round-NNNN.csv/.jsonl/.json here).")] = None,
    include_annotated: Annotated[bool, typer.Option("--include-annotated", help="Also the samples already annotated.")] = False,
    document_root: DocRootOpt = None, url_prefix: PrefixOpt = None,
    decisions: Annotated[Optional[Path], typer.Option("--from", help="Export only the accepted picks of this decisions file (the report's download).")] = None,
    config: ConfigOpt = None, milvus_uri: UriOpt = None, token: TokenOpt = None, namespace: NamespaceOpt = None, json_output: JsonOpt = False,
) -> None:
    """Write round N's samples awaiting annotation: ids and uris (image modality) or captions (text modality)."""
    report = api.export_round(get_config(config, milvus_uri, token, namespace), round_, format, out, include_annotated,
                              document_root=document_root, url_prefix=url_prefix, decisions=decisions)
    if json_output:
        print_json(report.__dict__)
        return
    console.print(f"round {report.round} ({report.modality} modality): {report.rows} samples written to {', '.join(report.files)}", markup=False)
    for note in report.notes:
        console.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)


@annotate_app.command("push")
@handle_errors
def push(
    round_: Annotated[int, typer.Option("--round", help="The round to send (hnsel round list).")],
    url: LsUrlOpt = None, api_key: LsKeyOpt = None, project: ProjectOpt = None, document_root: DocRootOpt = None, url_prefix: PrefixOpt = None,
    include_annotated: Annotated[bool, typer.Option("--include-annotated", help="Also the samples already annotated.")] = False,
    config: ConfigOpt = None, milvus_uri: UriOpt = None, token: TokenOpt = None, namespace: NamespaceOpt = None, json_output: JsonOpt = False,
) -> None:
    """Round N's samples as tasks of a Label Studio project (created or reused); pushing again adds only what is missing."""
    report = api.push_round(get_config(config, milvus_uri, token, namespace), round_, url=url, api_key=api_key, project=project,
                            document_root=document_root, url_prefix=url_prefix, include_annotated=include_annotated)
    if json_output:
        print_json(report.__dict__)
        return
    verb = "created" if report.project_created else "reused"
    console.print(f"round {report.round}: {report.tasks_added} tasks added ({report.tasks_already} already there) to Label Studio project "
                  f"{report.project_id} '{report.project_title}' ({verb}): {report.url}/projects/{report.project_id}", markup=False, highlight=False, soft_wrap=True)
    for path in report.storages_added:
        console.print(f"local files storage added for {path}", markup=False, highlight=False, soft_wrap=True)


@annotate_app.command("pull")
@handle_errors
def pull(
    round_: Annotated[Optional[int], typer.Option("--round", help="The round whose project to read (the one push made).")] = None,
    url: LsUrlOpt = None, api_key: LsKeyOpt = None, project: ProjectOpt = None,
    model_name: Annotated[Optional[str], typer.Option("--model-name", help="Model to embed captions (default: the store's model record).")] = None,
    pretrained: Annotated[Optional[str], typer.Option("--pretrained", help="Its weights (default: the store's model record).")] = None,
    device: DeviceOpt = "auto",
    config: ConfigOpt = None, milvus_uri: UriOpt = None, token: TokenOpt = None, namespace: NamespaceOpt = None, json_output: JsonOpt = False,
) -> None:
    """Import the finished annotations of a Label Studio project (all or nothing); pulling again writes nothing new."""
    report = api.pull_round(get_config(config, milvus_uri, token, namespace), round_, url=url, api_key=api_key, project=project,
                            model_name=model_name, pretrained=pretrained, device=device)
    if json_output:
        print_json(report.summary())
        return
    done = report.imported
    for line in done.repaired:
        console.print(f"repaired: {line}", markup=False, highlight=False)
    console.print(f"Label Studio project {report.project_id} '{report.project_title}': {report.tasks_annotated} tasks annotated; "
                  f"{done.texts_written} captions written ({done.texts_unchanged} already there), {done.images_paired} images paired "
                  f"({done.images_already_paired} already paired)", markup=False, highlight=False, soft_wrap=True)


@annotate_app.command("import")
@handle_errors
def import_(
    file: Annotated[Path, typer.Argument(help="CSV/JSONL with image_id, caption [, caption_id, vector] (or text_id, image_id), or a Label Studio JSON export.")],
    model_name: Annotated[Optional[str], typer.Option("--model-name", help="open_clip model to embed captions (default: the store's model record).")] = None,
    pretrained: Annotated[Optional[str], typer.Option("--pretrained", help="Its weights (default: the store's model record).")] = None,
    device: DeviceOpt = "auto",
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
