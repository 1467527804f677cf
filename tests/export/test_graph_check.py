"""Every written ONNX graph passes onnx.checker's full check; the topological sort that fp16 graphs need."""

import numpy as np
import pytest

from shanshui.errors import ShanshuiError
from shanshui.export.graph_check import check_onnx, topological_sort

COMPONENTS = ("text_encoder", "unet", "vae_decoder", "vae_encoder")


def test_fp32_export_passes_the_full_checker(tiny_export):
    import onnx

    for comp in COMPONENTS:
        onnx.checker.check_model(str(tiny_export / comp / "model.onnx"), full_check=True)


def _chain(order):
    """x -> Relu(a) -> Neg(b) -> Abs(y), with the nodes listed in `order`."""
    from onnx import TensorProto, helper

    nodes = {"a": helper.make_node("Relu", ["x"], ["a"], name="a"), "b": helper.make_node("Neg", ["a"], ["b"], name="b"),
             "y": helper.make_node("Abs", ["b"], ["y"], name="y")}
    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [2])  # noqa: E731
    graph = helper.make_graph([nodes[k] for k in order], "g", [vi("x")], [vi("y")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_topological_sort_repairs_an_unsorted_graph_and_keeps_a_sorted_one(tmp_path):
    import onnx
    from onnx.reference import ReferenceEvaluator

    model = _chain(["y", "a", "b"])  # the converter's pattern: a node listed before its producer
    with pytest.raises(onnx.checker.ValidationError, match="topologically sorted"):
        onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(tmp_path / "model.onnx"))
    with pytest.raises(ShanshuiError, match="fails onnx.checker"):
        check_onnx(tmp_path / "model.onnx")
    assert topological_sort(model.graph) is True
    assert [n.name for n in model.graph.node] == ["a", "b", "y"]
    onnx.checker.check_model(model, full_check=True)
    x = np.array([-1.5, 2.0], dtype=np.float32)
    np.testing.assert_array_equal(ReferenceEvaluator(model).run(None, {"x": x})[0], np.abs(-np.maximum(x, 0)))
    sorted_model = _chain(["a", "b", "y"])
    assert topological_sort(sorted_model.graph) is False


def test_a_cycle_is_an_error():
    from onnx import TensorProto, helper

    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [2])  # noqa: E731
    graph = helper.make_graph([helper.make_node("Add", ["x", "b"], ["a"]), helper.make_node("Neg", ["a"], ["b"])],
                              "g", [vi("x")], [vi("b")])
    with pytest.raises(ShanshuiError, match="cycle"):
        topological_sort(graph)
