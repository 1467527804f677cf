"""The per-component contract: tensor names, dtypes, symbolic dims, shape profiles and sample inputs.

One description is read by ONNX export (names, dynamic axes, parity inputs), by the runtime (what to feed) and by
TensorRT engine builds (min/opt/max profiles). Torch-free on purpose. The names follow the ONNX diffusion layout
that Optimum and the TensorRT diffusion demo already use, so an exported folder is not a private format.

Symbolic dims:
    B2  batch seen by the text encoder and the U-Net (2 × images with classifier-free guidance)
    B   images decoded by the VAE
    h w latent height/width;  H W image height/width (= 8 × latent)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from shanshui.errors import ShanshuiError

Dim = str | int
Profile = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]  # (min, opt, max) shapes


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "float32", "int64"
    dims: tuple[Dim, ...]


@dataclass(frozen=True)
class ModelDims:
    """What the source model fixes: read from the diffusers configs."""

    text_len: int  # tokens per prompt (tokenizer max length)
    text_dim: int  # text encoder hidden size = U-Net cross-attention dim
    vocab_size: int
    latent_channels: int
    vae_scale: int  # image pixels per latent pixel
    size_multiple: int  # image sides must be multiples of this (VAE scale × U-Net downsampling)


def check_size(name: str, v: int, multiple: int, lo: int, hi: int, prefix: str = "") -> None:
    """An image side must be a positive multiple of the model's stride and inside the exported range."""
    if v <= 0 or v % multiple:
        raise ShanshuiError(f"{prefix}{name} {v} must be a multiple of {multiple} for this model; try {max(multiple, round(v / multiple) * multiple)}")
    if not lo <= v <= hi:
        raise ShanshuiError(f"{prefix}{name} {v} is outside the exported range {lo}..{hi}")


@dataclass(frozen=True)
class ShapeSettings:
    """What the export chooses: the image sizes and batch the components are built and checked for."""

    height: int
    width: int
    min_size: int = 128
    max_size: int = 1024
    max_batch: int = 4  # images per call

    def check(self, dims: ModelDims) -> None:
        for name, v in (("height", self.height), ("width", self.width)):
            check_size(name, v, dims.size_multiple, self.min_size, self.max_size)
        if self.max_batch < 1:
            raise ShanshuiError(f"batch must be at least 1, got {self.max_batch}")

    def dim_ranges(self, dims: ModelDims) -> dict[str, tuple[int, int, int]]:
        """(min, opt, max) of every symbolic dim."""
        s = dims.vae_scale
        lo = max(dims.size_multiple, self.min_size - self.min_size % dims.size_multiple)
        hi = self.max_size - self.max_size % dims.size_multiple
        return {
            "B2": (1, 2, 2 * self.max_batch),
            "B": (1, 1, self.max_batch),
            "H": (lo, self.height, hi),
            "W": (lo, self.width, hi),
            "h": (lo // s, self.height // s, hi // s),
            "w": (lo // s, self.width // s, hi // s),
        }


@dataclass(frozen=True)
class ComponentSpec:
    name: str  # also the folder name in an export
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    atol: float  # parity tolerance against PyTorch fp32: max|onnx - torch| <= atol + rtol * max|torch|
    rtol: float
    notes: str = ""
    extra: dict = field(default_factory=dict)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """The torch.onnx.export dynamic_axes mapping: every symbolic dim of every input and output."""
        return {t.name: {i: d for i, d in enumerate(t.dims) if isinstance(d, str)} for t in self.inputs + self.outputs}

    def profile(self, dims: ModelDims, shapes: ShapeSettings) -> dict[str, Profile]:
        """min/opt/max shape per input, as a TensorRT optimisation profile wants it."""
        ranges = shapes.dim_ranges(dims)
        out = {}
        for t in self.inputs:
            out[t.name] = tuple(tuple(ranges[d][k] if isinstance(d, str) else d for d in t.dims) for k in range(3))
        return out

    def shape_of(self, tensor: TensorSpec, values: dict[str, int]) -> tuple[int, ...]:
        return tuple(values[d] if isinstance(d, str) else d for d in tensor.dims)

    def sample_inputs(self, dims: ModelDims, values: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
        """Fixed, realistic inputs for parity checks and engine warm-up. `values` gives each symbolic dim."""
        rng = np.random.default_rng(seed)
        feeds = {}
        for t in self.inputs:
            shape = self.shape_of(t, values)
            if t.name == "input_ids":
                feeds[t.name] = rng.integers(0, dims.vocab_size, size=shape, dtype=np.int64)
            elif t.name == "timestep":
                feeds[t.name] = rng.uniform(0, 999, size=shape).astype(np.float32)
            else:
                feeds[t.name] = rng.standard_normal(shape).astype(np.float32)
        return feeds


def components(dims: ModelDims) -> dict[str, ComponentSpec]:
    """The exported components of a latent diffusion pipeline, keyed by folder name (vae_encoder: image-to-image)."""
    c, n, d = dims.latent_channels, dims.text_len, dims.text_dim
    return {
        "text_encoder": ComponentSpec(
            "text_encoder",
            inputs=(TensorSpec("input_ids", "int64", ("B2", n)),),
            outputs=(
                TensorSpec("last_hidden_state", "float32", ("B2", n, d)),
                TensorSpec("pooler_output", "float32", ("B2", d)),
            ),
            atol=1e-4,
            rtol=1e-3,
        ),
        "unet": ComponentSpec(
            "unet",
            inputs=(
                TensorSpec("sample", "float32", ("B2", c, "h", "w")),
                TensorSpec("timestep", "float32", ("B2",)),
                TensorSpec("encoder_hidden_states", "float32", ("B2", n, d)),
            ),
            outputs=(TensorSpec("out_sample", "float32", ("B2", c, "h", "w")),),
            atol=1e-4,
            rtol=1e-3,
            notes="predicts ε or v (scheduler prediction_type); timestep is float so fractional timesteps work",
        ),
        "vae_decoder": ComponentSpec(
            "vae_decoder",
            inputs=(TensorSpec("latent_sample", "float32", ("B", c, "h", "w")),),
            outputs=(TensorSpec("sample", "float32", ("B", 3, "H", "W")),),
            atol=1e-4,
            rtol=1e-3,
            notes="input is latents / scaling_factor; output in [-1, 1]",
        ),
        "vae_encoder": ComponentSpec(  # image-to-image; Optimum's names: the latent distribution's mean and log-variance
            "vae_encoder",
            inputs=(TensorSpec("sample", "float32", ("B", 3, "H", "W")),),
            outputs=(TensorSpec("latent_parameters", "float32", ("B", 2 * c, "h", "w")),),
            atol=1e-4,
            rtol=1e-3,
            notes="input is an image in [-1, 1]; output channels: mean then log-variance (× scaling_factor: latents)",
        ),
    }


def parity_error(onnx_out: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(max abs error, allowed scale = max|ref|)."""
    return float(np.max(np.abs(onnx_out.astype(np.float64) - ref.astype(np.float64)))), float(np.max(np.abs(ref)))
