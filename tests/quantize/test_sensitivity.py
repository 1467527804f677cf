"""Isolated per-layer int8 error: the fake-quant arithmetic, and that a layer fed outliers measures worse."""

import numpy as np
import pytest

from shanshui.quantize.sensitivity import fake_quant_activation, fake_quant_weight, isolated_layer_snr


def test_fake_quant_weight_is_per_channel_and_within_half_a_step():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32) * np.arange(1, 9, dtype=np.float32)[:, None, None, None]
    q = fake_quant_weight(w, axis=0)
    step = np.abs(w).reshape(8, -1).max(1) / 127  # one scale per output channel
    assert np.all(np.abs(q - w).reshape(8, -1).max(1) <= step / 2 + 1e-7)
    assert len(np.unique(np.round(q[0] / step[0]))) <= 255
    q7 = fake_quant_weight(w, axis=0, reduce_range=True)  # 7-bit: coarser, so larger error
    assert np.abs(q7 - w).mean() > np.abs(q - w).mean()


def test_fake_quant_activation_keeps_zero_exact_and_clips_to_range():
    x = np.array([-1.0, 0.0, 0.5, 3.0, 10.0], np.float32)
    q = fake_quant_activation(x, -1.0, 3.0)
    assert q[1] == 0.0  # zero is representable (the zero point is an integer)
    assert q[-1] == pytest.approx(3.0, abs=4 / 255)  # beyond the calibrated range: clipped
    assert np.all(np.abs(q[:4] - x[:4]) <= 4 / 255 / 2 + 1e-6)


def _two_layer_model(path):
    """x → conv_a → y;  x·50 at one pixel → conv_b → z: conv_b's input has a huge outlier, so its int8 error is large."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    mask = np.ones((1, 4, 16, 16), np.float32)
    mask[0, 0, 3, 3] = 50.0
    nodes = [
        helper.make_node("Conv", ["x", "wa"], ["y"], name="conv_a", pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["x", "mask"], ["xo"], name="outlier"),
        helper.make_node("Conv", ["xo", "wb"], ["z"], name="conv_b", pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None), helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "wa"), numpy_helper.from_array(w.copy(), "wb"), numpy_helper.from_array(mask, "mask")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_isolated_snr_singles_out_the_layer_with_outlier_inputs(tmp_path):
    _two_layer_model(tmp_path / "m.onnx")
    rng = np.random.default_rng(2)
    feeds = [{"x": rng.standard_normal((1, 4, 16, 16)).astype(np.float32)} for _ in range(6)]
    snr = isolated_layer_snr(tmp_path / "m.onnx", feeds, ["conv_a", "conv_b"], probe=3)
    assert snr["conv_a"] > 30  # a plain conv in int8: ~35–40 dB
    assert snr["conv_b"] < snr["conv_a"] - 10  # the outlier stretches the activation scale


def test_float_weights_left_in_an_int8_graph_are_stored_fp16(tmp_path):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from shanshui.quantize.int8 import store_float_weights_fp16

    rng = np.random.default_rng(3)
    w = rng.standard_normal((64, 32)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 64])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.ones(4, np.float32), "small")],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = rng.standard_normal((4, 64)).astype(np.float32)
    before = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    size = path.stat().st_size
    assert store_float_weights_fp16(path) == w.size * 2
    model = onnx.load(str(path))
    kinds = {i.name: i.data_type for i in model.graph.initializer}
    assert kinds == {"w_fp16": TensorProto.FLOAT16, "small": TensorProto.FLOAT}  # small tensors are not worth it
    assert model.graph.node[0].op_type == "Cast" and path.stat().st_size < size - w.size
    after = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.abs(after - before).max() <= 1e-3 * np.abs(before).max()  # fp16 weight rounding only
