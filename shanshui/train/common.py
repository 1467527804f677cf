"""Shared training pieces: the image/caption dataset, EMA, warm-up + cosine learning rate, logging, Accelerate."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shanshui.errors import ShanshuiError
from shanshui.data.captions import LANGS, caption
from shanshui.data.dataset import load_folder
from shanshui.data.scene import Scene, scene_from_attributes


@dataclass(frozen=True)
class TrainingExample:
    image: Path
    captions: tuple[str, ...]  # every caption of the image (Chinese, English, …); one is drawn per step
    scene: Scene | None = None  # what a rendered painting shows (from its metadata): fresh captions can be drawn


def read_examples(data: Path) -> list[TrainingExample]:
    """Examples from an imagefolder (metadata.jsonl) or a folder of images with .txt caption sidecars."""

    out = []
    for ex in load_folder(data):
        caps = tuple(dict.fromkeys(c for c in (ex.text_zh, ex.text_en, ex.text) if c))
        out.append(TrainingExample(Path(ex.path), caps or ("",), scene_from_attributes(ex.attributes)))  # no caption: unconditional
    if not out:
        raise ShanshuiError(f"no images found in {data}; render some with `shanshui data render {data}`")
    verify_images([e.image for e in out])
    return out


def draw_caption(example: TrainingExample, rng: np.random.Generator, fresh: bool) -> str:
    """One caption for a training step: with `fresh` and a known scene, a new true caption drawn from the scene in
    a random language (every visit words the painting anew, so no image is tied to the two captions it was rendered
    with); otherwise one of the example's own captions."""
    if fresh and example.scene is not None:
        return caption(example.scene, LANGS[int(rng.integers(len(LANGS)))], rng)
    return example.captions[int(rng.integers(len(example.captions)))]


def verify_images(paths: list[Path]) -> None:
    """Every image's file structure is whole (PIL verify: chunks and checksums, no decoding), before training starts."""
    from PIL import Image

    for path in paths:
        try:
            with Image.open(path) as im:
                im.verify()
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise ShanshuiError(f"cannot read training image {path} ({str(e)[:80]}); fix or remove it and its caption") from None


def load_image(path: Path, size: int) -> np.ndarray:
    """(size, size, 3) uint8: resized so the short side is `size`, centre-cropped."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            scale = size / min(im.size)
            if scale != 1:
                im = im.resize((max(size, round(im.width * scale)), max(size, round(im.height * scale))), Image.BICUBIC)
            left, top = (im.width - size) // 2, (im.height - size) // 2
            return np.asarray(im.crop((left, top, left + size, top + size)))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ShanshuiError(f"cannot read training image {path} ({str(e)[:80]}); fix or remove it and its caption") from None


def lr_at(step: int, base: float, warmup: int, total: int, floor: float = 0.1) -> float:
    """Linear warm-up to `base`, then cosine decay to `floor`·base at `total`."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


class EMA:
    """Exponential moving average of parameters, with the usual warm-up of the decay: min(decay, (1+n)/(10+n))."""

    def __init__(self, modules: dict, decay: float = 0.999):
        self.decay = decay
        self.updates = 0
        self.shadow = {f"{m}.{k}": p.detach().clone().float() for m, mod in modules.items() for k, p in mod.named_parameters()}

    def update(self, modules: dict) -> None:
        import torch

        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        with torch.no_grad():  # one foreach kernel over all tensors, not one lerp per parameter
            pairs = [(self.shadow[f"{m}.{k}"], p.detach().float()) for m, mod in modules.items() for k, p in mod.named_parameters()]
            torch._foreach_lerp_([a for a, _ in pairs], [b for _, b in pairs], 1 - d)

    def copy_to(self, modules: dict) -> None:
        import torch

        with torch.no_grad():
            for m, mod in modules.items():
                for k, p in mod.named_parameters():
                    p.copy_(self.shadow[f"{m}.{k}"].to(p.dtype))

    def state_dict(self) -> dict:
        import torch

        return {**self.shadow, "__updates__": torch.tensor(self.updates)}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state.pop("__updates__", 0))
        for k, v in state.items():
            if k in self.shadow:
                self.shadow[k].copy_(v)


class LossLog:
    """Appends one JSON line per logged step to OUT/loss.jsonl."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.t0 = time.perf_counter()

    def write(self, step: int, **values) -> None:
        row = {"step": step, "seconds": round(time.perf_counter() - self.t0, 1), **{k: round(float(v), 6) for k, v in values.items()}}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


def cpu_has_bf16() -> bool:
    """True when /proc/cpuinfo lists AVX512_BF16 or AMX-BF16 (Linux; False elsewhere)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def fused_adamw() -> dict:
    """AdamW's fused kernel where this torch has it for the device (CPU and CUDA since torch 2.4): one kernel per
    step instead of a dozen per parameter tensor (measured 8% of a tiny U-Net step on one CPU core)."""
    import inspect

    import torch

    return {"fused": True} if "fused" in inspect.signature(torch.optim.AdamW).parameters else {}


def attention_kernel(device):
    """On a CPU, the plain (math) attention kernel for training: PyTorch's CPU flash-attention backward was a quarter
    of a tiny U-Net step at 256 px, and the math kernel made the step 14% faster (one core, bf16); elsewhere as is."""
    import contextlib

    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH]) if str(device).startswith("cpu") else contextlib.nullcontext()


def make_accelerator(mixed_precision: str, seed: int):
    """Accelerate handles devices, mixed precision and `accelerate launch` across GPUs."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    if mixed_precision not in ("no", "fp16", "bf16"):
        raise ShanshuiError(f"mixed precision {mixed_precision!r} is not one of no, fp16, bf16")
    if mixed_precision != "no" and not torch.cuda.is_available():
        # CPU: bf16 autocast only where the CPU has bf16 instructions (measured 1.25-1.3× per step on AVX512_BF16);
        # elsewhere it is slower than fp32, and fp16 autocast on CPU is not worth it.
        mixed_precision = "bf16" if mixed_precision == "bf16" and cpu_has_bf16() else "no"
    acc = Accelerator(mixed_precision=mixed_precision)
    set_seed(seed)
    return acc
