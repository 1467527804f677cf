"""Every range a user can hit, in one place, with the checks that turn a bad value into a one-line ShanshuiError.

The CLI, the library and (later) the server call these before any expensive work. Image sizes come from the
export's manifest (up to its max_size; min_size is the TensorRT profile's); a diffusers folder gets the contract's default max.
Torch-free and cheap: nothing here loads a model.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from shanshui.errors import ShanshuiError

MAX_SEED = 2**64 - 1  # seeds are 0 .. 2^64-1 (NumPy's generator takes any of them; no wrap-around)
STEPS = (1, 1000)
GUIDANCE = (0.0, 50.0)
NUM_IMAGES = (1, 16)
PROMPT_CHARS = 10_000  # far beyond the tokenizer's 77 tokens; longer text is surely a mistake (or an attack)
THREADS_PER_CORE = 4
EVAL_PROMPTS = (2, 10_000)
RENDER_COUNT = (1, 10_000_000)
TRAIN_STEPS = (1, 10_000_000)
BATCH = (1, 4096)
SWAP_SEEDS = (0, 64)
DEFAULT_MAX_SIZE = 1024  # the contract's ShapeSettings default max_size: the largest side a diffusers folder paints
EXPORT_MAX_BATCH = 64


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def max_threads() -> int:
    return THREADS_PER_CORE * cores()


def check_int(name: str, v: int, lo: int, hi: int, hint: str = "") -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise ShanshuiError(f"{name} must be between {lo} and {hi}, got {v}{'; ' + hint if hint else ''}")
    return v


def check_float(name: str, v: float, lo: float, hi: float, lo_open: bool = False, hint: str = "") -> float:
    ok = isinstance(v, (int, float)) and math.isfinite(v) and (lo < v if lo_open else lo <= v) and v <= hi
    if not ok:
        span = f"in ({lo:g}, {hi:g}]" if lo_open else f"between {lo:g} and {hi:g}"
        raise ShanshuiError(f"{name} must be {span}, got {v}{'; ' + hint if hint else ''}")
    return float(v)


def check_seed(v: int, name: str = "--seed") -> int:
    return check_int(name, v, 0, MAX_SEED, "any whole number from 0 up gives its own painting")


def check_threads(v: int | None, name: str = "--threads") -> int | None:
    if v is None:
        return None
    return check_int(name, v, 1, max_threads(), f"this machine has {cores()} cores; leave it out to let the runtime choose")


def env_threads() -> int | None:
    """SHANSHUI_THREADS as a thread count (None when unset); a value that is not one is an error, never ignored."""
    raw = os.environ.get("SHANSHUI_THREADS")
    if raw is None or not raw.strip():
        return None
    text = raw.strip()
    if not (text.isascii() and text.lstrip("+-").isdigit()):
        raise ShanshuiError(f"SHANSHUI_THREADS={raw[:40]!r} is not a whole number; set it to 1..{max_threads()} "
                            "or unset it")
    return check_threads(int(text), "SHANSHUI_THREADS")


def check_prompt(text: str, name: str = "prompt", allow_empty: bool = False) -> str:
    if not allow_empty and (not text or not text.strip()):
        raise ShanshuiError(f"the {name} is empty; describe the painting, e.g. 「一棵青松，青山环绕，云雾缭绕」")
    if len(text) > PROMPT_CHARS:
        raise ShanshuiError(f"the {name} has {len(text):,} characters; keep it under {PROMPT_CHARS:,} "
                            "(only the first 77 tokens are read)")
    if "\x00" in text:
        raise ShanshuiError(f"the {name} holds a NUL character; pass plain text")
    return text


def check_size(name: str, v: int, multiple: int, lo: int, hi: int, where: str = "this model") -> int:
    """An image side: a positive multiple of the model's stride, inside the range the model was exported for."""
    if not isinstance(v, int) or v <= 0 or v % multiple:
        near = min(max(multiple, round(v / multiple) * multiple), hi) if isinstance(v, int) else lo
        raise ShanshuiError(f"{name} {v} must be a positive multiple of {multiple} for {where}; try {near}")
    if not lo <= v <= hi:
        raise ShanshuiError(f"{name} {v} is outside the range {lo}..{hi} of {where}; use a size from {lo} to {hi} "
                            f"(re-export with --height/--width for another range)")
    return v


def check_request(req) -> None:
    """What a generation request can get wrong without looking at the model (pipeline.Request)."""
    check_prompt(req.prompt)
    check_prompt(req.negative_prompt, "negative prompt", allow_empty=True)
    check_int("steps", req.steps, *STEPS)
    check_float("guidance", req.guidance, *GUIDANCE, hint="1 turns guidance off, 5-8 is usual")
    check_int("num-images", req.num_images, *NUM_IMAGES)
    check_seed(req.seed, "seed")
    for name in ("height", "width"):
        v = getattr(req, name)
        if v is not None and (not isinstance(v, int) or v <= 0):
            raise ShanshuiError(f"{name} {v} must be a positive number of pixels (leave it out for the model's size)")
    if req.init_image is not None:
        check_float("strength", req.strength, 0.0, 1.0, lo_open=True, hint="low keeps the picture, high repaints it")
    if isinstance(req.init_image, (str, Path)):
        readable_image(Path(req.init_image), "init image")


def readable_image(path: Path, what: str) -> None:
    """An image file that exists and whose structure is whole (PIL verify: no decoding), checked before models load."""
    from PIL import Image

    if not path.is_file():
        raise ShanshuiError(f"{what} {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        with Image.open(path) as im:
            im.verify()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ShanshuiError(f"cannot read {what} {path} ({type(e).__name__}); give a PNG or JPEG") from None


def writable_file(path: Path, suffix: str | None = None, what: str = "output") -> Path:
    """Check up front that `path` can be written (its folder exists or can be made, it is not a folder)."""
    path = Path(path)
    if suffix and path.suffix.lower() != suffix:
        raise ShanshuiError(f"{what} {path} must end in {suffix}")
    if path.is_dir():
        raise ShanshuiError(f"{what} {path} is a folder; give a file name")
    _writable_ancestor(path.parent, path, what, "write")
    return path


def new_folder(path: Path, what: str = "output folder") -> Path:
    """Check up front that `path` can become a folder: absent or a folder, below a writable existing folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ShanshuiError(f"{what} {path} exists and is not a folder; choose another name")
    _writable_ancestor(path, path, what, "create")
    return path


def _writable_ancestor(start: Path, path: Path, what: str, verb: str) -> None:
    """The nearest existing folder at or above `start` must be a writable folder (`path` is made below it)."""
    parent = start
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ShanshuiError(f"cannot {verb} {what} {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ShanshuiError(f"cannot write {what} {path}: {parent} is not writable; choose another place")


EXPORT_SIZE = (8, 2048)


def check_export(height: int | None, width: int | None, max_batch: int) -> None:
    """Export options, before the source is read."""
    for name, v in (("--height", height), ("--width", width)):
        if v is not None:
            check_int(name, v, *EXPORT_SIZE, "a multiple of the model's stride, e.g. 256 or 512")
    check_int("--max-batch", max_batch, 1, EXPORT_MAX_BATCH, "images per call in the shape profiles, e.g. 4")


class Interrupted(Exception):
    """Ctrl-C, carried past typer (which would turn KeyboardInterrupt into a silent exit) to the one-line handler."""


def system_error_message(e: BaseException) -> str:
    """One line for an OSError or MemoryError that escaped the checks (a disk filled up, a mount is read-only)."""
    if isinstance(e, MemoryError):
        return "out of memory; try a smaller size, fewer images or a smaller batch"
    what = f" ({e.filename})" if getattr(e, "filename", None) else ""
    hints = {28: "free some space or choose another folder", 30: "the file system is read-only; choose another folder",
             13: "choose a folder you can write to", 122: "free some space or choose another folder"}
    reason = e.strerror or str(e) or type(e).__name__
    return f"{reason}{what}; {hints.get(getattr(e, 'errno', None), 'check the path and try again')}"


def check_eval(prompts: int, steps: int, guidance: float, swap_seeds: int, grid, json_out, swap_grid) -> None:
    """eval's options, before the classifier is trained or any prompt painted."""
    check_int("--prompts", prompts, *EVAL_PROMPTS)
    check_int("--steps", steps, *STEPS)
    check_float("--guidance", guidance, *GUIDANCE)
    check_int("--swap-seeds", swap_seeds, *SWAP_SEEDS, "0 skips the prompt swap")
    for what, path, suffix in (("--grid", grid, ".png"), ("--swap-grid", swap_grid, ".png"), ("--json", json_out, None)):
        if path is not None:
            writable_file(path, suffix, what)


def check_train(cfg, kind: str, archs: dict | None = None) -> None:
    """`train vae|unet` settings (a VaeConfig or UnetConfig), before any data is read or model built."""
    check_int("--steps", cfg.steps, *TRAIN_STEPS)
    check_int("--batch", cfg.batch, *BATCH)
    check_float("--lr", cfg.lr, 0.0, 1.0, lo_open=True, hint="e.g. 1e-4")
    check_seed(cfg.seed)
    multiple = 8
    if archs is not None:
        if cfg.arch not in archs:
            raise ShanshuiError(f"unknown architecture {cfg.arch!r}; choose one of {', '.join(archs)}")
        spec = archs[cfg.arch]
        multiple = 2 ** (len(spec["vae"]["block_out_channels"]) - 1) * 2 ** (len(spec["unet"]["block_out_channels"]) - 1)
    if not isinstance(cfg.size, int) or cfg.size % multiple or not multiple <= cfg.size <= 2048:
        raise ShanshuiError(f"--size {cfg.size} must be a multiple of {multiple} from {multiple} to 2048 for this "
                            f"architecture; try {min(2048, max(multiple, round(cfg.size / multiple) * multiple))}")
    if kind == "vae" and (cfg.crop % 8 or not 8 <= cfg.crop <= cfg.size):
        raise ShanshuiError(f"--crop {cfg.crop} must be a multiple of 8 from 8 to the image size {cfg.size}")
    if kind == "unet":
        check_float("--ema-decay", cfg.ema_decay, 0.0, 1.0, hint="below 1, e.g. 0.999")
        if cfg.ema_decay >= 1:
            raise ShanshuiError(f"--ema-decay must be below 1, got {cfg.ema_decay}; e.g. 0.999")
        check_float("--text-lr-scale", cfg.text_lr_scale, 0.0, 100.0)
        for name, v in (("--warmup", cfg.warmup), ("--text-pretrain-steps", cfg.text_pretrain_steps),
                        ("--sample-every", cfg.sample_every)):
            check_int(name, v, 0, TRAIN_STEPS[1])
        check_int("--checkpoint-every", cfg.checkpoint_every, 1, TRAIN_STEPS[1])


def check_bench(seed: int, guidance: float, threads: int | None, steps: int | None, prompt: str, sizes: str | None) -> None:
    """bench's options, before any model is made or measured."""
    check_seed(seed)
    check_float("--guidance", guidance, *GUIDANCE)
    check_threads(threads)
    env_threads()
    if steps is not None:
        check_int("--steps", steps, *STEPS)
    check_prompt(prompt)
    for part in (sizes or "").split(","):
        if part.strip().lstrip("-").isdigit():
            v = int(part)
            if not EXPORT_SIZE[0] <= v <= EXPORT_SIZE[1]:
                raise ShanshuiError(f"--size {v} is outside {EXPORT_SIZE[0]}..{EXPORT_SIZE[1]}; bench sizes like 256,512")


# Activation memory of one image, in bytes, from its latent pixel count P = h·w (measured on the shipped model with
# ONNX Runtime, peak RSS over the loaded model at 256/512/768 px: 73/356/1156 MB). The P² term is the VAE decoder's
# single-head attention over all latent pixels (≈ two float32 P×P maps live at once), present in every SD-style VAE;
# the linear term is the convolution activations. A lower bound for larger U-Nets.
BYTES_PER_LATENT_PIXEL = 56_000
BYTES_PER_LATENT_PIXEL_SQ = 7.5


def activation_bytes(num_images: int, height: int, width: int, vae_scale: int = 8) -> int:
    p = (height // vae_scale) * (width // vae_scale)
    return int(num_images * (BYTES_PER_LATENT_PIXEL * p + BYTES_PER_LATENT_PIXEL_SQ * p * p))


def available_bytes() -> int | None:
    """Memory this process may still use: MemAvailable, lowered by a cgroup limit or an address-space ulimit."""
    import resource

    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    try:
        raw = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if raw.isdigit():
            found.append(int(raw) - used)
    except (OSError, ValueError):
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        try:
            vm = int(Path("/proc/self/statm").read_text().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            found.append(soft - vm)
        except (OSError, ValueError):
            pass
    return min(found) if found else None


def check_memory(num_images: int, height: int, width: int, vae_scale: int, multiple: int, lo: int) -> None:
    """Refuse a request whose activations cannot fit, before anything is allocated; name the largest size that fits."""
    need, have = activation_bytes(num_images, height, width, vae_scale), available_bytes()
    if have is None or need <= have:
        return
    side = max(height, width)
    fits = next((s for s in range(side - side % multiple, lo - 1, -multiple)
                 if activation_bytes(num_images, s * height // side, s * width // side, vae_scale) <= have), None)
    per = activation_bytes(1, height, width, vae_scale)
    hint = f"the largest that fits is about {fits * height // side}x{fits * width // side}" if fits else "no size fits"
    raise ShanshuiError(f"{num_images} image(s) of {height}x{width} need about {need / 2**30:.1f} GiB of activation "
                        f"memory and about {max(have, 0) / 2**30:.1f} GiB is free; {hint} for {num_images} image(s)"
                        f", or make {max(0, have // per)} image(s) at this size")
