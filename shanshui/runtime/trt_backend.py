"""TensorRT engines behind the components interface of backends.py (NumPy in, NumPy out), for `--backend tensorrt`.

    text_encoder(input_ids (B2, L) int64) -> (B2, L, D) float32
    unet(x (B2, C, h, w) f32, t (B2,) f32, cond (B2, L, D) f32) -> (B2, C, h, w) f32
    vae_decoder(z (B, C, h, w) f32) -> (B, 3, H, W) f32 in [-1, 1]

The engines come from `shanshui engine build` (EXPORT/engines by default) and are checked against this export,
TensorRT version and GPU before anything runs: a stale engine is an error, never run. All three engines share one
CUDA stream and one block of activation memory (the largest any of them needs); static shapes run as CUDA graphs.
`timings[component]` collects the GPU milliseconds of every launch (CUDA events), for benchmarks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shanshui.spec.contract import COMPONENTS, ENCODER_HIDDEN_STATES, INPUT_IDS, LAST_HIDDEN_STATE, LATENT_SAMPLE
from shanshui.spec.contract import OUT_SAMPLE, SAMPLE, TEXT_ENCODER, TIMESTEP, UNET, VAE_DECODER
from shanshui.errors import ShanshuiError
from shanshui.engines import trt
from shanshui.engines.build import check_engines


class TrtComponents:
    name = "tensorrt"
    has_encoder = False  # image-to-image runs on onnxruntime or torch

    def __init__(self, exported, engine_dir: Path | None = None, device: str = "auto", cuda_graphs: bool = True):
        if device == "cpu":
            raise ShanshuiError("TensorRT runs on NVIDIA GPUs only: use --backend onnxruntime for --device cpu")

        env = trt.environment()  # tensorrt importable, a GPU visible: else a one-line error
        paths, self.engines = check_engines(exported, env, engine_dir)
        torch = trt.cuda_torch()
        self.device, self.cuda_graphs = "cuda", cuda_graphs
        self.stream = torch.cuda.Stream()
        self.runners = {c: trt.TrtRunner(paths[c].read_bytes(), c, self.stream, cuda_graphs) for c in COMPONENTS}
        size = max(r.memory_bytes for r in self.runners.values())
        self.activations = torch.empty(max(size, 1), dtype=torch.uint8, device="cuda")  # (bytes,) shared by all engines
        for r in self.runners.values():
            r.attach(self.activations.data_ptr(), size)
        self.timings: dict[str, list[float]] = {c: [] for c in COMPONENTS}

    def _run(self, component: str, feeds: dict[str, np.ndarray], output: str) -> np.ndarray:
        outs, ms = self.runners[component].run(feeds, want=(output,))
        self.timings[component].append(ms)
        return outs[output]

    def text_encoder(self, input_ids: np.ndarray) -> np.ndarray:
        return self._run(TEXT_ENCODER, {INPUT_IDS: input_ids.astype(np.int64)}, LAST_HIDDEN_STATE)

    def unet(self, x: np.ndarray, t: np.ndarray, cond: np.ndarray) -> np.ndarray:
        feeds = {SAMPLE: x.astype(np.float32), TIMESTEP: t.astype(np.float32), ENCODER_HIDDEN_STATES: cond.astype(np.float32)}
        return self._run(UNET, feeds, OUT_SAMPLE)

    def vae_decoder(self, z: np.ndarray) -> np.ndarray:
        return self._run(VAE_DECODER, {LATENT_SAMPLE: z.astype(np.float32)}, SAMPLE)
