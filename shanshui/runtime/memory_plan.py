"""The low-memory modes' plan, made before anything is loaded: the strategies (fastest first), the estimated peak
of each from the export's file sizes, configs and shapes, and the choice for `--low-memory` and `--max-memory`.
lowmem.py runs them. Torch-free, ONNX Runtime-free.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from shanshui.errors import ShanshuiError
from shanshui.runtime.vae_tiling import tiling
from shanshui.spec.manifest import read_manifest

MIB = 2**20
BASE_MB = 60.0  # the interpreter, NumPy, ONNX Runtime and the tokenizer, before any model (measured: 55 MB)


# the whole VAE decode in a lean session with ONNX Runtime's CPU arena (memory pattern still off), int8 decoder
# prepacked: full-resolution tensors of the decoder's second level live at its peak (see _vae_activations_mb)
VAE_ARENA = 4.75  # measured 4.5 on the shipped int8 decoder at 512 px
VAE_TILE = 0.65  # of the latent side: two tiles per side, overlapping by a third of a tile
# exact tiles (an export with VAE segments): a fixed side in latent pixels, so the decoder's peak is one 128 × 128 px
# tile's whatever the image size (SD 1.5 fp32 at 256 px: 2 × 2 tiles 1.16×, 4 × 4 tiles 1.44× the whole decode's time)
EXACT_TILE = 16


def tile_side(strategy_tile: float, h: int, w: int) -> int:
    """The largest tile side in latent pixels for a latent of h × w."""
    return max(8, -(-int(strategy_tile * 100 * max(h, w)) // 100))


@dataclass(frozen=True)
class Strategy:
    name: str
    lean: bool = False
    sequential: bool = False
    split_batch: bool = False
    vae_tile: float | None = None  # tile side as a fraction of the latent's longer side (2 × 2 tiles); None: whole
    streamed: bool = False  # the U-Net's parts (shanshui/export/split.py) loaded, run and freed in turn each step
    kept_parts: int = 0  # streamed: the first parts stay loaded from step to step (a budget with room for them)
    vae_arena: bool = False  # the whole VAE decode draws from ONNX Runtime's CPU arena (a budget with room for it)

    def as_dict(self) -> dict:
        return asdict(self)


STRATEGIES = (
    Strategy("normal"),
    Strategy("lean", lean=True),
    Strategy("sequential", lean=True, sequential=True),
    Strategy("sequential+split", lean=True, sequential=True, split_batch=True),
    # 2 × 2 tiles: on the shipped model 4 × 4 tiles measured 27 dB against the whole decode at 512 px, 2 × 2 35.6 dB
    Strategy("sequential+split+tiled-vae", lean=True, sequential=True, split_batch=True, vae_tile=VAE_TILE),
    # streamed: each part loaded once per step runs the two images of the guidance batch in turn (SD 1.5 fp32 at
    # 512 px in 16 parts: U-Net call 639 → 543 MB peak, 30.8 → 30.1 s)
    Strategy("streamed", lean=True, sequential=True, split_batch=True, vae_tile=VAE_TILE, streamed=True),
)
NORMAL, LOW_MEMORY = STRATEGIES[0], STRATEGIES[-2]  # streamed needs an export cut into parts (see usable())
# --low-memory's variants for sizes where the VAE does not set the peak (see lowest())
STREAMED_WHOLE_VAE = Strategy("streamed+whole-vae", lean=True, sequential=True, split_batch=True, streamed=True)
BY_NAME = {s.name: s for s in (*STRATEGIES, STREAMED_WHOLE_VAE)}
WHOLE_VAE = {LOW_MEMORY.name: "sequential+split", STRATEGIES[-1].name: STREAMED_WHOLE_VAE.name}


def parse_budget(text: str) -> float:
    """'1G', '1.5GB', '800M', '800MiB' → MiB (a bare number is MiB)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", str(text), re.IGNORECASE)
    if not m or float(m.group(1)) <= 0:
        raise ShanshuiError(f"--max-memory {text!r} is not a size; write it like 1G, 1.5GB or 800M")
    scale = {"k": 1 / 1024, "": 1.0, "m": 1.0, "g": 1024.0, "t": 1024.0**2}[m.group(2).lower()]
    return float(m.group(1)) * scale


def usable(strategy: Strategy, manifest: dict) -> bool:
    return not strategy.streamed or bool(manifest["components"]["unet"].get("parts"))


def smallest(manifest: dict) -> Strategy:
    return STRATEGIES[-1] if usable(STRATEGIES[-1], manifest) else LOW_MEMORY


def lowest(root: Path, manifest: dict, h: int, w: int, n: int, guidance: bool = True) -> tuple[Strategy, dict]:
    """--low-memory: the smallest strategy, its VAE in tiles only where that lowers the estimated peak. Tiles cost
    image quality (the decoder's group norms see a tile, not the image: 30-36 dB on the shipped model, 21 dB on
    random SD 1.5 weights at 256 px), and where another stage sets the peak they save nothing."""
    low = smallest(manifest)
    est = footprint(root, manifest, low, h, w, n, guidance)
    return _whole_vae_if(root, manifest, low, est, est["peak_mb"] * 1.02, (h, w, n, guidance))


def _whole_vae_if(root: Path, manifest: dict, s: Strategy, est: dict, limit_mb: float, shape) -> tuple[Strategy, dict]:
    """`s` with its VAE decoded whole where that variant's estimate is within `limit_mb`; else `s` as it is."""
    whole = BY_NAME.get(WHOLE_VAE.get(s.name, ""))
    if whole is not None:
        whole_est = footprint(root, manifest, whole, *shape)
        if whole_est["peak_mb"] <= limit_mb:
            return whole, whole_est
    return s, est


def format_mb(mb: float) -> str:
    return f"{mb / 1024:.2f} GB" if mb >= 1024 else f"{mb:.0f} MB"


# ---- estimates, from the export's file sizes and configs (nothing loaded) -----------------------------------------

def _config(root: Path, comp: str) -> dict:
    try:
        return json.loads((root / comp / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _weights_mb(root: Path, manifest: dict, comp: str) -> float:
    entry = manifest["components"].get(comp, {})
    files = entry.get("files") or {Path(entry.get("file", comp + "/model.onnx")).name: 0}
    return sum((root / comp / f).stat().st_size for f in files if (root / comp / f).is_file()) / MIB


def _unet_activations_mb(cfg: dict, h: int, w: int, batch: int, fused: bool = False) -> float:
    """Live tensors at the U-Net's finest level (skips and ResNet temporaries) plus the first self-attention's
    scores and softmax, (heads, T, T) float32 each, per image of the batch (none where the export's attention is
    fused into MultiHeadAttention, see shanshui/export/attention.py)."""
    chans = list(cfg.get("block_out_channels") or [320])
    hw = h * w
    conv = 12 * chans[0] * hw * 4
    blocks = list(cfg.get("down_block_types") or ["CrossAttnDownBlock2D"])
    level = next((i for i, b in enumerate(blocks) if "Attn" in b), None)
    attn = 0.0
    if level is not None and not fused:
        heads = cfg.get("num_attention_heads") or cfg.get("attention_head_dim") or 8
        heads = heads[level] if isinstance(heads, list) else heads
        tokens = hw / 4**level
        attn = 2 * heads * tokens**2 * 4
    return batch * (conv + attn) / MIB


def _vae_activations_mb(cfg: dict, h: int, w: int, batch: int, lean: bool = False, prepacked: bool = False,
                       arena: bool = False) -> float:
    """The decoder's last up block runs at full resolution on the upsampled output of the one before it: a few
    tensors of that size live at once (ORT's conv buffers beside them). Lean sessions (no arena, no memory pattern)
    measured 3.75 of them whole at 256 and 512 px on both the shipped decoder and SD 1.5's (SD 1.5 at 512 px: 1,081 MB
    peak with 121 MB resident before); an int8 decoder with its prepacked weights 2.5 (the shipped one at 512 px:
    160 MB, SD 1.5's: 640 MB); 6 is the normal session's, measured on the shipped model. arena: a lean session
    with ONNX Runtime's CPU arena, an int8 decoder prepacked (VAE_ARENA)."""
    chans = list(cfg.get("block_out_channels") or [128, 256])
    top = chans[1] if len(chans) > 1 else chans[0]
    if arena and lean:
        factor = VAE_ARENA if prepacked else 6.0
    else:
        factor = (2.75 if prepacked else 4.0) if lean else 6.0
    return batch * factor * top * h * w * 4 / MIB


def footprint(root: Path, manifest: dict, strategy: Strategy, h: int, w: int, n: int, guidance: bool = True) -> dict:
    """Estimated peak resident MiB of one generation: per stage and overall."""
    scale = int(manifest["dims"]["vae_scale"])
    lh, lw = h // scale, w // scale
    weights = {c: _weights_mb(root, manifest, c) for c in ("text_encoder", "unet", "vae_decoder")}
    b2 = n * (2 if guidance else 1)
    text_len = int(manifest["dims"]["text_len"])
    acts = {
        "text_encoder": b2 * text_len * int(manifest["dims"]["text_dim"]) * 4 * 8 / MIB,
        "unet": _unet_activations_mb(_config(root, "unet"), lh, lw, n if strategy.split_batch else b2,
                                     fused=bool(manifest["components"]["unet"].get("attention"))),
        "vae_decoder": _vae_activations_mb(_config(root, "vae_decoder"), h, w, 1 if strategy.vae_tile else n,
                                           lean=strategy.lean, prepacked=_prepacked(manifest, "vae_decoder")
                                           and not (strategy.vae_tile and manifest["components"]["vae_decoder"].get("segments")),
                                           arena=strategy.vae_arena)
        * (_tile_fraction(lh, lw, strategy.vae_tile, manifest) if strategy.vae_tile else 1.0),
    }
    # normal sessions keep the parsed model and prepacked copies beside the initializers: about twice the weights;
    # an fp16 graph on the CPU computes in float32 from float32 copies of its weights (SD 1.5's fp16 text encoder,
    # 246 MB: 570 MB peak in a lean session)
    resident = {c: wmb * (1.0 if strategy.lean and not _prepacked(manifest, c) else 2.0)
                * (2.0 if _fp16(manifest, c) else 1.0) for c, wmb in weights.items()}
    if strategy.streamed:  # the kept parts, the largest other one, the tensors between parts (skips: ~ the conv term)
        resident["unet"] = _streamed_mb(manifest, strategy.kept_parts)
        text_parts = manifest["components"]["text_encoder"].get("parts")
        if text_parts:  # one part at a time, never prepacked
            resident["text_encoder"] = max(p["weight_bytes"] for p in text_parts) / MIB \
                * (2.0 if _fp16(manifest, "text_encoder") else 1.0)
    if strategy.sequential:
        stages = {c: BASE_MB + resident[c] + acts[c] for c in acts}
    else:
        total = sum(resident.values())
        stages = {c: BASE_MB + total + acts[c] for c in acts}
    return {"peak_mb": max(stages.values()), "stages_mb": stages, "weights_mb": weights}


def _streamed_mb(manifest: dict, kept: int) -> float:
    """Resident U-Net weights when streaming with the first `kept` parts loaded throughout. An int8 part counts
    twice while it loads (ONNX Runtime's prepacked copy beside the mapped weights, see LowMemComponents) and 1.4×
    once kept: SD 1.5's int8 U-Net at 512 px in 16 parts (851 MB), 9 kept (480 MB) measured 592 MB resident and 908
    MB peak per call, all 16 kept 944 and 1,264 MB (1.23× and 1.11× resident, peaks within the estimate)."""
    prepacked = _prepacked(manifest, "unet")
    sizes = [p["weight_bytes"] / MIB for p in manifest["components"]["unet"]["parts"]]
    return sum(sizes[:kept]) * (1.4 if prepacked else 1.0) + max(sizes[kept:], default=0.0) * (2.0 if prepacked else 1.0)


def _prepacked(manifest: dict, comp: str) -> bool:
    """Components whose lean sessions keep ONNX Runtime's prepacked weight copy (see LowMemComponents._session): the
    int8 U-Net and an int8 VAE decoder. Unpacked, SD 1.5's int8 VAE decoder at 512 px (lean, fresh process) took
    14.0 s and peaked at 1,079 MB; prepacked 9.0 s and 758 MB (ONNX Runtime packs each layer at run time otherwise)."""
    if manifest.get("precision") != "int8" or comp not in ("unet", "vae_decoder"):
        return False
    return manifest.get("quantization", {}).get(comp, {}).get("precision", "int8") == "int8"


def _fp16(manifest: dict, comp: str) -> bool:
    return manifest.get("quantization", {}).get(comp, {}).get("precision", manifest.get("precision")) == "fp16"


def _tile_fraction(lh: int, lw: int, vae_tile: float, manifest: dict) -> float:
    """The share of the whole decode's activations one tile holds: exact tiles (a segmented decoder) plus a border
    of a latent pixel, else the blended tiles of vae_tiling.py."""
    if manifest["components"]["vae_decoder"].get("segments"):
        return min(1.0, (min(EXACT_TILE, lh) + 1) / lh) * min(1.0, (min(EXACT_TILE, lw) + 1) / lw)
    tile = tile_side(vae_tile, lh, lw)
    return tiling(lh, tile, tile // 3)[0] / lh * tiling(lw, tile, tile // 3)[0] / lw


def choose(root: Path, manifest: dict, budget_mb: float, h: int, w: int, n: int, guidance: bool = True) -> tuple[Strategy, dict]:
    """The fastest strategy whose estimate fits; a one-line error naming the smallest budget that works otherwise."""
    ladder = [s for s in STRATEGIES if usable(s, manifest)]
    estimates = {s.name: footprint(root, manifest, s, h, w, n, guidance) for s in ladder}
    for s in ladder:
        if estimates[s.name]["peak_mb"] <= budget_mb:
            shape = (h, w, n, guidance)
            if s.streamed:  # the VAE whole where the budget has room (tiles cost quality; earlier rungs have no tiles)
                s, est = _whole_vae_if(root, manifest, s, estimates[s.name], budget_mb, shape)
                s, est = _keep_parts(root, manifest, s, est, budget_mb, shape)
                return _vae_arena_if(root, manifest, s, est, budget_mb, shape)
            return _vae_arena_if(root, manifest, s, estimates[s.name], budget_mb, (h, w, n, guidance))
    low = smallest(manifest)
    need = estimates[low.name]["peak_mb"]
    raise ShanshuiError(f"--max-memory {format_mb(budget_mb)} is too small for {w}x{h} px with this model: the "
                        f"smallest strategy ({low.name}) needs about {format_mb(need)}; pass --max-memory "
                        f"{_round_up(need)} or more, or a smaller --height/--width")


def _keep_parts(root: Path, manifest: dict, s: Strategy, est: dict, budget_mb: float, shape) -> tuple[Strategy, dict]:
    """A streamed strategy with as many of its first parts kept loaded as the budget has room for (each kept part
    is one load fewer per step); any other strategy as it is."""
    if not s.streamed:
        return s, est
    for kept in range(len(manifest["components"]["unet"]["parts"]) - 1, 0, -1):
        more = replace(s, name=f"{s.name}+keep{kept}", kept_parts=kept)
        more_est = footprint(root, manifest, more, *shape)
        if more_est["peak_mb"] <= budget_mb:
            return more, more_est
    return s, est


def _vae_arena_if(root: Path, manifest: dict, s: Strategy, est: dict, budget_mb: float, shape) -> tuple[Strategy, dict]:
    """A strategy decoding the whole VAE with ONNX Runtime's arena where its estimate fits the budget (the arena's
    reuse of blocks instead of fresh pages per tensor: the shipped int8 decoder at 512 px took 2.3-2.7 s against
    4.8-5.8 s lean, for 290 MB of activations against 160 MB); `s` as it is otherwise (the normal mode has its arena)."""
    if s.vae_tile is not None or not s.lean:
        return s, est
    more = replace(s, name=f"{s.name}+vae-arena", vae_arena=True)
    more_est = footprint(root, manifest, more, *shape)
    return (more, more_est) if more_est["peak_mb"] <= budget_mb else (s, est)


def _round_up(mb: float) -> str:
    return f"{int(-(-mb // 10) * 10)}M" if mb < 1024 else f"{-(-mb // 102.4) / 10:.1f}G"


def resolve(root: Path, low_memory: bool, max_memory: str | None, h: int | None, w: int | None, n: int,
            guidance: bool = True) -> tuple[Strategy | None, dict | None]:
    """The strategy for --low-memory / --max-memory (None, None when neither is given); checked before loading."""
    if not low_memory and max_memory is None:
        return None, None
    manifest = read_manifest(root) if root is not None and Path(root).is_dir() else None
    if manifest is None:
        raise ShanshuiError("--low-memory and --max-memory need an ONNX export made by `shanshui export` "
                            "(the ONNX Runtime backend); run `shanshui export` on the model folder first")
    h = h or int(manifest["shapes"]["height"])
    w = w or int(manifest["shapes"]["width"])
    if max_memory is None:
        return lowest(Path(root), manifest, h, w, n, guidance)
    budget = parse_budget(max_memory)
    return choose(Path(root), manifest, budget, h, w, n, guidance)
