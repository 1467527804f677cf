"""`shanshui data ...` commands: thin wrappers that validate options and call one library function each."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from shanshui.data.dataset import render_dataset

app = typer.Typer(
    help="Training data: procedural shan shui paintings (山水画) with exact bilingual captions.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _group() -> None:
    """Training data: procedural shan shui paintings (山水画) with exact bilingual captions."""


class Fmt(str, Enum):
    """Which painting formats to render."""

    mixed = "mixed"
    square = "square"
    tall = "tall"
    wide = "wide"


@app.command("render")
def render_cmd(
    out: Annotated[Path, typer.Argument(help="Folder to write (imagefolder: images/*.png + metadata.jsonl); re-run to resume.")],
    count: Annotated[int, typer.Option("--count", "-n", help="How many images the data set holds.")] = 1000,
    size: Annotated[int, typer.Option("--size", help="Image side in pixels, a multiple of 8 (64..2048).")] = 256,
    seed: Annotated[int, typer.Option("--seed", help="Data set seed; image i uses a scene seed derived from (seed, i).")] = 0,
    workers: Annotated[Optional[int], typer.Option("--workers", "-w", help="Processes to use [default: every core].")] = None,
    fmt: Annotated[Fmt, typer.Option("--format", help="Painting format: square, tall scroll, wide handscroll or mixed.")] = Fmt.mixed,
    p_empty: Annotated[float, typer.Option("--p-empty", help="Share of images with empty captions (classifier-free guidance).")] = 0.1,
) -> None:
    """Render COUNT captioned paintings into OUT; images already complete there are kept."""
    console = Console(stderr=True)
    with Progress(TextColumn("rendering"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("render", total=count)
        result = render_dataset(out, count, size=size, seed=seed, workers=workers, fmt=None if fmt is Fmt.mixed else fmt.value,
                                p_empty=p_empty, progress=lambda done, total: bar.update(task, completed=done, total=total))
    typer.echo(f"wrote {result.rendered} images to {result.out} ({result.skipped} already there, {result.total} in all), "
               f"{result.images_per_s:.1f} images/s")
