"""Per-layer int8 sensitivity, each layer measured in isolation.

For every candidate layer (Conv / MatMul / Gemm with a constant weight) the fp32 model is run on calibration feeds
with the layer's input exposed. The layer alone is then run twice as a one-node graph: on the fp32 input and
weight, and on their int8 round trips (activation: asymmetric uint8 per tensor over the calibrated MinMax range;
weight: symmetric int8 per output channel, 7-bit with reduce_range) — the same arithmetic the QDQ graph does.
The SNR of the second output against the first, 10·log10(Σ ref² / Σ (ref − q)²) in dB, is that layer's own
error, free of the error that upstream layers would add in a fully quantized graph.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shanshui.onnxrt import ort_session
from shanshui.export.external import load_with_weights


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
    return ort_session(model, optimize=not keep_all, small=keep_all)  # keep_all: every tensor stays addressable


def _exposed_session(model_path: Path, names: list[str]):
    """A session of the model at `model_path` with the tensors `names` added to its outputs.

    Weights held in external files are not loaded here: the changed graph is written beside the model (so its
    relative weight locations resolve) and ONNX Runtime reads the weights once. Inline graphs go as bytes."""
    import onnx

    model_path = Path(model_path)
    model = onnx.load(str(model_path), load_external_data=False)
    have = {o.name for o in model.graph.output} | {i.name for i in model.graph.input}
    for n in names:
        if n not in have:
            model.graph.output.append(onnx.ValueInfoProto(name=n))
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        path = model_path.with_name(f".{model_path.stem}.exposed.onnx")
        onnx.save_model(model, str(path))
        try:
            return _session(str(path), keep_all=True)
        finally:
            path.unlink(missing_ok=True)
    return _session(model.SerializeToString(), keep_all=True)  # an inline graph is under protobuf's 2 GB


class _Accumulator:
    """Σ ref² and Σ (ref − q)² of one layer alone in fp32 and in int8, over the probe feeds. Its two one-layer
    sessions are made for each feed and dropped after it, so at most one layer's copies are resident."""

    def __init__(self, node, weights: dict, opset: int, reduce_range: bool):
        self.node, self.weights, self.opset, self.reduce_range = node, weights, opset, reduce_range
        self.name, self.sig, self.err = node.input[0], 0.0, 0.0

    def add(self, x: np.ndarray, lo: float, hi: float) -> None:
        node, weights = self.node, self.weights
        qweights = dict(weights)
        qweights[node.input[1]] = fake_quant_weight(weights[node.input[1]], weight_axis(node), self.reduce_range)
        ref_sess = _session(_single_node_model(node, weights, self.opset).SerializeToString())
        q_sess = _session(_single_node_model(node, qweights, self.opset).SerializeToString())
        ref = ref_sess.run(None, {self.name: x})[0].astype(np.float64)
        got = q_sess.run(None, {self.name: fake_quant_activation(x, lo, hi)})[0]
        self.sig += float(np.sum(ref ** 2))
        self.err += float(np.sum((ref - got) ** 2))

    def snr(self) -> float:
        return float("inf") if self.err == 0 else round(float(10 * np.log10(max(self.sig, 1e-30) / self.err)), 2)


def isolated_layer_snr(model_path: Path, feeds, nodes: list[str], probe: int = 4, reduce_range: bool = False,
                       also: tuple[str, ...] = (), sink=None) -> dict[str, float]:
    """{layer name: SNR in dB of that layer alone in int8 against fp32}; ranges from all feeds, error on `probe` of them
    spread evenly over the list (feeds are in sampling order, so this spans noise levels and prompts).

    Streams: one pass over the feeds reduces every layer input to its (min, max) and keeps nothing; the probe
    feeds are then run again one at a time and each layer's error is accumulated at once. So the memory held is one
    feed's layer inputs, whatever the number of feeds. `feeds` is any sequence (it may load each feed on access).
    `also`: more tensors fetched in the first pass and handed to `sink(i, {name: array})`, feed by feed."""
    from onnx import numpy_helper

    keep = sorted({int(i) for i in np.linspace(0, len(feeds) - 1, min(probe, len(feeds)))})
    model = load_with_weights(model_path)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    by_name = {n.name: n for n in model.graph.node}
    graph_inputs = {i.name for i in model.graph.input}
    needed = {i for n in nodes for i in by_name[n].input[1:] if i}
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if i.name in needed}
    del model
    names = sorted({by_name[n].input[0] for n in nodes})
    fetch = [n for n in names if n not in graph_inputs]
    extra = [n for n in also if n not in fetch and n not in graph_inputs]
    ranges: dict[str, tuple[float, float]] = {}
    sess = _exposed_session(Path(model_path), fetch + extra)
    for i in range(len(feeds)):
        feed = feeds[i]
        values = dict(zip(fetch + extra, sess.run(fetch + extra, feed)))
        values.update({n: feed[n] for n in set(names) | set(also) if n in graph_inputs})
        for n in names:
            lo, hi = float(values[n].min()), float(values[n].max())
            old = ranges.get(n, (lo, hi))
            ranges[n] = (min(old[0], lo), max(old[1], hi))
        if sink is not None:
            sink(i, {n: values[n] for n in also})
        del values, feed
    acc = {name: _Accumulator(by_name[name], weights, opset, reduce_range) for name in nodes}
    for i in keep:
        feed = feeds[i]
        values = dict(zip(fetch, sess.run(fetch, feed)))
        values.update({n: feed[n] for n in names if n in graph_inputs})
        for name in nodes:
            x = values[by_name[name].input[0]]
            acc[name].add(x, *ranges[by_name[name].input[0]])
        del values, feed
    return {name: a.snr() for name, a in acc.items()}
