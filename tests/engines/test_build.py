"""The engine folder around an injected builder: cache reuse, rebuild reasons, stale-engine refusal, atomic writes."""

import json
import re
import shutil

import pytest

from shanshui.spec.engine_manifest import ENGINE_MANIFEST
from shanshui.engines.build import build_engines, check_engines, check_qdq_for_tensorrt, fingerprint, onnx_files
from shanshui.errors import ShanshuiError
from shanshui.integrity import record_files
from shanshui.spec.manifest import MANIFEST, open_exported

ENV = {"tensorrt": "10.3.0", "gpu": {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}}
OTHER_GPU = {**ENV, "gpu": {"name": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"}}


class FakeBuilder:
    """Stands in for trt.build_engine: records what it was asked, returns bytes that depend on it."""

    def __init__(self, fail_on=None):
        self.calls, self.fail_on = [], fail_on

    def __call__(self, onnx_path, spec, timing_cache):
        self.calls.append((spec.component, onnx_path, spec, timing_cache))
        if spec.component == self.fail_on:
            raise ShanshuiError(f"TensorRT could not build the {spec.component} engine")
        timing_cache.write_bytes(b"timings")
        return json.dumps({"component": spec.component, "profiles": spec.profiles, "mode": spec.mode}).encode()


def build(export, out, env=ENV, builder=None, **kw):
    events = []
    builder = builder or FakeBuilder()
    m = build_engines(export, out, env=env, builder=builder, on_event=lambda c, w: events.append((c, w)), **kw)
    return m, builder, events


def test_build_then_reuse(tiny_export, tmp_path):
    out = tmp_path / "engines"
    m, builder, events = build(tiny_export, out, precision="fp16", shapes="1x256x256,2x256x256")
    assert [c[0] for c in builder.calls] == ["text_encoder", "unet", "vae_decoder"]
    exported = open_exported(tiny_export)
    for comp, onnx_path, spec, cache in builder.calls:
        assert onnx_path == exported.onnx_path(comp)
        assert cache.parent == out and cache.suffix == ".cache"
        assert spec.mode["fp16_flag"] and not spec.mode["strongly_typed"]  # fp16 of an fp32 export on TensorRT 10
    assert builder.calls[1][2].profiles[1]["sample"] == [[4, 4, 32, 32]] * 3
    on_disk = json.loads((out / ENGINE_MANIFEST).read_text())
    assert on_disk["export"] == str(tiny_export.resolve()) and on_disk["shapes"] == "1x256x256,2x256x256"
    for comp, entry in on_disk["components"].items():
        assert (out / entry["file"]).stat().st_size == entry["bytes"]
        assert entry["key"]["onnx_sha256"] == fingerprint(onnx_files(exported, comp))["sha256"]
        assert entry["key"]["gpu"] == ENV["gpu"] and entry["key"]["tensorrt"] == "10.3.0"
    assert sorted(p.name for p in out.glob("*.plan")) == sorted(e["file"] for e in on_disk["components"].values())
    assert not list(out.glob(".*.tmp"))

    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("*.plan")}
    _, again, events = build(tiny_export, out, precision="fp16", shapes="2x256x256,1x256x256,1x256x256")
    assert again.calls == [] and events == [(c, "cached, reused") for c in ("text_encoder", "unet", "vae_decoder")]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.plan")} == mtimes


ALL = ["text_encoder", "unet", "vae_decoder"]


@pytest.mark.parametrize("change,reason,rebuilt", [
    ({"env": {**ENV, "tensorrt": "10.4.0"}}, "TensorRT 10.3.0 → 10.4.0", ALL),
    ({"env": OTHER_GPU}, "GPU NVIDIA H100 80GB HBM3 (sm_90) → NVIDIA A100-SXM4-80GB (sm_80)", ALL),
    ({"precision": "fp32"}, "precision fp16 → fp32", ALL),
    # another size, same batch: the text encoder (which sees only the batch) is the same engine
    ({"shapes": "1x256x256,1x512x512"}, "shapes 1x256x256 → 1x256x256,1x512x512", ["unet", "vae_decoder"]),
    ({"dynamic": True}, "shapes 1x256x256 → dynamic (opt 1x256x256)", ALL),
])
def test_a_changed_key_rebuilds_with_its_reason(tiny_export, tmp_path, change, reason, rebuilt):
    out = tmp_path / "engines"
    base = {"precision": "fp16", "env": ENV}
    m1, _, _ = build(tiny_export, out, **base)
    m2, builder, events = build(tiny_export, out, **{**base, **change})
    assert [c[0] for c in builder.calls] == rebuilt
    building = [what for _, what in events if what.startswith("building")]
    assert len(building) == len(rebuilt) and all(reason in what for what in building), events
    old_files = {m1["components"][c]["file"] for c in rebuilt}
    new_files = {e["file"] for e in m2["components"].values()}
    assert not old_files & new_files
    assert {p.name for p in out.glob("*.plan")} == new_files  # the superseded engines are gone
    assert {e["shapes"] for e in m2["components"].values()} == {m2["shapes"]}
    check_engines(open_exported(tiny_export), change.get("env", ENV), out)


def test_changed_onnx_rebuilds_only_that_engine_and_stale_engines_are_refused(tiny_export, tmp_path):
    export = tmp_path / "export"
    shutil.copytree(tiny_export, export)
    build(export, None, precision="fp32")  # default folder: EXPORT/engines
    assert (export / "engines" / ENGINE_MANIFEST).is_file()
    exported = open_exported(export)
    paths, _ = check_engines(exported, ENV)
    assert set(paths) == {"text_encoder", "unet", "vae_decoder"}

    with open(export / "vae_decoder" / "model.onnx", "ab") as f:  # a re-export with different weights
        f.write(b"\0")
    manifest = json.loads((export / MANIFEST).read_text(encoding="utf-8"))  # which records the new file, as export does
    entry = manifest["components"]["vae_decoder"]
    entry["files"], entry["sha256"] = record_files(export / "vae_decoder", list(entry["files"]))
    (export / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(ShanshuiError, match=r"the vae_decoder engine in .* is stale \(the ONNX model changed\): rebuild "
                                            r"with `shanshui engine build .*`, or use --backend onnxruntime --device cuda"):
        check_engines(exported, ENV)
    _, builder, events = build(export, None, precision="fp32")
    assert [c[0] for c in builder.calls] == ["vae_decoder"]
    assert ("text_encoder", "cached, reused") in events and any("the ONNX model changed" in w for _, w in events)
    check_engines(exported, ENV)


@pytest.mark.parametrize("env,fragment", [
    (OTHER_GPU, "GPU NVIDIA H100 80GB HBM3 (sm_90) → NVIDIA A100-SXM4-80GB (sm_80)"),
    ({**ENV, "tensorrt": "10.8.0"}, "TensorRT 10.3.0 → 10.8.0"),
])
def test_engines_for_another_gpu_or_tensorrt_are_refused(tiny_export, tmp_path, env, fragment):
    out = tmp_path / "engines"
    build(tiny_export, out)
    with pytest.raises(ShanshuiError) as e:
        check_engines(open_exported(tiny_export), env, out)
    msg = str(e.value)
    assert "is stale" in msg and fragment in msg and "shanshui engine build" in msg and "--backend onnxruntime" in msg
    assert "\n" not in msg


def test_missing_or_incomplete_engine_folders(tiny_export, tmp_path):
    exported = open_exported(tiny_export)
    with pytest.raises(ShanshuiError, match="no TensorRT engines in .*: build them with `shanshui engine build"):
        check_engines(exported, ENV, tmp_path / "nothing")
    out = tmp_path / "engines"
    m, _, _ = build(tiny_export, out)
    (out / m["components"]["unet"]["file"]).unlink()
    with pytest.raises(ShanshuiError, match="has no unet engine"):
        check_engines(exported, ENV, out)
    (out / ENGINE_MANIFEST).write_text("{not json")
    with pytest.raises(ShanshuiError, match="is corrupt"):
        check_engines(exported, ENV, out)


def test_interrupted_build_keeps_a_consistent_folder(tiny_export, tmp_path):
    out = tmp_path / "engines"
    build(tiny_export, out, precision="fp32")
    with pytest.raises(ShanshuiError, match="could not build the unet"):
        build(tiny_export, out, precision="fp16", builder=FakeBuilder(fail_on="unet"))
    assert not list(out.glob(".*.tmp"))
    m = json.loads((out / ENGINE_MANIFEST).read_text())
    assert m["components"]["text_encoder"]["key"]["precision"] == "fp16"  # the new one landed
    assert m["components"]["unet"]["key"]["precision"] == "fp32"  # the old one is still listed, and still on disk
    assert all((out / e["file"]).is_file() for e in m["components"].values())
    with pytest.raises(ShanshuiError, match="built with different settings"):
        check_engines(open_exported(tiny_export), ENV, out)
    _, builder, _ = build(tiny_export, out, precision="fp16")
    assert [c[0] for c in builder.calls] == ["unet", "vae_decoder"]  # the finished engine is kept
    check_engines(open_exported(tiny_export), ENV, out)


def test_bad_requests_write_nothing(tiny_export, tmp_path):
    out = tmp_path / "engines"
    builder = FakeBuilder()
    with pytest.raises(ShanshuiError, match=re.escape("int8 engines are built from an int8 (QDQ) export")):
        build(tiny_export, out, precision="int8", builder=builder)
    with pytest.raises(ShanshuiError, match="TensorRT 11 builds fp16 engines only from an fp16 export"):
        build(tiny_export, out, precision="fp16", env={**ENV, "tensorrt": "11.4.0"}, builder=builder)
    with pytest.raises(ShanshuiError, match="is not NxHxW"):
        build(tiny_export, out, shapes="256x256", builder=builder)
    assert builder.calls == [] and not out.exists()


def test_fingerprint_reuses_the_hash_only_while_files_are_untouched(tmp_path):
    f = tmp_path / "model.onnx"
    f.write_bytes(b"abc")
    first = fingerprint([f])
    assert fingerprint([f], {**first, "sha256": "cached"})["sha256"] == "cached"  # same inode, size and mtime
    f.write_bytes(b"abcd")
    assert fingerprint([f], {**first, "sha256": "cached"})["sha256"] not in ("cached", first["sha256"])


def _qdq_model(path, zero_point_type, zero_point, op="QuantizeLinear"):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "scale"),
             numpy_helper.from_array(np.array(zero_point, zero_point_type), "zp")]
    if op == "QuantizeLinear":
        nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["q"]),
                 helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["y"])]
    else:
        nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]),
                 helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def test_qdq_check_accepts_symmetric_int8_only(tmp_path):
    import numpy as np

    check_qdq_for_tensorrt(_qdq_model(tmp_path / "ok.onnx", np.int8, 0))
    with pytest.raises(ShanshuiError, match="2 Q/DQ nodes with uint8 types or non-zero zero points"):
        check_qdq_for_tensorrt(_qdq_model(tmp_path / "u8.onnx", np.uint8, 128))
    with pytest.raises(ShanshuiError, match="non-zero zero points"):
        check_qdq_for_tensorrt(_qdq_model(tmp_path / "asym.onnx", np.int8, 3))
    with pytest.raises(ShanshuiError, match="QOperator int8 graph"):
        check_qdq_for_tensorrt(_qdq_model(tmp_path / "qop.onnx", np.uint8, 0, op="Dynamic"))
