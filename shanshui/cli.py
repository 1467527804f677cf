"""The `shanshui` command: parse, validate, call one library function per command. Errors are one line."""

from __future__ import annotations

import enum
import signal
import sys
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup

from shanshui.bench.commands import bench
from shanshui.data.commands import app as data_app
from shanshui.engines.commands import app as engine_app
from shanshui import limits
from shanshui.errors import ShanshuiError
from shanshui.export.onnx_export import Precision
from shanshui.runtime.backends import Backend, Device, TorchPrecision
from shanshui.runtime.samplers import Sampler
from shanshui.serve.command import serve
from shanshui.train.arch import Arch
from shanshui.train.commands import app as train_app


# typer >= 0.20 vendors click and raises its own exceptions under TyperException; older typer raises click's.
CommandLineError = getattr(typer, "TyperException", None) or __import__("click").ClickException


class OneLineErrors(TyperGroup):
    """Every failure (bad option, ShanshuiError, Ctrl-C) becomes `error: …` on stderr and a non-zero exit."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False, **extra)
        except CommandLineError as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # plain `shanshui`: show the help
                e.show()
                return self._exit(0, standalone_mode)
            ctx = getattr(e, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None and e.exit_code == 2 else ""
            code, msg = e.exit_code, f"{e.format_message()}{hint}"
        except ShanshuiError as e:
            code, msg = 1, str(e)
        except (typer.Abort, KeyboardInterrupt, limits.Interrupted):
            if standalone_mode:  # a second Ctrl-C (or one torch re-delivers) must not cut the exit short
                signal.signal(signal.SIGINT, signal.SIG_IGN)
            code, msg = 130, "interrupted"
        except (OSError, MemoryError) as e:  # a full disk, a read-only folder, no memory left: still one line
            code, msg = 1, limits.system_error_message(e)
        else:
            return self._exit(rv if isinstance(rv, int) else 0, standalone_mode)
        typer.echo(f"error: {' '.join(msg.split())}", err=True)
        return self._exit(code, standalone_mode)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:  # typer would turn it into a silent exit 130; temp files are gone by now
            raise limits.Interrupted() from None

    @staticmethod
    def _exit(code: int, standalone_mode: bool) -> int:
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    cls=OneLineErrors,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="shanshui: text-to-image Chinese landscape painting (山水画), from training to fast inference.",
)


app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")
app.add_typer(engine_app, name="engine")
app.command()(bench)
app.command()(serve)


class Int8Target(str, enum.Enum):
    cpu = "cpu"
    tensorrt = "tensorrt"


INT8_TARGET_HELP = ("int8 only. cpu: uint8 activations with zero points (ONNX Runtime's fast u8×s8 kernels); "
                    "tensorrt: symmetric int8 activations, the Q/DQ form TensorRT builds engines from.")


@app.command()
def init(
    out: Path = typer.Argument(..., help="New folder for the diffusers pipeline."),
    arch: Arch = typer.Option(Arch.tiny, help="tiny: the shanshui default (≤ 25 M parameters, 256 px); sd15: Stable Diffusion 1.5 shapes."),
    seed: int = typer.Option(0, help="Seed of the random weights."),
):
    """Write a random-weight model folder (diffusers layout) for an architecture."""
    from shanshui.train.arch import init_model

    limits.check_seed(seed)
    limits.new_folder(out, "model folder")
    summary = init_model(arch.value, out, seed=seed)
    p = summary["parameters"]
    typer.echo(
        f"wrote {out} ({arch.value}: {p['total'] / 1e6:.1f} M parameters — text encoder {p['text_encoder'] / 1e6:.1f} M, "
        f"U-Net {p['unet'] / 1e6:.1f} M, VAE {p['vae'] / 1e6:.1f} M)"
    )


@app.command()
def export(
    model_dir: Optional[Path] = typer.Argument(None, help="diffusers model folder; default: the shipped model."),
    out_dir: Optional[Path] = typer.Argument(None, help="Output folder; default: ./<model>-onnx-<precision>."),
    precision: Precision = typer.Option(Precision.fp32, help="Weight precision of the exported graphs."),
    height: Optional[int] = typer.Option(None, help="Image height the graphs are optimised and checked for (default: the model's)."),
    width: Optional[int] = typer.Option(None, help="Image width the graphs are optimised and checked for (default: the model's)."),
    max_batch: int = typer.Option(4, help="Largest number of images per call in the shape profiles."),
    no_check: bool = typer.Option(False, "--no-check", help="Skip the image quality gate of lower precisions."),
    int8_target: Int8Target = typer.Option(Int8Target.cpu, help=INT8_TARGET_HELP),
):
    """Export text encoder, U-Net and VAE decoder to ONNX, each checked against PyTorch (and fp16 against fp32)."""
    from shanshui.export.onnx_export import export_model
    from shanshui.models import default_source_path

    if model_dir is None:
        model_dir = default_source_path()
        if model_dir is None:
            raise ShanshuiError("no default model ships with this install yet; pass MODEL_DIR (e.g. one made by `shanshui init`)")
    events = {"skip": "unchanged, kept", "export": "exporting and checking against PyTorch…", "done": "done"}
    manifest = export_model(
        model_dir, out_dir, precision=precision.value, height=height, width=width, max_batch=max_batch,
        on_event=lambda comp, what: typer.echo(f"  {comp}: {events.get(what, what)}", err=True), check=not no_check,
        int8_target=int8_target.value,
    )
    _print_export(manifest)


def _print_export(manifest: dict) -> None:
    for name, entry in manifest["components"].items():
        worst = max(entry["parity"], key=lambda p: p["max_abs_error"] / p["allowed"])
        size = sum(entry["files"].values()) / 1e6
        prec = manifest.get("quantization", {}).get(name, {}).get("precision", manifest["precision"])
        typer.echo(f"  {name:13s} {prec:5s} {size:9.1f} MB   fp32 max |onnx - torch| {worst['max_abs_error']:.2e} "
                   f"(allowed {worst['allowed']:.1e})")
    gate = manifest.get("gate")
    if gate:
        typer.echo(f"  quality gate vs fp32: worst PSNR {gate['worst']['psnr_db']} dB, SSIM {gate['worst']['ssim']} "
                   f"(floors {gate['floors']}); U-Net step SNR {min(gate['unet_step_snr_db'])}–{max(gate['unet_step_snr_db'])} dB")
        agreement = gate.get("attribute_agreement", {})
        if agreement.get("available"):
            typer.echo(f"  attributes read alike in fp32 and {gate['precision']} images: {agreement['mean']:.0%} (eval's classifier)")
    typer.echo(f"wrote {manifest['out_dir']}")


class QuantizePrecision(str, enum.Enum):
    fp16 = "fp16"
    int8 = "int8"


@app.command()
def quantize(
    in_dir: Path = typer.Argument(..., help="An fp32 export folder (from `shanshui export`)."),
    out_dir: Path = typer.Argument(..., help="Output folder for the lower-precision export."),
    precision: QuantizePrecision = typer.Option(QuantizePrecision.fp16, help="Target precision."),
    no_check: bool = typer.Option(False, "--no-check", help="Skip the image quality gate against fp32."),
    int8_target: Int8Target = typer.Option(Int8Target.cpu, help=INT8_TARGET_HELP),
):
    """Convert an fp32 export to a lower precision, gated on image quality against fp32."""
    from shanshui.quantize import quantize_export

    manifest = quantize_export(in_dir, out_dir, precision.value, check=not no_check, int8_target=int8_target.value,
                               on_event=lambda comp, what: typer.echo(f"  {comp}: {what}", err=True))
    _print_export(manifest)


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="What to paint, in Chinese or English."),
    output: Path = typer.Option(Path("shanshui.png"), "--output", "-o", help="PNG to write (several images get -0, -1 … suffixes)."),
    model: Optional[Path] = typer.Option(None, "--model", "-m", help="Export folder (ONNX Runtime) or diffusers folder (PyTorch); default: the shipped model."),
    steps: int = typer.Option(25, help="Sampling steps."),
    guidance: float = typer.Option(7.5, help="Classifier-free guidance scale (1 = off)."),
    seed: int = typer.Option(0, help="Seed of the initial noise; the same seed gives the same painting."),
    height: Optional[int] = typer.Option(None, help="Image height in pixels, a multiple of 8 (default: the model's)."),
    width: Optional[int] = typer.Option(None, help="Image width in pixels, a multiple of 8 (default: the model's)."),
    sampler: Sampler = typer.Option(Sampler.dpmpp_2m, help="Sampling algorithm."),
    backend: Backend = typer.Option(Backend.auto, help="auto: onnxruntime for an export folder, torch for a diffusers folder; "
                                    "tensorrt runs the engines of `shanshui engine build`."),
    device: Device = typer.Option(Device.auto, help="auto uses a CUDA GPU when the backend can."),
    negative_prompt: str = typer.Option("", "--negative-prompt", "-n", help="What to steer away from."),
    num_images: int = typer.Option(1, help="Images to make from the prompt (one batch)."),
    threads: Optional[int] = typer.Option(None, help="CPU threads (default: SHANSHUI_THREADS or the runtime's choice)."),
    precision: Optional[TorchPrecision] = typer.Option(None, help="torch backend: fp32 (default); fp16, bf16 on CUDA; int8 (bitsandbytes, CPU or CUDA)."),
    cuda_graphs: Optional[bool] = typer.Option(None, "--cuda-graphs/--no-cuda-graphs", help="Replay static shapes as CUDA graphs "
                                               "(tensorrt: on by default; torch on CUDA: the U-Net, off by default)."),
    init_image: Optional[Path] = typer.Option(None, "--init-image", help="Image-to-image: start from this picture (a photo "
                                              "or a rough sketch, PNG/JPEG), scaled and centre-cropped to the image size."),
    strength: Optional[float] = typer.Option(None, help="With --init-image: how much to repaint, in (0, 1] (default 0.6); "
                                             "low keeps the picture, high keeps only its layout."),
):
    """Paint a prompt into a PNG (or repaint a picture with --init-image)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from shanshui.runtime.backends import default_threads
    from shanshui.runtime.image import numbered, save_png
    from shanshui.runtime.pipeline import Pipeline, Request

    if strength is not None and init_image is None:
        raise ShanshuiError("--strength is for image-to-image; give the picture with --init-image")
    threads = limits.check_threads(threads) or default_threads()
    output = limits.writable_file(output, ".png")
    req = Request(prompt=prompt, negative_prompt=negative_prompt, steps=steps, guidance=guidance, seed=seed,
                  height=height, width=width, sampler=sampler.value, num_images=num_images, init_image=init_image,
                  strength=0.6 if strength is None else strength)
    limits.check_request(req)
    pipe = Pipeline(model, backend=backend.value, device=device.value, threads=threads,
                    precision=precision.value if precision else None, cuda_graphs=cuda_graphs, request=req)
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


@app.command(name="eval")
def eval_(
    model: Path = typer.Argument(..., help="A diffusers folder (PyTorch) or an export folder (ONNX Runtime)."),
    prompts: int = typer.Option(64, help="Held-out prompts to paint (half Chinese, half English)."),
    steps: int = typer.Option(20, help="Sampling steps per image."),
    guidance: float = typer.Option(5.0, help="Classifier-free guidance scale."),
    grid: Optional[Path] = typer.Option(None, help="Save a 16-prompt sample grid (8 Chinese, 8 English) here."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the report as JSON here."),
    swap_seeds: int = typer.Option(6, help="Seeds of the prompt swap (same seeds, prompts differing in one attribute); 0 skips it."),
    swap_grid: Optional[Path] = typer.Option(None, help="Save the prompt-swap grid (rows prompts, columns seeds) here."),
):
    """Score how well generated paintings follow their prompts, attribute by attribute."""
    from shanshui.fsutil import write_json_atomic
    from shanshui.train.evaluate import evaluate_model

    limits.check_eval(prompts, steps, guidance, swap_seeds, grid, json_out, swap_grid)
    report = evaluate_model(model, prompts=prompts, steps=steps, guidance=guidance, grid=grid,
                            progress=lambda s: typer.echo(s, err=True), swap_seeds=swap_seeds, swap_grid=swap_grid)
    typer.echo(f"{'attribute':12s} {'generated':>9s} {'ceiling':>8s} {'chance':>7s}  n")
    for k, v in report["attribute_accuracy"].items():
        typer.echo(f"{k:12s} {v:9.3f} {report['classifier_ceiling'][k]:8.3f} {report['chance'][k]:7.3f}  {report['attribute_support'][k]}")
    typer.echo(f"mean accuracy {report['mean_accuracy']:.3f}")
    if "prompt_swap" in report:
        sw = report["prompt_swap"]
        typer.echo(f"prompt swap ({sw['seeds']} seeds × {', '.join(sw['langs'])}): accuracy / ceiling")
        for k, v in sw["accuracy"].items():
            typer.echo(f"  {k:12s} {v:6.3f} / {sw['ceiling'][k]:.3f} = {sw['of_ceiling'][k]:.2f} of ceiling")
        for name, c in sw["contrasts"].items():
            typer.echo(f"  {name}: {c['holds']} of {c['of']}")
        typer.echo(f"  U-Net conditional effect |out(c) − out(u)| / |out(u)|: {sw['effect_size']}")
    if report["vae"]:
        typer.echo(f"VAE reconstruction: PSNR {report['vae']['psnr_db']} dB, SSIM {report['vae']['ssim']}")
    if json_out:
        write_json_atomic(json_out, report)
        typer.echo(f"wrote {json_out}")
    if grid:
        typer.echo(f"wrote {grid}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
