"""Per-layer int8 sensitivity, each layer measured in isolation.

For every candidate layer (Conv / MatMul / Gemm with a constant weight) the fp32 model is run on calibration feeds
with the layer's input exposed. The layer alone is then run twice as a one-node graph: on the fp32 input and
weight, and on their int8 round trips (activation: asymmetric uint8 per tensor over the calibrated MinMax range;
weight: symmetric int8 per output channel, 7-bit with reduce_range) — the same arithmetic the QDQ graph does.
The SNR of the second output against the first, 10·log10(Σ ref² / Σ (ref − q)²) in dB, is that layer's own
error, free of the error that upstream layers would add in a fully quantized graph.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from shanshui.onnxrt import ort_session


def fake_quant_activation(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """uint8 asymmetric round trip over [lo, hi] (widened to contain 0, as ONNX Runtime does)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = (hi - lo) / 255.0 or 1.0
    zero = np.round(-lo / scale)
    q = np.clip(np.round(x / scale) + zero, 0, 255)
    return ((q - zero) * scale).astype(np.float32)


def fake_quant_weight(w: np.ndarray, axis: int, reduce_range: bool = False) -> np.ndarray:
    """int8 symmetric per-channel round trip along `axis` (the output channels)."""
    qmax = 63.0 if reduce_range else 127.0
    other = tuple(i for i in range(w.ndim) if i != axis % w.ndim)
    amax = np.max(np.abs(w), axis=other, keepdims=True)
    scale = np.where(amax > 0, amax / qmax, 1.0)
    return (np.clip(np.round(w / scale), -qmax, qmax) * scale).astype(np.float32)


def weight_axis(node) -> int:
    """Output-channel axis of a layer's weight: Conv (O, I, kh, kw) → 0; MatMul (K, N) → 1; Gemm by transB."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return -1


def _single_node_model(node, weights: dict[str, np.ndarray], opset: int):
    """A graph holding just `node`: input 0 is a graph input, its constant inputs are initializers."""
    import onnx
    from onnx import helper, numpy_helper

    x = helper.make_tensor_value_info(node.input[0], onnx.TensorProto.FLOAT, None)
    y = helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, None)
    inits = [numpy_helper.from_array(weights[n], n) for n in node.input[1:] if n]
    graph = helper.make_graph([node], "layer", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _session(model: bytes | str, keep_all: bool = False):
    return ort_session(model, optimize=not keep_all)  # keep_all: every tensor stays addressable


def layer_inputs(model_path: Path, feeds: list[dict], nodes: list[str], keep: set[int]) -> tuple[dict, dict]:
    """Run the fp32 model on `feeds`; returns ({tensor: (min, max)} over all feeds, {tensor: [arrays of feeds in `keep`]})."""
    import onnx

    model = onnx.load(str(model_path))
    by_name = {n.name: n for n in model.graph.node}
    names = sorted({by_name[n].input[0] for n in nodes})
    graph_inputs = {i.name for i in model.graph.input}
    have = {o.name for o in model.graph.output}
    for n in names:
        if n not in have and n not in graph_inputs:
            model.graph.output.append(onnx.ValueInfoProto(name=n))
    with tempfile.TemporaryDirectory(prefix="shanshui-sensitivity-") as tmp:
        from google.protobuf.message import EncodeError

        try:
            sess = _session(model.SerializeToString(), keep_all=True)
        except EncodeError:  # protobuf cannot hold > 2 GB: go through a file with external data
            path = Path(tmp) / "model.onnx"
            onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="model.onnx.data")
            sess = _session(str(path), keep_all=True)
        del model
        fetch = [n for n in names if n not in graph_inputs]
        ranges: dict[str, tuple[float, float]] = {}
        kept: dict[str, list[np.ndarray]] = {n: [] for n in names}
        for i, feed in enumerate(feeds):
            values = dict(zip(fetch, sess.run(fetch, feed)))
            values.update({n: feed[n] for n in names if n in graph_inputs})
            for n, v in values.items():
                lo, hi = float(v.min()), float(v.max())
                old = ranges.get(n, (lo, hi))
                ranges[n] = (min(old[0], lo), max(old[1], hi))
                if i in keep:
                    kept[n].append(v)
    return ranges, kept


def isolated_layer_snr(model_path: Path, feeds: list[dict], nodes: list[str], probe: int = 4,
                       reduce_range: bool = False) -> dict[str, float]:
    """{layer name: SNR in dB of that layer alone in int8 against fp32}; ranges from all feeds, error on `probe` of them
    spread evenly over the list (feeds are in sampling order, so this spans noise levels and prompts)."""
    import onnx
    from onnx import numpy_helper

    keep = {int(i) for i in np.linspace(0, len(feeds) - 1, min(probe, len(feeds)))}
    ranges, kept = layer_inputs(model_path, feeds, nodes, keep)
    model = onnx.load(str(model_path))
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    by_name = {n.name: n for n in model.graph.node}
    needed = {i for n in nodes for i in by_name[n].input[1:] if i}
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if i.name in needed}
    del model
    snr = {}
    for name in nodes:
        node = by_name[name]
        w_name = node.input[1]
        qweights = dict(weights)
        qweights[w_name] = fake_quant_weight(weights[w_name], weight_axis(node), reduce_range)
        ref_sess = _session(_single_node_model(node, weights, opset).SerializeToString())
        q_sess = _session(_single_node_model(node, qweights, opset).SerializeToString())
        lo, hi = ranges[node.input[0]]
        sig = err = 0.0
        for x in kept[node.input[0]]:
            ref = ref_sess.run(None, {node.input[0]: x})[0].astype(np.float64)
            got = q_sess.run(None, {node.input[0]: fake_quant_activation(x, lo, hi)})[0]
            sig += float(np.sum(ref ** 2))
            err += float(np.sum((ref - got) ** 2))
        snr[name] = float("inf") if err == 0 else round(float(10 * np.log10(max(sig, 1e-30) / err)), 2)
    return snr
