"""int8 U-Net: static QDQ quantization with per-channel weights, calibrated on real U-Net inputs.

Calibration inputs are recorded from fp32 sampler runs over a prompt set: every step's (x, t, cond) with both
guidance branches in the batch. What runs in int8 is decided by measurement: each candidate layer's own int8 error
is measured in isolation (sensitivity.py) and layers below `min_layer_snr_db` stay float. Only layers with constant
weights are candidates (Conv, MatMul, Gemm): attention's activation×activation products, normalisations and
softmax stay float, as do conv_in, conv_out, the time embedding and each resnet's projection of it
(`time_emb_proj`: a Gemm on one vector per image, no measurable compute). That projection decides what holds for the
whole picture: with it in int8, the 256 px model of issue 12 painted a prompt that names no format as a handscroll
instead of fp32's hanging scroll (17.3 dB), although every layer alone measured >= 26.8 dB and 11 or 31 more float
layers did not help; float, the gate passed at 31.7 dB worst. (The pooled-text `add_embedding` stays a candidate:
float, it did not fix the flip, and its float MatMuls made batch-1 and batch-2 runs differ by 38 dB.)
The QDQ graph is explicit quantization, which TensorRT consumes as is; ONNX Runtime fuses it into integer kernels.
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

from shanshui.errors import ShanshuiError
from shanshui.metrics import psnr, snr_db, to_uint8
from shanshui.onnxrt import ort_session
from shanshui.quantize.sensitivity import isolated_layer_snr
from shanshui.quantize.streamed import parts_for, quantize_in_parts
from shanshui.runtime.pipeline import Request, open_pipeline
from shanshui.spec.contract import ENCODER_HIDDEN_STATES, INPUT_IDS, LATENT_SAMPLE, SAMPLE, TEXT_ENCODER, TIMESTEP, UNET
from shanshui.spec.contract import ALL_COMPONENTS, VAE_DECODER, VAE_ENCODER

MIN_LAYER_SNR_DB = 25.0  # a layer whose own int8 output SNR is below this stays float (typical layers: 35-45 dB)
ALWAYS_FLOAT = ("/conv_in/", "/conv_out/", "/time_embedding/", "/time_proj", "/time_emb_proj/")  # name fragments


def cpu_has_vnni() -> bool:
    """AVX-512 VNNI or AVX-VNNI present (Linux /proc/cpuinfo); without it u8s8 needs reduce_range on x86."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


FORMATS = ("qdq", "qoperator")


def int8_format(quant_format: str = "qdq", activations: str = "uint8", reduce_range: bool | None = None) -> dict:
    """The int8 formats used on this machine, stated in the manifest.

    reduce_range (7-bit weights) avoids the u8×s8 saturation of x86 CPUs without VNNI; with VNNI (or elsewhere)
    full 8-bit weights are kept. `scripts/int8_formats.py` measures the alternatives on a machine.
    """
    if quant_format not in FORMATS:
        raise ShanshuiError(f"int8 format {quant_format!r} is not one of {', '.join(FORMATS)}")
    if activations not in ("uint8", "int8"):
        raise ShanshuiError(f"int8 activations {activations!r} must be uint8 or int8")
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    if reduce_range is None and activations == "int8":
        reduce_range = False  # symmetric int8 (TensorRT): full range
    if reduce_range is None:
        reduce_range = bool(x86 and not cpu_has_vnni())
    return {"format": quant_format.upper() if quant_format == "qdq" else "QOperator", "activations": activations,
            "weights": "int8 per-channel", "reduce_range": bool(reduce_range), "calibration": "MinMax",
            "cpu_vnni": cpu_has_vnni()}


def record_feeds(export: Path, prompts, seeds, steps: int, threads: int | None = None,
                 size: int | None = None, memory=None) -> dict[str, list[dict[str, np.ndarray]]]:
    """Every component's inputs seen while painting with the fp32 export, in call order: {component: [feeds]}.
    U-Net feeds hold both guidance branches; the VAE encoder's are the decoded paintings. At the export's default
    image size unless `size` is given; memory: a runtime.lowmem.Strategy to paint with (None: all resident)."""

    pipe = open_pipeline(export, threads=threads, memory=memory)
    feeds: dict[str, list] = {c: [] for c in ALL_COMPONENTS}
    te, unet, dec = pipe.components.text_encoder, pipe.components.unet, pipe.components.vae_decoder

    def text_encoder(ids):
        feeds[TEXT_ENCODER].append({INPUT_IDS: ids})
        return te(ids)

    def recording_unet(x, t, cond):
        feeds[UNET].append({SAMPLE: x, TIMESTEP: t, ENCODER_HIDDEN_STATES: cond})
        return unet(x, t, cond)

    def vae_decoder(z):
        feeds[VAE_DECODER].append({LATENT_SAMPLE: z})
        images = dec(z)
        feeds[VAE_ENCODER].append({SAMPLE: np.clip(images, -1, 1).astype(np.float32)})  # the encoder's inputs: paintings
        return images

    pipe.components.text_encoder, pipe.components.unet, pipe.components.vae_decoder = text_encoder, recording_unet, vae_decoder
    for prompt in prompts:
        for seed in seeds:
            pipe(Request(prompt, steps=steps, seed=seed, guidance=5.0, height=size, width=size))
    return feeds


def record_calibration(export: Path, prompts, seeds, steps: int, threads: int | None = None,
                       size: int | None = None) -> list[dict[str, np.ndarray]]:
    """The U-Net's feeds of `record_feeds`."""
    return record_feeds(export, prompts, seeds, steps, threads, size)["unet"]


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


def candidate_nodes(model, always_float=ALWAYS_FLOAT) -> tuple[list[str], list[str]]:
    """(names of weight layers that may be quantized, names kept float by rule)."""
    consts = {i.name for i in model.graph.initializer}
    allowed, kept = [], []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "MatMul", "Gemm"):
            continue
        if not any(i in consts for i in node.input[1:2]):  # activation × activation (attention scores)
            continue
        (kept if any(f in node.name for f in always_float) else allowed).append(node.name)
    return allowed, kept


def _quantize(src: Path, dst: Path, feeds, nodes: list[str], fmt: dict, fp16_weights: bool = True) -> None:
    import logging

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer warns on the root logger to run its optional pre-processing
    try:
        quantize_static(
            str(src), str(dst), _Feeds(feeds), quant_format=QuantFormat.QDQ if fmt["format"] == "QDQ" else QuantFormat.QOperator,
            op_types_to_quantize=["Conv", "MatMul", "Gemm"], per_channel=True, reduce_range=fmt["reduce_range"],
            activation_type=QuantType.QUInt8 if fmt["activations"] == "uint8" else QuantType.QInt8, weight_type=QuantType.QInt8,
            nodes_to_quantize=nodes, calibrate_method=CalibrationMethod.MinMax, use_external_data_format=_is_large(src),
            # symmetric int8 (TensorRT's form) leaves biases float: TensorRT has no int32 DequantizeLinear
            extra_options={"ActivationSymmetric": fmt["activations"] == "int8", "WeightSymmetric": True,
                           "QuantizeBias": fmt["activations"] == "uint8"},
        )
    finally:
        root.setLevel(level)
    if fp16_weights:
        store_float_weights_fp16(dst)


def store_float_weights_fp16(path: Path, min_elements: int = 1024, skip=frozenset()) -> int:
    """Store the float32 weights left in an int8 graph (layers kept float) as float16 initializers feeding a Cast to
    float32: half the bytes on disk, the same float32 compute (ONNX Runtime folds the Casts when it loads the graph).
    Returns the bytes saved. Graphs with external data, and weights named in `skip`, are left as they are."""
    import onnx
    from onnx import helper, numpy_helper

    if _is_large(path):
        return 0
    model = onnx.load(str(path))
    graph = model.graph
    q_inputs = {i for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") for i in n.input}
    casts, saved = [], 0
    for init in list(graph.initializer):
        if init.data_type != onnx.TensorProto.FLOAT or init.name in q_inputs or init.name in skip:
            continue
        arr = numpy_helper.to_array(init)
        if arr.size < min_elements or not np.all(np.isfinite(arr)) or np.abs(arr).max() >= 65504:
            continue
        half = numpy_helper.from_array(arr.astype(np.float16), init.name + "_fp16")
        graph.initializer.remove(init)
        graph.initializer.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=onnx.TensorProto.FLOAT, name=init.name + "_to_fp32"))
        saved += arr.size * 2
    if casts:
        for node in reversed(casts):
            graph.node.insert(0, node)
        onnx.save(model, str(path))
    return saved


def _is_large(path: Path) -> bool:
    """Models with external data (> 2 GB) must be written with external data again."""
    return any(p.name.startswith(path.name + ".") for p in path.parent.iterdir())


def quantize_int8(src: Path, dst: Path, feeds, fmt: dict | None = None, min_layer_snr_db: float = MIN_LAYER_SNR_DB,
                  probe_feeds: int = 4, always_float=ALWAYS_FLOAT, parts: int | None = None, on_event=lambda e: None) -> dict:
    """int8 QDQ of an fp32 graph at `src` into `dst`: layers whose isolated int8 SNR is below the floor stay float.

    parts: quantize the graph cut into this many parts, one at a time (streamed.py: bounded memory, same result);
    None: whole when its weights are small, else parts of about 256 MB."""
    import onnx

    try:
        import onnxruntime.quantization  # noqa: F401
    except ImportError as e:
        raise ShanshuiError(f"int8 quantization needs onnxruntime's quantization tools ({e.name} is missing)") from None
    if not feeds:
        raise ShanshuiError("no calibration inputs were recorded; give calibration prompts")
    fmt = fmt or int8_format()
    parts = parts_for(src) if parts is None else parts
    snr: dict[str, float] = {}
    kept: list[str] = []

    def choose(path, part_feeds, also=(), sink=None):
        model = onnx.load(str(path), load_external_data=False)
        allowed, by_rule = candidate_nodes(model, always_float)
        del model
        kept.extend(by_rule)
        measured = isolated_layer_snr(path, part_feeds, allowed, probe=probe_feeds, reduce_range=fmt["reduce_range"],
                                      also=also, sink=sink)
        snr.update(measured)
        return [n for n in allowed if measured[n] >= min_layer_snr_db], None

    def quantize_part(path, out, part_feeds, layers, shared):  # a constant in two parts stays as it is in both
        _quantize(path, out, part_feeds, layers, fmt, fp16_weights=False)
        store_float_weights_fp16(out, skip=shared)

    if parts > 1:
        parts = len(quantize_in_parts(src, dst, feeds, parts, choose, quantize_part,
                                      on_part=lambda k, n: on_event(f"part {k + 1} of {n}")))
    else:
        _quantize(src, dst, feeds, choose(src, feeds)[0], fmt)
    sensitive = sorted(n for n, v in snr.items() if v < min_layer_snr_db)
    return {"format": fmt, "calibration_feeds": len(feeds), "quantized_layers": len(snr) - len(sensitive),
            "float_layers_by_rule": kept, "float_layers_by_measurement": sensitive, "parts": parts,
            "min_layer_snr_db": min_layer_snr_db, "layer_snr_db": snr, "snr_measure": "isolated (one layer in int8)"}


def output_quality(ref_path: Path, got_path: Path, feeds, output: str, images: bool) -> float:
    """Worst, over `feeds`, of the candidate's output quality against fp32: image PSNR (images=True, outputs in
    [-1, 1]) or SNR in dB. One session at a time (the fp32 outputs are kept, not the fp32 session)."""
    ref = ort_session(ref_path, small=True)  # SD 1.5's VAE at 512 px: 4.2 GB with ORT's arena
    expected = [ref.run([output], feed)[0] for feed in feeds]
    del ref
    got = ort_session(got_path, small=True)
    worst = float("inf")
    for feed, a in zip(feeds, expected):
        b = got.run([output], feed)[0]
        if images:
            q = min(psnr(x, y) for x, y in zip(to_uint8(a), to_uint8(b)))
        else:
            q = snr_db(a, b)
        worst = min(worst, q)
    return round(float(worst), 2)
