"""``hnsel datasets ...``: datasets hnsel makes itself."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import api
from . import app
from ._common import JsonOpt, console, either, handle_errors, print_json, progress_bar, renamed, show_progress

datasets_app = typer.Typer(help="Datasets hnsel generates itself (no download).", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")


@datasets_app.command("scenes")
@handle_errors
def scenes(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write images/ and dataset_scenes.json (Karpathy-style) into.")],
    n: Annotated[int, typer.Option("--num-images", help="Number of images to render.")] = 1000,
    n_old: Annotated[Optional[int], renamed("--n", "--num-images")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed: the same seed gives the same files.")] = 0,
    per_category: Annotated[int, typer.Option("--per-category", help="Images per fine category (1 to 50): 1 is coverage-limited, many is finely categorised.")] = 1,
    image_size: Annotated[int, typer.Option("--image-size", help="Image side in pixels (64 to 128).")] = 96,
    captions: Annotated[int, typer.Option("--captions", help="Paraphrased captions per image.")] = 5,
    val: Annotated[float, typer.Option("--val", help="Fraction of images in the val split.")] = 0.1,
    test: Annotated[float, typer.Option("--test", help="Fraction of images in the test split.")] = 0.1,
    json_output: JsonOpt = False,
) -> None:
    """Render finely-categorised scenes (shape, colour, size, position, count, texture) with paraphrased captions."""
    n = either(n, n_old, "n", "--n", "--num-images")
    with progress_bar(show_progress(json_output)) as on_progress:
        report = api.generate_scenes(out_dir, n, seed, per_category=per_category, image_size=image_size, captions=captions,
                                 val=val, test=test, on_progress=on_progress)
    if json_output:
        print_json(report.summary())
        return
    splits = ", ".join(f"{k} {v}" for k, v in report.splits.items())
    console.print(
        f"{report.images} images in {report.categories} fine categories ({report.families} families), {report.captions} captions; "
        f"{splits}; {report.images / max(report.seconds, 1e-9) * 60:,.0f} images/min",
        highlight=False,
    )
    console.print(f"wrote {report.json_path}; embed with: hnsel embed {report.json_path}", highlight=False, markup=False)


@datasets_app.command("vectors")
@handle_errors
def vectors(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write images.parquet and texts.parquet (the `hnsel ingest` format) into.")],
    paired: Annotated[int, typer.Option("--paired", help="Paired images (each with --captions captions).")] = 1000,
    unpaired: Annotated[int, typer.Option("--unpaired", help="Unpaired images: the pool a selection picks from.")] = 20000,
    captions: Annotated[int, typer.Option("--captions", help="Captions per paired image.")] = 3,
    dim: Annotated[int, typer.Option("--dim", help="Vector dimension.")] = 128,
    seed: Annotated[int, typer.Option("--seed", help="Seed: the same seed gives the same files.")] = 0,
    json_output: JsonOpt = False,
) -> None:
    """Write a synthetic embedding pool (fine categories, a modality gap; no images, no model) to ingest with `hnsel ingest`."""
    summary = api.generate_vectors(out_dir, paired, unpaired, captions_per_image=captions, dim=dim, seed=seed)
    if json_output:
        print_json(summary)
        return
    console.print(f"{summary['paired']:,} paired and {summary['unpaired']:,} unpaired images, {summary['captions']:,} captions, dim {summary['dim']}; "
                  f"ingest with: hnsel ingest --images {summary['images']} --texts {summary['texts']}", highlight=False, markup=False)
