"""shanshui opens ONNX diffusion folders it did not write (Optimum's layout: no manifest of ours)."""

import json
import shutil

import numpy as np
import pytest

from shanshui.runtime.pipeline import Request, open_pipeline
from tests.peers import optimum_python, run_in_peer


def test_a_folder_without_our_manifest_opens_and_paints_the_same(tiny_export, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(tiny_export, plain)
    (plain / "shanshui_manifest.json").unlink()
    req = Request("一棵青松", steps=3, seed=4)
    ours, theirs = open_pipeline(tiny_export), open_pipeline(plain)
    assert theirs.dims == ours.dims and theirs.default_size == ours.default_size
    assert theirs.components.has_encoder
    np.testing.assert_array_equal(ours(req).images[0], theirs(req).images[0])


def test_int32_ids_and_integer_timesteps_are_fed_as_the_graph_declares(tiny_export, tmp_path):
    """Optimum's text encoder takes int32 ids; the backend casts to each graph's declared input types."""
    import onnx

    plain = tmp_path / "plain"
    shutil.copytree(tiny_export, plain)
    (plain / "shanshui_manifest.json").unlink()
    model = onnx.load(str(plain / "text_encoder" / "model.onnx"))
    for node in model.graph.node:
        names = ["input_ids_i64" if n == "input_ids" else n for n in node.input]
        del node.input[:]
        node.input.extend(names)
    model.graph.node.insert(0, onnx.helper.make_node("Cast", ["input_ids"], ["input_ids_i64"], to=onnx.TensorProto.INT64))
    model.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.INT32
    onnx.save(model, str(plain / "text_encoder" / "model.onnx"))
    pipe = open_pipeline(plain)
    assert pipe.components.dtypes[("text_encoder", "input_ids")] == np.int32
    np.testing.assert_array_equal(open_pipeline(tiny_export)(Request("pine", steps=2)).images[0],
                                  pipe(Request("pine", steps=2)).images[0])


@pytest.mark.skipif(optimum_python() is None, reason="needs the Optimum venv (SHANSHUI_OPTIMUM_PYTHON)")
def test_optimum_export_of_the_same_model_paints_what_our_export_paints(tiny_model, tiny_export, tmp_path):
    out = tmp_path / "optimum"
    run_in_peer("import sys, json\nfrom optimum.exporters.onnx import main_export\n"
                "main_export(sys.argv[1], sys.argv[2], task='text-to-image', no_post_process=True)\nprint(json.dumps({}))",
                str(tiny_model), str(out), timeout=1200)
    assert not (out / "shanshui_manifest.json").exists()
    req = Request("一棵青松，青山环绕", steps=4, seed=1)
    a, b = open_pipeline(tiny_export)(req).images[0], open_pipeline(out)(req).images[0]
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    assert mse == 0 or 10 * np.log10(255**2 / mse) >= 40
    json.loads((out / "model_index.json").read_text())
