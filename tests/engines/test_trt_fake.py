"""trt.py and TrtComponents on a CPU, against the fake TensorRT of fake_trt.py (ONNX Runtime does the math there).

These check shanshui's side: flags and profiles handed to the builder, the timing cache, contexts with shared
memory, buffers per shape, batch padding, rebinding of dynamic shapes, CUDA graph capture and replay, and the
pipeline through `--backend tensorrt`. That TensorRT itself builds and runs these graphs is tested in test_trt_gpu.py.
"""

import json

import numpy as np
import pytest

from shanshui.engines import trt
from shanshui.engines.plan import EngineBuild
from shanshui.engines.build import build_engines
from shanshui.engines.plan import Bucket, network_mode, profiles
from shanshui.errors import ShanshuiError
from shanshui.spec.manifest import open_exported
from shanshui.runtime.pipeline import Request, open_pipeline
from tests.engines import fake_trt

PROMPT = "一棵青松，青山环绕，云雾缭绕"


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture
def fake(monkeypatch):
    return fake_trt.install(monkeypatch)


def _profiles(exported, comp, buckets, dynamic=False):
    from shanshui.spec.contract import components

    return profiles(components(exported.dims)[comp], exported.dims, exported.shapes, buckets, dynamic)


def test_build_engine_hands_mode_profiles_and_timing_cache_to_tensorrt(fake, tiny_export, tmp_path):
    exported = open_exported(tiny_export)
    onnx = exported.onnx_path("unet")
    profs = _profiles(exported, "unet", [Bucket(1, 256, 256), Bucket(2, 256, 256)])
    cache = tmp_path / "timing.cache"
    spec = EngineBuild("unet", onnx, profs, network_mode("fp16", "fp32", "fp32", 10), workspace_bytes=1 << 30)
    plan = json.loads(trt.build_engine(onnx, spec, cache))
    assert plan["onnx"] == str(onnx) and plan["profiles"] == profs
    assert plan["network_flags"] == 0 and plan["flags"] == ["FP16", "TF32"]  # weakly typed, fp16 kernels allowed
    assert plan["pools"] == {"WORKSPACE": 1 << 30}
    assert cache.read_bytes() == b"+timing"
    spec = EngineBuild("unet", onnx, profs, network_mode("fp32", "fp32", "fp32", 10))
    plan = json.loads(trt.build_engine(onnx, spec, cache))
    assert plan["network_flags"] == 1 << 5 and plan["flags"] == []  # strongly typed, TF32 cleared
    assert plan["pools"] == {}
    assert cache.read_bytes() == b"+timing+timing"  # the cache was loaded, extended and written back
    cache.write_bytes(b"other-gpu")
    trt.build_engine(onnx, spec, cache)
    assert cache.read_bytes() == b"+timing"  # a mismatched cache is replaced, not fatal


def test_build_engine_errors_are_one_line(fake, monkeypatch, tiny_export, tmp_path):
    exported = open_exported(tiny_export)
    profs = _profiles(exported, "text_encoder", [Bucket(1, 256, 256)])
    spec = EngineBuild("text_encoder", tmp_path / "missing.onnx", profs, network_mode("fp32", "fp32", "fp32", 10))
    with pytest.raises(ShanshuiError, match="TensorRT cannot parse .*missing.onnx: ModelImporter: failed to open"):
        trt.build_engine(spec.onnx_path, spec, tmp_path / "t.cache")
    onnx = exported.onnx_path("text_encoder")
    fake_trt.FakeBuilder.fail = True
    with pytest.raises(ShanshuiError, match="could not build the text_encoder engine"):
        trt.build_engine(onnx, EngineBuild("text_encoder", onnx, profs, spec.mode), tmp_path / "t.cache")
    fake_trt.install(monkeypatch, version="11.4.0", fp16_flag=False)
    with pytest.raises(ShanshuiError, match="has no fp16 builder flag"):
        trt.build_engine(onnx, EngineBuild("text_encoder", onnx, profs, network_mode("fp16", "fp32", "fp32", 10)), tmp_path / "t.cache")


def _runner(tiny_export, tmp_path, buckets, dynamic=False, cuda_graphs=True):
    exported = open_exported(tiny_export)
    onnx = exported.onnx_path("text_encoder")
    spec = EngineBuild("text_encoder", onnx, _profiles(exported, "text_encoder", buckets, dynamic), network_mode("fp32", "fp32", "fp32", 10))
    runner = trt.TrtRunner(trt.build_engine(onnx, spec, tmp_path / "t.cache"), "text_encoder", fake_trt.FakeStream(), cuda_graphs)
    return runner, runner.engine.session


def _ids(batch, seed=0):
    return np.random.default_rng(seed).integers(0, 4096, size=(batch, 64), dtype=np.int64)


def test_runner_pads_batches_and_replays_cuda_graphs(fake, tiny_export, tmp_path):
    runner, session = _runner(tiny_export, tmp_path, [Bucket(1, 256, 256), Bucket(2, 256, 256)])  # batches 2 and 4
    with pytest.raises(RuntimeError, match="attach"):
        runner.run({"input_ids": _ids(2)})
    runner.attach(4096, 2 << 20)
    for batch, seed in ((2, 0), (1, 1), (2, 2), (3, 3)):
        ids = _ids(batch, seed)
        outs, ms = runner.run({"input_ids": ids}, want=("last_hidden_state",))
        ref = session.run(["last_hidden_state"], {"input_ids": ids})[0]
        assert outs["last_hidden_state"].shape == ref.shape and ms == 1.5
        np.testing.assert_allclose(outs["last_hidden_state"], ref, rtol=1e-5, atol=1e-5)
    assert len(runner._slots) == 2  # batch 1 ran padded in batch 2's buffers, batch 3 in batch 4's
    assert all(s.graph is not None for s in runner._slots.values())
    contexts = runner.engine.contexts
    assert [c.profile for c in contexts] == [0, 1] and all(c.memory == (4096, 2 << 20) for c in contexts)
    assert [c.strategy for c in contexts] == ["USER_MANAGED"] * 2
    # per slot: one warm-up launch, then every run replays the captured launch
    assert sorted(c.launches for c in contexts) == [1 + 1, 1 + 3]
    with pytest.raises(ShanshuiError, match="no profile for inputs"):
        runner.run({"input_ids": _ids(5)})


def test_runner_rebinds_a_dynamic_profile_per_shape(fake, tiny_export, tmp_path):
    runner, session = _runner(tiny_export, tmp_path, [Bucket(1, 256, 256)], dynamic=True)
    runner.attach(0, 1 << 20)
    for batch in (2, 3, 2, 1):
        ids = _ids(batch, batch)
        outs, _ = runner.run({"input_ids": ids})
        assert set(outs) == {"last_hidden_state", "pooler_output"}
        np.testing.assert_allclose(outs["last_hidden_state"], session.run(["last_hidden_state"], {"input_ids": ids})[0],
                                   rtol=1e-5, atol=1e-5)
    assert len(runner._slots) == 3 and all(s.graph is None for s in runner._slots.values())  # no graphs when dynamic


@pytest.fixture
def fake_engines(fake, tiny_export, tmp_path):
    out = tmp_path / "engines"
    build_engines(tiny_export, out, precision="fp32", shapes="1x256x256")
    return out


def test_pipeline_on_tensorrt_matches_onnxruntime(fake_engines, tiny_export):
    ort = open_pipeline(tiny_export, threads=2)
    pipe = open_pipeline(fake_engines)  # an engine folder: backend tensorrt, its export from engines.json
    assert pipe.backend == "tensorrt" and pipe.components.name == "tensorrt" and pipe.root == tiny_export.resolve()
    for guidance in (7.5, 1.0):  # guidance 1 runs the U-Net at batch 1, padded into the batch-2 engine
        req = Request(PROMPT, steps=3, seed=4, guidance=guidance, negative_prompt="模糊")
        a, b = ort(req).images[0], pipe(req).images[0]
        assert psnr(a, b) >= 50, guidance
    t = pipe.components.timings
    assert len(t["unet"]) == 6 and len(t["text_encoder"]) == 2 and len(t["vae_decoder"]) == 2
    runners = pipe.components.runners
    assert {r.engine.contexts[0].memory for r in runners.values()} == {(pipe.components.activations.data_ptr(), 1 << 20)}
    with pytest.raises(ShanshuiError, match="no profile for inputs"):
        pipe(Request(PROMPT, steps=1, height=320))


def test_engines_for_another_gpu_do_not_load(fake_engines, tiny_export, monkeypatch):
    monkeypatch.setattr(fake_trt.FakeCuda, "get_device_name", lambda self, i=0: "Other GPU")
    with pytest.raises(ShanshuiError, match=r"is stale \(GPU Fake GPU \(sm_90\) → Other GPU \(sm_90\)\)"):
        open_pipeline(fake_engines)
