"""`shanshui engine build|info`: thin commands over shanshui.engines.build (TensorRT is imported only when needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from shanshui.engines import trt
from shanshui.engines.build import build_engines, check_engines, default_engine_dir, describe
from shanshui.errors import ShanshuiError
from shanshui.limits import check_float
from shanshui.spec.engine_manifest import ENGINE_MANIFEST, read_engine_manifest
from shanshui.spec.contract import Precision
from shanshui.spec.manifest import open_exported

app = typer.Typer(help="TensorRT engines for NVIDIA GPUs, built from an export folder.", no_args_is_help=True,
                  add_completion=False)


@app.callback()
def _group() -> None:
    """TensorRT engines for NVIDIA GPUs, built from an export folder."""


@app.command()
def build(
    export_dir: Annotated[Path, typer.Argument(help="An export folder (from `shanshui export`).")],
    precision: Annotated[Precision, typer.Option(help="fp16: from an fp32 export (TensorRT 10) or an fp16 export; "
                                              "int8: from an int8 (QDQ) export; fp32: exact, for reference.")] = Precision.fp16,
    shapes: Annotated[Optional[str], typer.Option(help="Static shape buckets NxHxW (images × height × width), comma-separated, "
                                         "e.g. 1x256x256,2x256x256; default: one image at the model's size.")] = None,
    dynamic: Annotated[bool, typer.Option("--dynamic", help="One dynamic profile over the export's size and batch ranges "
                                 "(optimised for the first --shapes bucket) instead of static buckets.")] = False,
    out: Annotated[Optional[Path], typer.Option(help="Engine folder; default: EXPORT_DIR/engines.")] = None,
    workspace_gib: Annotated[Optional[float], typer.Option(help="Builder workspace limit in GiB (default: TensorRT's).")] = None,
):
    """Build (or reuse) TensorRT engines for text encoder, U-Net and VAE decoder on this GPU."""

    if workspace_gib is not None:
        check_float("--workspace-gib", workspace_gib, 0.0, 4096.0, lo_open=True, hint="e.g. 4")
    manifest = build_engines(
        export_dir, out, precision=precision.value, shapes=shapes, dynamic=dynamic,
        workspace_bytes=int(workspace_gib * 2**30) if workspace_gib else None,
        on_event=lambda comp, what: typer.echo(f"  {comp}: {what}", err=True),
    )
    for line in describe(manifest):
        typer.echo(line)
    typer.echo(f"wrote {manifest['out_dir']}")


@app.command()
def info(
    folder: Annotated[Path, typer.Argument(help="An export folder (its engines/ is read) or an engine folder.")],
):
    """List the engines in a folder and whether they can run on this machine."""

    engine_dir = folder if (folder / ENGINE_MANIFEST).is_file() else default_engine_dir(folder)
    manifest = read_engine_manifest(engine_dir) if engine_dir.is_dir() else None
    if manifest is None:
        raise ShanshuiError(f"no TensorRT engines in {engine_dir}: build them with `shanshui engine build EXPORT_DIR`")
    for line in describe(manifest):
        typer.echo(line)
    try:

        check_engines(open_exported(manifest["export"]), trt.environment(), engine_dir)
        typer.echo("they run on this machine")
    except ShanshuiError as e:
        typer.echo(f"they cannot run here: {e}")
