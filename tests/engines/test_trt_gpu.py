"""Real TensorRT on a real GPU: engines built from the tiny export, checked against ONNX Runtime on the CPU in fp32.
Skipped unless `tensorrt` imports and PyTorch sees a CUDA GPU.

Tolerances, stated: fp32 engines (TF32 off) per component max|trt − ort| ≤ 1e-3 + 2e-3·max|ort| (other kernels and
summation orders than ONNX Runtime; the export's own check allows 1e-4 + 1e-3·max|torch| against PyTorch). fp16
engines: final images PSNR ≥ 30 dB against the ONNX Runtime fp32 pipeline. Dynamic fp32 engines: PSNR ≥ 40 dB.
"""

import json
import shutil

import numpy as np
import pytest

from shanshui.spec.engine_manifest import ENGINE_MANIFEST
from shanshui.engines.build import build_engines
from shanshui.engines.plan import Bucket
from shanshui.errors import ShanshuiError
from shanshui.spec.contract import components
from shanshui.spec.manifest import open_exported
from shanshui.runtime.backends import OrtComponents
from shanshui.runtime.pipeline import Request, open_pipeline

PROMPT = "一棵青松，青山环绕，云雾缭绕"


def _have_tensorrt_and_gpu() -> bool:
    try:
        import tensorrt  # noqa: F401
        import torch
    except Exception:  # ImportError, or OSError from missing CUDA libraries
        return False
    return torch.cuda.is_available()


pytestmark = pytest.mark.skipif(not _have_tensorrt_and_gpu(), reason="needs tensorrt and a CUDA GPU")


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def fp32_engines(tiny_export, tmp_path_factory):
    out = tmp_path_factory.mktemp("trt") / "fp32"
    build_engines(tiny_export, out, precision="fp32", shapes="1x256x256,2x256x256")
    return out


@pytest.fixture(scope="module")
def ort_pipe(tiny_export):
    return open_pipeline(tiny_export, device="cpu", threads=4)


def _call(comps, name, feeds):
    if name == "text_encoder":
        return comps.text_encoder(feeds["input_ids"])
    if name == "unet":
        return comps.unet(feeds["sample"], feeds["timestep"], feeds["encoder_hidden_states"])
    return comps.vae_decoder(feeds["latent_sample"])


def test_fp32_engines_match_onnxruntime_per_component(fp32_engines, tiny_export):
    from shanshui.runtime.trt_backend import TrtComponents

    exported = open_exported(tiny_export)
    trt_comps, ort = TrtComponents(exported, fp32_engines), OrtComponents(exported, device="cpu")
    specs = components(exported.dims)
    for bucket in (Bucket(1, 256, 256), Bucket(2, 256, 256)):
        for name, spec in specs.items():
            feeds = spec.sample_inputs(exported.dims, bucket.values(exported.dims), seed=bucket.batch)
            got, ref = _call(trt_comps, name, feeds), _call(ort, name, feeds)
            assert got.shape == ref.shape and got.dtype == np.float32
            err = float(np.max(np.abs(got.astype(np.float64) - ref)))
            assert err <= 1e-3 + 2e-3 * float(np.max(np.abs(ref))), (name, str(bucket), err)
    assert all(len(v) == 2 and all(ms > 0 for ms in v) for v in trt_comps.timings.values())


def test_cuda_graphs_match_direct_launches(fp32_engines, tiny_export):
    from shanshui.runtime.trt_backend import TrtComponents

    exported = open_exported(tiny_export)
    graphed, direct = TrtComponents(exported, fp32_engines), TrtComponents(exported, fp32_engines, cuda_graphs=False)
    spec = components(exported.dims)["unet"]
    for seed in (0, 1):  # the second call replays the graph on new buffer contents
        feeds = spec.sample_inputs(exported.dims, Bucket(2, 256, 256).values(exported.dims), seed=seed)
        np.testing.assert_allclose(_call(graphed, "unet", feeds), _call(direct, "unet", feeds), rtol=0, atol=1e-6)
    assert any(s.graph is not None for s in graphed.runners["unet"]._slots.values())
    assert all(s.graph is None for s in direct.runners["unet"]._slots.values())


def test_pipeline_fp32_engines_with_padding(fp32_engines, ort_pipe):
    pipe = open_pipeline(fp32_engines)
    assert pipe.backend == "tensorrt"
    for guidance in (7.5, 1.0):  # guidance 1: U-Net batch 1 runs padded in the batch-2 engine
        req = Request(PROMPT, steps=4, seed=2, guidance=guidance)
        assert psnr(pipe(req).images[0], ort_pipe(req).images[0]) >= 40.0
    req = Request(PROMPT, steps=3, seed=5, num_images=2)
    for a, b in zip(pipe(req).images, ort_pipe(req).images):
        assert psnr(a, b) >= 40.0
    with pytest.raises(ShanshuiError, match="no profile"):
        pipe(Request(PROMPT, steps=1, height=320))


def test_fp16_engines_paint_like_fp32(tiny_model, tiny_export, ort_pipe, tmp_path):
    import tensorrt

    source = tiny_export
    if int(tensorrt.__version__.split(".")[0]) >= 11:  # no fp16 builder flag: build from an fp16 export
        from shanshui.quantize.convert import export_at

        source = tmp_path / "fp16"
        export_at(tiny_model, source, precision="fp16", max_batch=2, check=False)
    out = tmp_path / "fp16-engines"
    build_engines(source, out, precision="fp16")
    pipe = open_pipeline(out)
    for seed in (0, 1):
        req = Request(PROMPT, steps=6, seed=seed, negative_prompt="blurry")
        assert psnr(pipe(req).images[0], ort_pipe(req).images[0]) >= 30.0


def test_dynamic_engines_cover_other_sizes(tiny_export, ort_pipe, tmp_path):
    out = tmp_path / "dynamic"
    build_engines(tiny_export, out, precision="fp32", dynamic=True)
    pipe = open_pipeline(out)
    for h, w in ((256, 256), (192, 320)):
        req = Request(PROMPT, steps=3, seed=1, height=h, width=w)
        a, b = pipe(req).images[0], ort_pipe(req).images[0]
        assert a.shape == (h, w, 3) and psnr(a, b) >= 40.0


def test_rebuild_reuses_and_stale_engines_are_refused(fp32_engines, tiny_export, tmp_path):
    events = []
    build_engines(tiny_export, fp32_engines, precision="fp32", shapes="2x256x256,1x256x256",
                  on_event=lambda c, w: events.append(w))
    assert events == ["cached, reused"] * 3
    stale = tmp_path / "stale"
    shutil.copytree(fp32_engines, stale)
    m = json.loads((stale / ENGINE_MANIFEST).read_text())
    for e in m["components"].values():
        e["key"]["gpu"] = {"name": "Some Other GPU", "compute_capability": "7.5"}
    (stale / ENGINE_MANIFEST).write_text(json.dumps(m))
    with pytest.raises(ShanshuiError, match=r"is stale \(GPU Some Other GPU \(sm_75\) → .*\): rebuild with"):
        open_pipeline(stale)
