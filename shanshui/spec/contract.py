"""The one vocabulary: component names, tensor names, precisions, and the per-component contract (dtypes, symbolic
dims, shape profiles, sample inputs).

Read by ONNX export (names, dynamic axes, parity inputs), the runtime backends (what to feed, what to fetch),
quantization (calibration feeds, per-component checks), TensorRT engine builds (min/opt/max profiles), bench and the
CLI (precision choices). Torch-free on purpose. The names follow the ONNX diffusion layout
that Optimum and the TensorRT diffusion demo already use, so an exported folder is not a private format.

Symbolic dims:
    B2  batch seen by the text encoder and the U-Net (2 × images with classifier-free guidance)
    B   images decoded by the VAE
    h w latent height/width;  H W image height/width (= 8 × latent)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from shanshui.errors import ShanshuiError

# Components: the three every export and engine folder has, plus the optional image-to-image encoder.
TEXT_ENCODER, UNET, VAE_DECODER, VAE_ENCODER = "text_encoder", "unet", "vae_decoder", "vae_encoder"
COMPONENTS = (TEXT_ENCODER, UNET, VAE_DECODER)
ALL_COMPONENTS = COMPONENTS + (VAE_ENCODER,)
SOURCE_FOLDER = {TEXT_ENCODER: "text_encoder", UNET: "unet", VAE_DECODER: "vae", VAE_ENCODER: "vae"}  # in a diffusers folder

# Tensor names (Optimum's ONNX diffusion layout).
INPUT_IDS = "input_ids"  # text_encoder in
LAST_HIDDEN_STATE, POOLER_OUTPUT = "last_hidden_state", "pooler_output"  # text_encoder out
SAMPLE, TIMESTEP, ENCODER_HIDDEN_STATES = "sample", "timestep", "encoder_hidden_states"  # unet in
OUT_SAMPLE = "out_sample"  # unet out
LATENT_SAMPLE = "latent_sample"  # vae_decoder in; its output is SAMPLE (the image), as is vae_encoder's input
LATENT_PARAMETERS = "latent_parameters"  # vae_encoder out


class Precision(str, enum.Enum):
    """Weight precision of an ONNX export or a TensorRT engine."""

    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"


class QuantizePrecision(str, enum.Enum):
    """What `shanshui quantize` makes from an fp32 export."""

    fp16 = "fp16"
    int8 = "int8"


class TorchPrecision(str, enum.Enum):
    """What the torch backend loads weights as."""

    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"
    int8 = "int8"


def choices(enum_cls: type[enum.Enum]) -> tuple[str, ...]:
    return tuple(p.value for p in enum_cls)


def check_choice(what: str, value: str, enum_cls: type[enum.Enum]) -> None:
    if value not in choices(enum_cls):
        raise ShanshuiError(f"{what} {value!r} is not available; choose one of {', '.join(choices(enum_cls))}")


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
            if t.name == INPUT_IDS:
                feeds[t.name] = rng.integers(0, dims.vocab_size, size=shape, dtype=np.int64)
            elif t.name == TIMESTEP:
                feeds[t.name] = rng.uniform(0, 999, size=shape).astype(np.float32)
            else:
                feeds[t.name] = rng.standard_normal(shape).astype(np.float32)
        return feeds


def components(dims: ModelDims) -> dict[str, ComponentSpec]:
    """The exported components of a latent diffusion pipeline, keyed by folder name (vae_encoder: image-to-image)."""
    c, n, d = dims.latent_channels, dims.text_len, dims.text_dim
    return {
        TEXT_ENCODER: ComponentSpec(
            TEXT_ENCODER,
            inputs=(TensorSpec(INPUT_IDS, "int64", ("B2", n)),),
            outputs=(TensorSpec(LAST_HIDDEN_STATE, "float32", ("B2", n, d)), TensorSpec(POOLER_OUTPUT, "float32", ("B2", d))),
            atol=1e-4,
            rtol=1e-3,
        ),
        UNET: ComponentSpec(  # predicts ε or v (scheduler prediction_type); timestep is float so fractional ones work
            UNET,
            inputs=(
                TensorSpec(SAMPLE, "float32", ("B2", c, "h", "w")),
                TensorSpec(TIMESTEP, "float32", ("B2",)),
                TensorSpec(ENCODER_HIDDEN_STATES, "float32", ("B2", n, d)),
            ),
            outputs=(TensorSpec(OUT_SAMPLE, "float32", ("B2", c, "h", "w")),),
            atol=1e-4,
            rtol=1e-3,
        ),
        VAE_DECODER: ComponentSpec(  # input is latents / scaling_factor; output in [-1, 1]
            VAE_DECODER,
            inputs=(TensorSpec(LATENT_SAMPLE, "float32", ("B", c, "h", "w")),),
            outputs=(TensorSpec(SAMPLE, "float32", ("B", 3, "H", "W")),),
            atol=1e-4,
            rtol=1e-3,
        ),
        # image-to-image; input an image in [-1, 1]; output channels: the latent distribution's mean then log-variance
        VAE_ENCODER: ComponentSpec(
            VAE_ENCODER,
            inputs=(TensorSpec(SAMPLE, "float32", ("B", 3, "H", "W")),),
            outputs=(TensorSpec(LATENT_PARAMETERS, "float32", ("B", 2 * c, "h", "w")),),
            atol=1e-4,
            rtol=1e-3,
        ),
    }


def parity_error(onnx_out: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(max abs error, allowed scale = max|ref|)."""
    return float(np.max(np.abs(onnx_out.astype(np.float64) - ref.astype(np.float64)))), float(np.max(np.abs(ref)))
