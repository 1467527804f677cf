"""int8 in bounded memory: the graph quantized part by part (streamed.py) is the whole-graph result."""

import numpy as np
import pytest

from shanshui.metrics import snr_db


@pytest.fixture(scope="module")
def unet_feeds(tiny_export):
    from shanshui.quantize.int8 import record_feeds

    return record_feeds(tiny_export, ("水墨山水，江上渔舟", "a pine above a misty river"), (0,), 3)["unet"]


def test_quantizing_in_parts_gives_the_whole_graph_result(tiny_export, unet_feeds, tmp_path):
    import onnx

    from shanshui.onnxrt import ort_session
    from shanshui.quantize.int8 import quantize_int8

    src = tiny_export / "unet" / "model.onnx"
    whole = quantize_int8(src, tmp_path / "whole.onnx", unet_feeds, parts=1)
    parted = quantize_int8(src, tmp_path / "parts.onnx", unet_feeds, parts=3)
    assert parted["parts"] == 3 and whole["parts"] == 1
    assert parted["layer_snr_db"].keys() == whole["layer_snr_db"].keys()
    for name, value in whole["layer_snr_db"].items():  # the same fp32 inputs reach every layer
        assert parted["layer_snr_db"][name] == pytest.approx(value, abs=0.05), name
    assert parted["quantized_layers"] == whole["quantized_layers"] > 0
    onnx.checker.check_model(str(tmp_path / "parts.onnx"), full_check=True)
    from collections import Counter
    kinds = lambda m: Counter(n.op_type for n in onnx.load(str(m)).graph.node)  # noqa: E731
    extra = kinds(tmp_path / "parts.onnx") - kinds(tmp_path / "whole.onnx")
    assert not kinds(tmp_path / "whole.onnx") - kinds(tmp_path / "parts.onnx")
    assert set(extra) <= {"QuantizeLinear", "DequantizeLinear"}  # a tensor handed between parts, quantized in both
    ref, a, b = (ort_session(p) for p in (src, tmp_path / "whole.onnx", tmp_path / "parts.onnx"))
    for feed in unet_feeds[::4]:
        r, x, y = (s.run(None, feed)[0] for s in (ref, a, b))
        assert snr_db(x, y) > 60  # the same graph up to float summation order: tolerance 60 dB
        assert abs(snr_db(r, y) - snr_db(r, x)) < 0.1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parts.onnx", "whole.onnx"]  # no work files left


def test_large_graphs_are_cut_and_small_ones_are_not(tiny_export, monkeypatch):
    import shanshui.quantize.streamed as streamed

    src = tiny_export / "unet" / "model.onnx"
    total = streamed.weight_bytes(src)
    assert 0.9 * src.stat().st_size < total <= src.stat().st_size
    assert streamed.parts_for(src) == 1
    monkeypatch.setattr(streamed, "LARGE_BYTES", total // 2)
    assert streamed.parts_for(src, part_bytes=total // 5 + 1) == 5


def test_part_feeds_read_one_feed_at_a_time(tmp_path):
    from shanshui.quantize.streamed import PartFeeds, _Store

    store = _Store(tmp_path / "s")
    for i in range(3):
        store.put(i, {"/down/skip:0": np.full((2, 2), i, np.float32), "shape": np.array(i, np.int64)})
    feeds = PartFeeds([{"sample": np.zeros(1) + i} for i in range(3)], store, ["sample", "/down/skip:0"])
    assert feeds.store.get(1, "shape").shape == ()  # a rank-0 tensor stays rank 0
    assert len(feeds) == 3 and float(feeds[2]["/down/skip:0"][0, 0]) == 2.0 and float(feeds[1]["sample"][0]) == 1
    with pytest.raises(IndexError):
        feeds[3]
    store.drop("/down/skip:0", 3)
    store.drop("shape", 3)
    assert not list((tmp_path / "s").iterdir())


def test_weights_are_read_from_hard_linked_files_and_not_from_outside_the_folder(tmp_path):
    import os

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from shanshui.errors import ShanshuiError
    from shanshui.export.external import load_with_weights as load_with_data

    w = np.arange(4096, dtype=np.float32).reshape(64, 64)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [numpy_helper.from_array(w, "w")])
    (tmp_path / "a").mkdir()
    onnx.save(helper.make_model(graph), str(tmp_path / "a" / "m.onnx"), save_as_external_data=True, location="m.data",
              size_threshold=0)
    os.link(tmp_path / "a" / "m.data", tmp_path / "m.data.link")  # as split and low-memory exports share weights
    got = load_with_data(tmp_path / "a" / "m.onnx")
    assert np.array_equal(numpy_helper.to_array(got.graph.initializer[0]), w)
    model = onnx.load(str(tmp_path / "a" / "m.onnx"), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = "../m.data.link"
    onnx.save(model, str(tmp_path / "a" / "escape.onnx"))
    with pytest.raises(ShanshuiError, match="outside its model folder"):
        load_with_data(tmp_path / "a" / "escape.onnx")


def _padded_conv_model():
    """x → Pad (amounts computed from constants, as torch exports F.pad) → Conv → fused attention → Add: the chain that
    stopped shape inference in SD's VAE encoder and in U-Nets with ONNX Runtime's MultiHeadAttention."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    const = lambda name, v: helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(v, np.int64)))  # noqa: E731
    nodes = [
        const("n", [4]), const("head", [0, 1, 0, 1]), const("shape", [-1, 2]), const("s0", [-(2**62)]), const("s1", [-1]),
        const("ax", [0]), const("st", [-1]), const("flat", [-1]),
        helper.make_node("ConstantOfShape", ["n"], ["zeros"], value=numpy_helper.from_array(np.array([0], np.int64))),
        helper.make_node("Concat", ["head", "zeros"], ["cat"], axis=0),
        helper.make_node("Reshape", ["cat", "shape"], ["pairs"]),
        helper.make_node("Slice", ["pairs", "s1", "s0", "ax", "st"], ["rev"]),  # reversed, as torch orders pads
        helper.make_node("Transpose", ["rev"], ["t"], perm=[1, 0]),
        helper.make_node("Reshape", ["t", "flat"], ["pads"]),
        helper.make_node("Pad", ["x", "pads"], ["padded"], mode="constant"),
        helper.make_node("Conv", ["padded", "w"], ["y"], kernel_shape=[3, 3], strides=[2, 2]),
        helper.make_node("Reshape", ["y", "tokens"], ["q"]),
        helper.make_node("MultiHeadAttention", ["q", "q", "q"], ["att"], domain="com.microsoft", num_heads=2),
        helper.make_node("Add", ["att", "q"], ["out"]),
        helper.make_node("Sigmoid", ["out"], ["final"]),
    ]
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 4, 3, 3)).astype(np.float32), "w")
    tokens = numpy_helper.from_array(np.array([2, -1, 8], np.int64), "tokens")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4, "h", "w"])],
                              [helper.make_tensor_value_info("final", TensorProto.FLOAT, None)], [w, tokens])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def test_tensor_sizes_are_known_past_pads_computed_from_constants_and_fused_attention():
    import onnx

    from shanshui.export.split import activation_bytes
    from shanshui.onnxrt import ort_session

    model = _padded_conv_model()
    x = np.zeros((2, 4, 31, 31), np.float32)
    made = activation_bytes(model, {"x": x})
    names = ["padded", "y", "q", "att", "out"]  # after the pad, the attention's output and the residual after it
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    got = dict(zip(names, ort_session(exposed.SerializeToString(), optimize=False).run(names, {"x": x})))
    assert got["padded"].shape == (2, 4, 32, 32) and got["att"].shape == (2, 225, 8)  # pads (0, 1) on H and W
    for name in names:  # the bytes ONNX Runtime makes, known before anything runs
        assert made.get(name) == got[name].nbytes, name
