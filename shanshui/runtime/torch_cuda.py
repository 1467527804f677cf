"""PyTorch on a CUDA GPU, done for speed: fp16/bf16/int8, SDPA attention, channels_last, CUDA graphs, torch.compile.

TorchComponents.from_folder hands its modules to a CudaRunner when the device is CUDA; the sampler loop stays the
NumPy one of pipeline.py. What the runner does:
- precision: fp32, fp16 or bf16 weights and compute; int8 through bitsandbytes (shanshui.runtime.bnb.to_int8) with
  fp16 compute. An fp16 VAE whose config sets force_upcast decodes in fp32, as diffusers does (fp16 overflows there).
- attention: diffusers' AttnProcessor2_0 (torch.nn.functional.scaled_dot_product_attention, flash/memory-efficient
  kernels) in U-Net and VAE; transformers picks SDPA for the text encoder itself.
- channels_last for U-Net and VAE in half precision, where tensor-core convolutions want NHWC.
- cuda_graphs: the U-Net is captured once per input shape (static input buffers, after warm-up) and replayed.
- compile: torch.compile of the U-Net ("reduce-overhead", i.e. with CUDA graphs, when cuda_graphs is set too).
`timings[stage]` collects each call's GPU milliseconds (CUDA events), for benchmarks.
"""

from __future__ import annotations

import numpy as np

from shanshui.runtime import bnb
from shanshui.spec.contract import COMPONENTS



def load_dtype(precision: str, device: str) -> str:
    """The torch dtype name the weights are loaded in: int8 starts from fp16 on CUDA (fp32 elsewhere)."""
    if precision == "int8":
        return "float16" if device == "cuda" else "float32"
    return {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[precision]


def to_int8(text_encoder, unet, vae, device: str):
    """int8 weights through shanshui.runtime.bnb.to_int8(modules, device), which swaps layers in place and moves
    what it quantizes to `device`; whatever it leaves elsewhere (the VAE) is moved here. Its errors propagate."""
    modules = {"text_encoder": text_encoder, "unet": unet, "vae": vae}
    bnb.to_int8(modules, device)
    for m in modules.values():
        if any(p.device.type != device for p in m.parameters()):
            m.to(device)
    return modules["text_encoder"], modules["unet"], modules["vae"]


def use_sdpa(module) -> bool:
    """Give a diffusers model the SDPA attention processor; False when it has no attention processors."""
    if not hasattr(module, "set_attn_processor") or not getattr(module, "attn_processors", None):
        return False
    from diffusers.models.attention_processor import AttnProcessor2_0

    module.set_attn_processor(AttnProcessor2_0())
    return True


class CudaRunner:
    """NumPy in, NumPy out over CUDA modules; see the module docstring."""

    def __init__(self, text_encoder, unet, vae, precision: str = "fp16", cuda_graphs: bool = False,
                 channels_last: bool | None = None, compile: bool = False, device: str = "cuda"):
        import torch

        self.torch, self.precision, self.device = torch, precision, device
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.float16}[precision]
        self.te, self.un, self.vae = text_encoder, unet, vae
        for m in (unet, vae):
            use_sdpa(m)
        self.channels_last = self.dtype != torch.float32 if channels_last is None else channels_last
        if self.channels_last:
            unet.to(memory_format=torch.channels_last)
            vae.to(memory_format=torch.channels_last)
        self.vae_dtype = self.dtype
        if precision == "fp16" and getattr(getattr(vae, "config", None), "force_upcast", False):
            vae.to(torch.float32)
            self.vae_dtype = torch.float32
        self.unet_fn = unet
        self.cuda_graphs = cuda_graphs
        if compile:
            self.unet_fn = torch.compile(unet, mode="reduce-overhead" if cuda_graphs else "default")
            self.cuda_graphs = False  # reduce-overhead captures its own graphs
        self._graphs: dict = {}  # input shapes -> (graph, static inputs, static output)
        self.timings: dict[str, list[float]] = {c: [] for c in COMPONENTS}

    def _to(self, a: np.ndarray, dtype, image: bool = False):
        t = self.torch.from_numpy(np.ascontiguousarray(a)).to(self.device, dtype)
        return t.contiguous(memory_format=self.torch.channels_last) if image and self.channels_last else t

    def _timed(self, stage: str, fn) -> np.ndarray:
        """Run fn() between two CUDA events on the current stream; its output to the host as float32."""
        torch = self.torch
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.inference_mode():
            start.record()
            out = fn()
            end.record()
            host = out.float().cpu().numpy()  # waits for the stream, so `end` has completed
        self.timings[stage].append(start.elapsed_time(end))
        return host

    def text_encoder(self, input_ids: np.ndarray) -> np.ndarray:
        ids = self._to(input_ids.astype(np.int64), self.torch.int64)  # (B2, L)
        return self._timed("text_encoder", lambda: self.te(ids, return_dict=True).last_hidden_state)  # (B2, L, D)

    def unet(self, x: np.ndarray, t: np.ndarray, cond: np.ndarray) -> np.ndarray:
        xs = self._to(x, self.dtype, image=True)  # (B2, C, h, w)
        ts = self._to(t.astype(np.float32), self.torch.float32)  # (B2,)
        cs = self._to(cond, self.dtype)  # (B2, L, D)
        if not self.cuda_graphs:
            return self._timed("unet", lambda: self.unet_fn(xs, ts, cs, return_dict=False)[0])
        graph, static, out = self._graph_for(xs, ts, cs)
        with self.torch.inference_mode():  # the static buffers are inference tensors
            for dst, src in zip(static, (xs, ts, cs)):
                dst.copy_(src)
        return self._timed("unet", lambda: (graph.replay(), out)[1])

    def _graph_for(self, xs, ts, cs):
        """The U-Net captured at these shapes: static input buffers, two warm-up calls on a side stream, one capture."""
        torch = self.torch
        key = (tuple(xs.shape), tuple(cs.shape))
        if key not in self._graphs:
            with torch.inference_mode():
                static = (xs.clone(), ts.clone(), cs.clone())
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for _ in range(2):
                        self.unet_fn(*static, return_dict=False)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    out = self.unet_fn(*static, return_dict=False)[0]  # (B2, C, h, w), rewritten by every replay
            self._graphs[key] = (graph, static, out)
        return self._graphs[key]

    def vae_decoder(self, z: np.ndarray) -> np.ndarray:
        zs = self._to(z.astype(np.float32), self.vae_dtype, image=True)  # (B, C, h, w)
        return self._timed("vae_decoder", lambda: self.vae.decode(zs, return_dict=False)[0])  # (B, 3, H, W)
