"""Fused attention: every decomposed attention of the tiny U-Net becomes one MultiHeadAttention, the outputs agree."""

import numpy as np
import pytest

from shanshui.errors import ShanshuiError
from shanshui.export.attention import fuse_attention, fuse_export
from shanshui.metrics import psnr
from shanshui.runtime.lowmem import NORMAL, footprint
from shanshui.runtime.pipeline import Request, open_pipeline


@pytest.fixture(scope="module")
def fused(tiny_export, tmp_path_factory):
    out = tmp_path_factory.mktemp("fused") / "tiny-mha"
    return out, fuse_export(tiny_export, out)


def test_every_attention_is_fused_and_agrees(fused, tiny_export):
    import onnx

    out, manifest = fused
    att = manifest["components"]["unet"]["attention"]
    softmaxes = sum(n.op_type == "Softmax" for n in onnx.load(str(tiny_export / "unet" / "model.onnx")).graph.node)
    graph = onnx.load(str(out / "unet" / "model.onnx")).graph
    ops = [n.op_type for n in graph.node]
    # the tiny U-Net: 11 self- + 11 cross-attentions; its pooled text embedding (an Einsum attention) stays as is
    assert att["fused"] == ops.count("MultiHeadAttention") == 22 and ops.count("Softmax") == softmaxes - 22
    assert att["check_max_abs_diff"] < 1e-4  # U-Net output, fp32, latent 32² (measured 1e-6)


def test_fused_export_paints_the_same_image(fused, tiny_export):
    req = Request("一棵青松，青山环绕", steps=3, seed=4)
    a = open_pipeline(tiny_export, threads=2)(req).images[0]
    b = open_pipeline(fused[0], threads=2)(req).images[0]
    assert psnr(a, b) >= 60.0


def test_estimate_drops_the_attention_scores(fused, tiny_export):
    from shanshui.spec.manifest import read_manifest

    plain = footprint(tiny_export, read_manifest(tiny_export), NORMAL, 512, 512, 1)["stages_mb"]["unet"]
    fast = footprint(fused[0], fused[1], NORMAL, 512, 512, 1)["stages_mb"]["unet"]
    assert fast < plain


def test_nothing_to_fuse_is_left_alone():
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    model = helper.make_model(g)
    assert fuse_attention(model) == 0 and [n.op_type for n in model.graph.node] == ["Softmax"]


def test_existing_output_is_refused(fused, tiny_export):
    with pytest.raises(ShanshuiError, match="already exists"):
        fuse_export(tiny_export, fused[0])
