"""int8 QDQ on the tiny random model: where Q/DQ nodes go, deterministic calibration, measured exclusions, the gate."""

import json

import pytest

from shanshui.spec.manifest import MANIFEST
from shanshui.quantize.convert import quantize_export


@pytest.fixture(scope="module")
def int8_export(tiny_export, tmp_path_factory):
    import shanshui.quantize.convert as q
    import shanshui.quantize.gate as gate

    mp = pytest.MonkeyPatch()
    mp.setattr(q, "CALIBRATION_PROMPTS", ("水墨山水，江上渔舟", "a pine above a misty river"))
    mp.setattr(q, "CALIBRATION_STEPS", 4)
    mp.setattr(gate, "GATE_PROMPTS", ("一棵青松，青山环绕，云雾缭绕",))
    mp.setattr(gate, "GATE_SEEDS", (0,))
    out = tmp_path_factory.mktemp("q8") / "int8"
    quantize_export(tiny_export, out, "int8")
    mp.undo()
    return out


def _qdq_consumers(model):
    """Names of nodes that read a DequantizeLinear output (i.e. run on quantized inputs)."""
    dq_out = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name for n in model.graph.node if any(i in dq_out for i in n.input)}


def test_qdq_where_intended_and_not_where_excluded(int8_export):
    import onnx

    m = json.loads((int8_export / MANIFEST).read_text())
    info = m["quantization"]["unet"]
    model = onnx.load(str(int8_export / "unet" / "model.onnx"))
    quantized = _qdq_consumers(model)
    excluded = set(info["float_layers_by_rule"]) | set(info["float_layers_by_measurement"])
    assert info["quantized_layers"] > 0
    assert len(quantized & {n.name for n in model.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")}) == info["quantized_layers"]
    assert not quantized & excluded, sorted(quantized & excluded)[:5]
    assert any("/conv_in/" in n for n in info["float_layers_by_rule"])
    # each resnet's projection of the time embedding stays float (in int8 it flipped a picture's format)
    projections = {n.name for n in model.graph.node if "/time_emb_proj/" in n.name and n.op_type == "Gemm"}
    assert projections and projections <= set(info["float_layers_by_rule"]) and not projections & quantized
    assert not {n.name for n in model.graph.node if n.op_type == "Softmax"} & quantized  # softmax stays float
    # text encoder and VAE decoder: int8 exactly when their measured output quality clears the floor, else fp16
    for comp in ("text_encoder", "vae_decoder"):
        q = m["quantization"][comp]
        assert q["precision"] == ("int8" if q["output_quality"]["int8"] >= q["output_quality"]["floor"] else "fp16"), q
    assert m["gate"]["passed"]
    assert m["gate"]["floors"] == {"psnr_db": 25.0, "ssim": 0.85}
    assert info["format"]["format"] == "QDQ" and info["format"]["weights"] == "int8 per-channel"


def test_exclusions_follow_the_measured_layer_error(int8_export):
    info = json.loads((int8_export / MANIFEST).read_text())["quantization"]["unet"]
    snr = info["layer_snr_db"]
    assert set(info["float_layers_by_measurement"]) == {n for n, v in snr.items() if v < info["min_layer_snr_db"]}


def test_calibration_is_deterministic(tiny_export):
    from shanshui.quantize.int8 import record_calibration

    a = record_calibration(tiny_export, ("青山",), (3,), 3)
    b = record_calibration(tiny_export, ("青山",), (3,), 3)
    assert len(a) == 3 and all(x["sample"].shape[0] == 2 for x in a)  # both guidance branches in every feed
    assert all((x[k] == y[k]).all() for x, y in zip(a, b) for k in x)


def test_tensorrt_target_gives_the_symmetric_int8_form_tensorrt_builds(int8_export, tiny_export, tmp_path, monkeypatch):
    import shanshui.quantize.convert as q
    from shanshui.engines.build import check_qdq_for_tensorrt
    from shanshui.errors import ShanshuiError

    with pytest.raises(ShanshuiError, match="--int8-target tensorrt"):  # the default (CPU) form has uint8 zero points
        check_qdq_for_tensorrt(int8_export / "unet" / "model.onnx")
    monkeypatch.setattr(q, "CALIBRATION_PROMPTS", ("水墨山水",))
    monkeypatch.setattr(q, "CALIBRATION_STEPS", 2)
    m = quantize_export(tiny_export, tmp_path / "trt", "int8", check=False, int8_target="tensorrt")
    assert m["quantization"]["unet"]["format"]["activations"] == "int8"
    check_qdq_for_tensorrt(tmp_path / "trt" / "unet" / "model.onnx")  # raises if any Q/DQ is not symmetric int8


def test_int8_graphs_pass_the_full_checker(int8_export):
    import json

    import onnx

    from shanshui.spec.manifest import MANIFEST

    m = json.loads((int8_export / MANIFEST).read_text())
    for comp, entry in m["components"].items():
        onnx.checker.check_model(str(int8_export / entry["file"]), full_check=True)


def test_bounded_memory_int8_matches_the_normal_conversion(int8_export, tiny_export, tmp_path, monkeypatch):
    """low_memory: feeds recorded and the gate's fp32 images painted with the U-Net streamed, graphs quantized in
    parts; the layers chosen and the measured errors are those of the normal conversion."""
    import shanshui.quantize.convert as q
    import shanshui.quantize.gate as gate

    monkeypatch.setattr(q, "CALIBRATION_PROMPTS", ("水墨山水，江上渔舟", "a pine above a misty river"))
    monkeypatch.setattr(q, "CALIBRATION_STEPS", 4)
    monkeypatch.setattr(gate, "GATE_PROMPTS", ("一棵青松，青山环绕，云雾缭绕",))
    monkeypatch.setattr(gate, "GATE_SEEDS", (0,))
    events = []
    m = quantize_export(tiny_export, tmp_path / "low", "int8", low_memory=True, on_event=lambda c, e: events.append((c, e)))
    normal = json.loads((int8_export / MANIFEST).read_text())
    got, ref = m["quantization"]["unet"], normal["quantization"]["unet"]
    assert got["parts"] >= 2 and ref["parts"] == 1 and ("unet", "part 2 of 2") in events
    assert m["quantization"]["vae_decoder"].get("parts", 1) >= 4 or m["quantization"]["vae_decoder"]["precision"] == "fp16"
    assert got["layer_snr_db"].keys() == ref["layer_snr_db"].keys()
    # the streamed fp32 U-Net sums in another order: feeds, ranges and errors agree to within 0.5 dB
    assert max(abs(got["layer_snr_db"][k] - v) for k, v in ref["layer_snr_db"].items()) < 0.5
    assert m["gate"]["passed"] and abs(m["gate"]["worst"]["psnr_db"] - normal["gate"]["worst"]["psnr_db"]) < 3
    assert sorted(p.name for p in (tmp_path / "low").iterdir() if p.name.startswith(".")) == []  # no work folders left
