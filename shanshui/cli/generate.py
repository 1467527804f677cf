"""`shanshui generate`: paint a prompt into PNGs (text-to-image, or image-to-image with --init-image)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from shanshui import limits
from shanshui.env import default_threads
from shanshui.errors import ShanshuiError
from shanshui.runtime.backends import Backend, Device
from shanshui.runtime.image import numbered, save_png
from shanshui.runtime.pipeline import Request, open_pipeline
from shanshui.runtime.samplers import Sampler
from shanshui.spec.contract import TorchPrecision
from shanshui.runtime.lowmem import format_mb, resolve
from shanshui.spec.folders import default_model_dir


LOW_MEMORY_HELP = ("Smallest memory (ONNX exports on the CPU): load, run and free one component at a time, lean ONNX "
                   "Runtime sessions, the guidance batch split, the VAE decoded in blended tiles; the U-Net streamed "
                   "part by part from an export made by `shanshui lowmem`. Slower.")
MAX_MEMORY_HELP = ("A memory budget such as 1G or 800M: the fastest strategy whose estimated peak fits is used and "
                   "printed; too small a budget is refused with the smallest one that works.")


def memory_strategy(model: Optional[Path], low_memory: bool, max_memory: Optional[str], height: Optional[int],
                    width: Optional[int], n: int, guidance: bool):
    """The lowmem.Strategy of --low-memory / --max-memory (None without them), chosen before loading, and printed."""
    if low_memory and max_memory is not None:
        raise ShanshuiError("--low-memory and --max-memory are alternatives; give one")
    if not low_memory and max_memory is None:
        return None
    strategy, est = resolve(model if model is not None else default_model_dir(), low_memory, max_memory, height, width,
                            n, guidance)
    budget = f" of the {max_memory} budget" if max_memory else ""
    typer.echo(f"memory: {strategy.name} (estimated peak {format_mb(est['peak_mb'])}{budget})", err=True)
    return strategy


def generate(
    prompt: Annotated[str, typer.Argument(help="What to paint, in Chinese or English.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG to write (several images get -0, -1 … suffixes).")] = Path("shanshui.png"),
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Export folder (ONNX Runtime) or diffusers folder (PyTorch); default: the shipped model.")] = None,
    steps: Annotated[int, typer.Option(help="Sampling steps.")] = 25,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale (1 = off).")] = 7.5,
    seed: Annotated[int, typer.Option(help="Seed of the initial noise; the same seed gives the same painting.")] = 0,
    height: Annotated[Optional[int], typer.Option(help="Image height in pixels, a multiple of 8 (default: the model's).")] = None,
    width: Annotated[Optional[int], typer.Option(help="Image width in pixels, a multiple of 8 (default: the model's).")] = None,
    sampler: Annotated[Sampler, typer.Option(help="Sampling algorithm.")] = Sampler.dpmpp_2m,
    backend: Annotated[Backend, typer.Option(help="auto: onnxruntime for an export folder, torch for a diffusers folder; "
                                    "tensorrt runs the engines of `shanshui engine build`.")] = Backend.auto,
    device: Annotated[Device, typer.Option(help="auto uses a CUDA GPU when the backend can.")] = Device.auto,
    negative_prompt: Annotated[str, typer.Option("--negative-prompt", "-n", help="What to steer away from.")] = "",
    num_images: Annotated[int, typer.Option(help="Images to make from the prompt (one batch).")] = 1,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads (default: SHANSHUI_THREADS or the runtime's choice).")] = None,
    precision: Annotated[Optional[TorchPrecision], typer.Option(help="torch backend: fp32 (default); fp16, bf16 on CUDA; int8 (bitsandbytes, CPU or CUDA).")] = None,
    cuda_graphs: Annotated[Optional[bool], typer.Option("--cuda-graphs/--no-cuda-graphs", help="Replay static shapes as CUDA graphs "
                                               "(tensorrt: on by default; torch on CUDA: the U-Net, off by default).")] = None,
    init_image: Annotated[Optional[Path], typer.Option("--init-image", help="Image-to-image: start from this picture (a photo "
                                              "or a rough sketch, PNG/JPEG), scaled and centre-cropped to the image size.")] = None,
    strength: Annotated[Optional[float], typer.Option(help="With --init-image: how much to repaint, in (0, 1] (default 0.6); "
                                             "low keeps the picture, high keeps only its layout.")] = None,
    low_memory: Annotated[bool, typer.Option("--low-memory", help=LOW_MEMORY_HELP)] = False,
    max_memory: Annotated[Optional[str], typer.Option("--max-memory", help=MAX_MEMORY_HELP)] = None,
):
    """Paint a prompt into a PNG (or repaint a picture with --init-image)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if strength is not None and init_image is None:
        raise ShanshuiError("--strength is for image-to-image; give the picture with --init-image")
    threads = limits.check_threads(threads) or default_threads()
    output = limits.writable_file(output, ".png")
    req = Request(prompt=prompt, negative_prompt=negative_prompt, steps=steps, guidance=guidance, seed=seed,
                  height=height, width=width, sampler=sampler.value, num_images=num_images, init_image=init_image,
                  strength=0.6 if strength is None else strength)
    limits.check_request(req)
    memory = memory_strategy(model, low_memory, max_memory, height, width, num_images, guidance != 1)
    pipe = open_pipeline(model, backend=backend.value, device=device.value, threads=threads,
                         precision=precision.value if precision else None, cuda_graphs=cuda_graphs, request=req,
                         memory=memory)
    with Progress(TextColumn("sampling"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=None, transient=True) as progress:
        task = progress.add_task("sampling", total=steps)
        result = pipe(req, callback=lambda i, n: progress.update(task, completed=i + 1, total=n))
    if result.truncated:
        typer.echo(f"warning: the prompt was cut to {pipe.tokenizer.max_length} tokens", err=True)
    if result.negative_truncated:
        typer.echo(f"warning: the negative prompt was cut to {pipe.tokenizer.max_length} tokens", err=True)
    for i, image in enumerate(result.images):
        path = save_png(numbered(output, i, len(result.images)), image, {**result.params, "seed": seed, "index": i})
        typer.echo(f"wrote {path}")
    t = result.timings
    typer.echo(f"{t['total_s']:.2f} s ({t['unet_calls']} U-Net calls, {result.params['backend']})", err=True)
