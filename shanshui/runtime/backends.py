"""Backends: the three components behind one NumPy interface, so ONNX Runtime and PyTorch are interchangeable.

    text_encoder(input_ids (B2, L) int64) -> (B2, L, D) float32
    unet(x (B2, C, h, w) f32, t (B2,) f32, cond (B2, L, D) f32) -> ε or v (B2, C, h, w) f32   # the denoiser interface
    vae_decoder(z (B, C, h, w) f32, already / scaling_factor) -> image (B, 3, H, W) f32 in [-1, 1]
    vae_encoder(image (B, 3, H, W) f32 in [-1, 1]) -> latent mean (B, C, h, w) f32, before × scaling_factor
                (image-to-image; absent when `has_encoder` is False, e.g. exports made before vae_encoder existed)
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Protocol

import numpy as np

from shanshui.errors import ShanshuiError
from shanshui.fsutil import read_json
from shanshui.hf import quiet_hf
from shanshui.spec.contract import COMPONENTS, ENCODER_HIDDEN_STATES, INPUT_IDS, LAST_HIDDEN_STATE, LATENT_PARAMETERS
from shanshui.spec.contract import LATENT_SAMPLE, OUT_SAMPLE, SAMPLE, TEXT_ENCODER, TIMESTEP, UNET, VAE_DECODER, VAE_ENCODER
from shanshui.spec.contract import TorchPrecision, check_choice
from shanshui.runtime import torch_cuda
from shanshui.weights import load_strict


class Components(Protocol):
    """What the pipeline needs of a backend (OrtComponents, TorchComponents, trt_backend.TrtComponents)."""

    name: str
    has_encoder: bool

    def text_encoder(self, input_ids: np.ndarray) -> np.ndarray: ...  # (B2, L) int64 -> (B2, L, D)

    def unet(self, x: np.ndarray, t: np.ndarray, cond: np.ndarray) -> np.ndarray: ...  # -> ε or v (B2, C, h, w)

    def vae_decoder(self, z: np.ndarray) -> np.ndarray: ...  # (B, C, h, w) -> (B, 3, H, W) in [-1, 1]

    def vae_encoder(self, image: np.ndarray) -> np.ndarray: ...  # (B, 3, H, W) -> latent mean (B, C, h, w); if has_encoder


class Backend(str, enum.Enum):
    auto = "auto"
    onnxruntime = "onnxruntime"
    torch = "torch"
    tensorrt = "tensorrt"


class Device(str, enum.Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


# Whether a component's ONNX Runtime pool threads spin between calls. Spinning pays for the U-Net, called back to
# back; the text encoder's threads would spin on after its single call and take CPU from the first U-Net steps (on a
# 2-core machine a probe read ~2x slow for 10-30 ms after a spinning session's call). scripts/spin_ab.py measures it.
SPINNING = {TEXT_ENCODER: False, UNET: True, VAE_DECODER: False, VAE_ENCODER: False}


ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
              "tensor(int32)": np.int32}


class OrtComponents:
    """ONNX Runtime sessions over an export folder; CUDA provider when asked for (or `auto` and present)."""

    name = "onnxruntime"

    def __init__(self, model, device: str = "auto", threads: int | None = None):
        import onnxruntime as ort

        available = ort.get_available_providers()
        if device == "cuda" and "CUDAExecutionProvider" not in available:
            raise ShanshuiError("ONNX Runtime has no CUDA provider here; pip install 'shanshui[gpu]', or use --device cpu")
        use_cuda = device in ("cuda", "auto") and "CUDAExecutionProvider" in available
        self.providers = (["CUDAExecutionProvider"] if use_cuda else []) + ["CPUExecutionProvider"]
        self.device = "cuda" if use_cuda else "cpu"
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        once = ort.SessionOptions()  # the same, for the components called once per image (see SPINNING)
        once.log_severity_level, once.graph_optimization_level = opts.log_severity_level, opts.graph_optimization_level
        if threads:
            once.intra_op_num_threads, once.inter_op_num_threads = int(threads), 1
        once.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # the text encoder as `once`, without prepacked weights, as every low-memory mode loads it (runtime/lowmem.py):
        # prepacking changes its output (SD 1.5's fp16 encoder: 72 dB apart), and an int8 U-Net's rounding carries
        # any such change through every step (21 dB apart in the image); it runs once per image, so speed is moot
        text = ort.SessionOptions()
        text.log_severity_level, text.graph_optimization_level = once.log_severity_level, once.graph_optimization_level
        if threads:
            text.intra_op_num_threads, text.inter_op_num_threads = int(threads), 1
        text.add_session_config_entry("session.intra_op.allow_spinning", "0")
        text.add_session_config_entry("session.disable_prepacking", "1")
        self.sessions = {}
        optional = (VAE_ENCODER,) if VAE_ENCODER in model.manifest["components"] else ()
        for comp in COMPONENTS + optional:
            path = model.onnx_path(comp)
            try:
                chosen = text if comp == TEXT_ENCODER else opts if SPINNING[comp] else once
                self.sessions[comp] = ort.InferenceSession(str(path), chosen, providers=self.providers)
            except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types, all Exception subclasses
                raise ShanshuiError(f"cannot load {path}: {str(e).splitlines()[0]}; re-run `shanshui export`") from None

        self.has_encoder = VAE_ENCODER in self.sessions
        # input dtypes as each graph declares them (Optimum exports take int32 ids, some an int64 timestep)
        self.dtypes = {(c, i.name): ORT_DTYPES.get(i.type, np.float32) for c, s in self.sessions.items() for i in s.get_inputs()}
        # Optimum's U-Net takes the timestep as a scalar (one timestep per call, as the denoiser always gives)
        self.scalar_t = [len(i.shape) for i in self.sessions[UNET].get_inputs() if i.name == TIMESTEP] == [0]

    def _feed(self, comp: str, arrays: dict) -> dict:
        feeds = {}
        for name, v in arrays.items():
            dtype = self.dtypes[(comp, name)]
            v = np.asarray(v)
            if np.issubdtype(dtype, np.integer) and v.dtype.kind == "f":
                v = np.round(v)  # an integer timestep input: the nearest trained timestep
            feeds[name] = v.astype(dtype, copy=False)
        return feeds

    def text_encoder(self, input_ids: np.ndarray) -> np.ndarray:
        return self.sessions[TEXT_ENCODER].run([LAST_HIDDEN_STATE], self._feed(TEXT_ENCODER, {INPUT_IDS: input_ids}))[0]

    def unet(self, x: np.ndarray, t: np.ndarray, cond: np.ndarray) -> np.ndarray:
        feeds = self._feed(UNET, {SAMPLE: x, TIMESTEP: t[0] if self.scalar_t else t, ENCODER_HIDDEN_STATES: cond})
        return self.sessions[UNET].run([OUT_SAMPLE], feeds)[0]

    def vae_decoder(self, z: np.ndarray) -> np.ndarray:
        return self.sessions[VAE_DECODER].run([SAMPLE], self._feed(VAE_DECODER, {LATENT_SAMPLE: z}))[0]

    def vae_encoder(self, image: np.ndarray) -> np.ndarray:
        params = self.sessions[VAE_ENCODER].run([LATENT_PARAMETERS], self._feed(VAE_ENCODER, {SAMPLE: image}))[0]
        return params[:, : params.shape[1] // 2]  # the mean; the log-variance follows


class TorchComponents:
    """PyTorch modules (from a diffusers folder, or in memory during training), on CPU or CUDA.

    From a folder on CUDA, a torch_cuda.CudaRunner runs them (precision, SDPA, channels_last, CUDA graphs, timings).
    """

    name = "torch"

    def __init__(self, text_encoder, unet, vae, device: str = "cpu", cuda=None):
        import torch

        self.torch, self.device, self.cuda = torch, device, cuda
        self.te, self.un, self.vae = text_encoder, unet, vae
        self.dtype = next((p.dtype for p in unet.parameters() if p.is_floating_point()), torch.float32)
        self.timings = cuda.timings if cuda is not None else {}

    @classmethod
    def from_folder(cls, root: Path, device: str = "auto", threads: int | None = None, dtype: str = "fp32",
                    cuda_graphs: bool = False, compile: bool = False) -> "TorchComponents":
        try:
            import diffusers
            import torch
            import transformers
        except ImportError as e:
            raise ShanshuiError(f"the torch backend needs the torch extra ({e.name} is missing): pip install 'shanshui[torch]'") from None

        quiet_hf()
        if device == "cuda" and not torch.cuda.is_available():
            raise ShanshuiError("no CUDA GPU is visible to PyTorch; use --device cpu")
        device = "cuda" if device in ("cuda", "auto") and torch.cuda.is_available() else "cpu"
        if threads and device == "cpu":
            torch.set_num_threads(int(threads))
        check_choice("precision", dtype, TorchPrecision)
        if dtype in ("fp16", "bf16") and device == "cpu":
            raise ShanshuiError(f"{dtype} on the CPU is slower than fp32 in PyTorch; use fp32 there, or --device cuda")
        if (cuda_graphs or compile) and device != "cuda":
            raise ShanshuiError("CUDA graphs and torch.compile here need a CUDA GPU: use --device cuda, or --no-cuda-graphs")

        torch_dtype = getattr(torch, torch_cuda.load_dtype(dtype, device))
        index = read_json(Path(root) / "model_index.json")
        te_cls = getattr(transformers, (index.get("text_encoder") or [None, "CLIPTextModel"])[1])
        kw = dict(use_safetensors=True, torch_dtype=torch_dtype)
        place = "cpu" if dtype == "int8" else device  # int8: to_int8 quantizes and places the modules
        te = load_strict(te_cls, Path(root) / "text_encoder", "text encoder", **kw).to(place).eval()
        un = load_strict(diffusers.UNet2DConditionModel, Path(root) / "unet", "U-Net", **kw).to(place).eval()
        vae = load_strict(diffusers.AutoencoderKL, Path(root) / "vae", "VAE", **kw).to(place).eval()
        if dtype == "int8":
            te, un, vae = torch_cuda.to_int8(te, un, vae, device)
        runner = torch_cuda.CudaRunner(te, un, vae, dtype, cuda_graphs, compile=compile) if device == "cuda" else None
        return cls(te, un, vae, device, cuda=runner)

    def _run(self, fn, *arrays):
        torch = self.torch
        with torch.inference_mode():
            ins = [torch.from_numpy(np.ascontiguousarray(a)).to(self.device) for a in arrays]
            ins = [a.to(self.dtype) if a.is_floating_point() else a for a in ins]
            return fn(*ins).float().cpu().numpy()

    def text_encoder(self, input_ids: np.ndarray) -> np.ndarray:
        if self.cuda is not None:
            return self.cuda.text_encoder(input_ids)
        return self._run(lambda ids: self.te(ids, return_dict=True).last_hidden_state, input_ids.astype(np.int64))

    def unet(self, x: np.ndarray, t: np.ndarray, cond: np.ndarray) -> np.ndarray:
        if self.cuda is not None:
            return self.cuda.unet(x, t, cond)
        return self._run(lambda a, b, c: self.un(a, b.float(), c, return_dict=False)[0], x, t.astype(np.float32), cond)

    def vae_decoder(self, z: np.ndarray) -> np.ndarray:
        if self.cuda is not None:
            return self.cuda.vae_decoder(z)
        return self._run(lambda a: self.vae.decode(a, return_dict=False)[0], z.astype(np.float32))

    has_encoder = True

    def vae_encoder(self, image: np.ndarray) -> np.ndarray:
        return self._run(lambda a: self.vae.encode(a, return_dict=False)[0].mean, image.astype(np.float32))
