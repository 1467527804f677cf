"""Weights beside the graph (`shanshui lowmem --external-weights`): the same images, a smaller load peak, and the
source export untouched."""

import json
import subprocess
import sys

from shanshui.export.external import externalize_export, inline_bytes
from shanshui.integrity import sha256_file
from shanshui.metrics import psnr
from shanshui.runtime.pipeline import Request, open_pipeline
from shanshui.spec.folders import default_model_dir

PEAK = """
import sys, onnxruntime as ort
from shanshui.runtime.ort_memory import session_options
s = ort.InferenceSession(sys.argv[1], session_options("unet", 1, True), providers=["CPUExecutionProvider"])
print(int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) // 1024)
"""


def _load_peak_mb(path) -> int:
    return int(subprocess.run([sys.executable, "-c", PEAK, str(path)], capture_output=True, text=True, check=True).stdout)


def test_external_weights_paint_the_same_image_and_leave_the_source_alone(tmp_path):
    src = default_model_dir()
    before = sha256_file(src / "unet" / "model.onnx")
    manifest, moved = externalize_export(src, tmp_path / "ext", min_bytes=1024)
    out = tmp_path / "ext"
    assert set(moved) == set(manifest["components"])  # every component had inline weights
    for name, entry in manifest["components"].items():
        assert set(entry["files"]) == {"model.onnx", "model.onnx.data"}
        left = inline_bytes(out / name / "model.onnx")  # tensors under 1 KB (scales, zero points) stay inline
        assert left < 0.05 * inline_bytes(src / name / "model.onnx"), (name, left)
        assert entry["sha256"]["model.onnx.data"] == sha256_file(out / name / "model.onnx.data")
    assert sha256_file(src / "unet" / "model.onnx") == before  # the hard link was replaced, not written through
    assert json.loads((out / "shanshui_manifest.json").read_text(encoding="utf-8"))["components"] == manifest["components"]
    assert not list(tmp_path.glob(".*"))
    req = Request("一棵青松，青山环绕", steps=2, seed=4, height=128, width=128)
    assert psnr(open_pipeline(out, threads=2)(req).images[0], open_pipeline(src, threads=2)(req).images[0]) == float("inf")


def test_external_weights_lower_the_load_peak(tmp_path):
    """The inline graph is parsed into memory and its weights copied out: the peak holds both. Measured on the
    shipped int8 U-Net (17 MB of weights): 102 → 86 MB; at least half the weight file is asserted."""
    src = default_model_dir()
    externalize_export(src, tmp_path / "ext")
    data_mb = (tmp_path / "ext" / "unet" / "model.onnx.data").stat().st_size / 2**20
    inline, external = _load_peak_mb(src / "unet" / "model.onnx"), _load_peak_mb(tmp_path / "ext" / "unet" / "model.onnx")
    assert inline - external >= 0.5 * data_mb, (inline, external, data_mb)


def _hard_linked_graph(tmp_path):
    """A one-MatMul graph whose weights live in a data file that a second folder also links (as `shanshui lowmem`
    and the bench cache link weight files)."""
    import os

    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(64 * 64, dtype=np.float32).reshape(64, 64) / 4096, "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [w])
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "a" / "model.onnx"),
                    save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    for f in ("model.onnx", "model.onnx.data"):
        os.link(tmp_path / "a" / f, tmp_path / "b" / f)
    return tmp_path / "a" / "model.onnx", numpy_helper.to_array(w)


def test_weights_in_a_hard_linked_file_are_read(tmp_path):
    """onnx's loader refuses a weight file with two links ('potential hardlink attack'); our reader does not, and
    keeps locations inside the folder (tests/quantize/test_int8_parts.py). fp16 conversion and externalizing read
    through it: the fp16 fallback of a bounded int8 quantize failed on the quantizer's own hard-linked copy."""
    import numpy as np
    import onnx
    import pytest
    from onnx import numpy_helper

    from shanshui.export.external import externalize_file, load_with_weights
    from shanshui.quantize.fp16 import convert_fp16

    path, w = _hard_linked_graph(tmp_path)
    with pytest.raises(Exception, match="hard link"):
        onnx.load(str(path))
    model = load_with_weights(path)
    assert np.array_equal(numpy_helper.to_array(model.graph.initializer[0]), w)
    convert_fp16(path, tmp_path / "fp16.onnx")
    half = onnx.load(str(tmp_path / "fp16.onnx"))
    assert np.allclose(numpy_helper.to_array(half.graph.initializer[0]).astype(np.float32), w, atol=1e-3)
    (tmp_path / "c").mkdir()
    assert externalize_file(path, tmp_path / "c" / "model.onnx") == ["model.onnx", "model.onnx.data"]
