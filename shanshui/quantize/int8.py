"""int8 U-Net: static QDQ quantization with per-channel weights, calibrated on real U-Net inputs.

Calibration inputs are recorded from fp32 sampler runs over a prompt set: every step's (x, t, cond) with both
guidance branches in the batch. What runs in int8 is decided by measurement: after a first pass, the error of every
quantized layer's output against fp32 is measured on calibration inputs (SNR in dB), and layers below
`min_layer_snr_db` are kept in float in the second pass. Only layers with constant weights are candidates
(Conv, MatMul, Gemm): attention's activation×activation products, normalisations and softmax stay float, as do
conv_in, conv_out and the time embedding. The QDQ graph is explicit quantization, which TensorRT consumes as is.
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

from shanshui.errors import ShanshuiError

ALWAYS_FLOAT = ("/conv_in/", "/conv_out/", "/time_embedding/", "/time_proj")  # name fragments of float layers


def cpu_has_vnni() -> bool:
    """AVX-512 VNNI or AVX-VNNI present (Linux /proc/cpuinfo); without it u8s8 needs reduce_range on x86."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def int8_format() -> dict:
    """The int8 formats used on this machine, stated in the manifest."""
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    return {"format": "QDQ", "activations": "uint8", "weights": "int8 per-channel",
            "reduce_range": bool(x86 and not cpu_has_vnni()), "calibration": "MinMax"}


def record_calibration(export: Path, prompts, seeds, steps: int, threads: int | None = None) -> list[dict[str, np.ndarray]]:
    """U-Net feeds seen while sampling with the fp32 export (both guidance branches per feed), in call order."""
    from shanshui.runtime.pipeline import Pipeline, Request

    pipe = Pipeline(export, threads=threads)
    feeds = []
    unet = pipe.components.unet

    def recording(x, t, cond):
        feeds.append({"sample": x, "timestep": t, "encoder_hidden_states": cond})
        return unet(x, t, cond)

    pipe.components.unet = recording
    for prompt in prompts:
        for seed in seeds:
            pipe(Request(prompt, steps=steps, seed=seed, guidance=5.0))
    return feeds


class _Feeds:
    """The CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds):
        self.feeds, self.i = feeds, 0

    def get_next(self):
        if self.i >= len(self.feeds):
            return None
        self.i += 1
        return self.feeds[self.i - 1]

    def rewind(self):
        self.i = 0


def candidate_nodes(model) -> tuple[list[str], list[str]]:
    """(names of weight layers that may be quantized, names kept float by rule)."""
    consts = {i.name for i in model.graph.initializer}
    allowed, kept = [], []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "MatMul", "Gemm"):
            continue
        if not any(i in consts for i in node.input[1:2]):  # activation × activation (attention scores)
            continue
        (kept if any(f in node.name for f in ALWAYS_FLOAT) else allowed).append(node.name)
    return allowed, kept


def _quantize(src: Path, dst: Path, feeds, nodes: list[str], fmt: dict) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        str(src), str(dst), _Feeds(feeds), quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv", "MatMul", "Gemm"],
        per_channel=True, reduce_range=fmt["reduce_range"], activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        nodes_to_quantize=nodes, calibrate_method=CalibrationMethod.MinMax,
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )


def layer_snr(fp32_path: Path, int8_path: Path, feeds, nodes: list[str]) -> dict[str, float]:
    """Output SNR (dB) of each quantized layer against fp32, over the feeds: 10·log10(|ref|² / |ref − q|²)."""
    import onnx
    import onnxruntime as ort

    def outputs_of(path: Path, names: list[str]) -> list[np.ndarray]:
        model = onnx.load(str(path))
        have = {o.name for o in model.graph.output}
        for n in names:
            if n not in have:
                model.graph.output.append(onnx.ValueInfoProto(name=n))
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor addressable
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return [sess.run(names, f) for f in feeds]

    fp32 = onnx.load(str(fp32_path), load_external_data=False)
    out_of = {n.name: n.output[0] for n in fp32.graph.node if n.name in set(nodes)}
    names = [out_of[n] for n in nodes]
    ref, got = outputs_of(fp32_path, names), outputs_of(int8_path, names)
    snr = {}
    for j, node in enumerate(nodes):
        sig = sum(float(np.sum(r[j].astype(np.float64) ** 2)) for r in ref)
        err = sum(float(np.sum((r[j].astype(np.float64) - g[j]) ** 2)) for r, g in zip(ref, got))
        snr[node] = float("inf") if err == 0 else round(10 * np.log10(sig / err), 2)
    return snr


def quantize_unet_int8(src: Path, dst: Path, feeds, min_layer_snr_db: float = 20.0, probe_feeds: int = 6) -> dict:
    """Two-pass int8 QDQ of an fp32 U-Net at `src` into `dst`; returns what was quantized and measured."""
    import onnx

    try:
        import onnxruntime.quantization  # noqa: F401
    except ImportError as e:
        raise ShanshuiError(f"int8 quantization needs onnxruntime's quantization tools ({e.name} is missing)") from None
    if not feeds:
        raise ShanshuiError("no calibration inputs were recorded; give calibration prompts")
    model = onnx.load(str(src), load_external_data=False)
    allowed, kept = candidate_nodes(model)
    fmt = int8_format()
    _quantize(src, dst, feeds, allowed, fmt)
    probe = feeds[:: max(1, len(feeds) // probe_feeds)][:probe_feeds]
    snr = layer_snr(src, dst, probe, allowed)
    sensitive = sorted(n for n, v in snr.items() if v < min_layer_snr_db)
    quantized = [n for n in allowed if n not in sensitive]
    if sensitive:
        _quantize(src, dst, feeds, quantized, fmt)
    return {"format": fmt, "calibration_feeds": len(feeds), "quantized_layers": len(quantized),
            "float_layers_by_rule": kept, "float_layers_by_measurement": sensitive,
            "min_layer_snr_db": min_layer_snr_db, "layer_snr_db": snr}
