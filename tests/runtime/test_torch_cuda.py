"""The PyTorch backend's precision options: the int8 hand-off to bitsandbytes and the CPU refusals run everywhere;
fp16/bf16 quality, CUDA graphs and timings need a CUDA GPU (skipped without one)."""

import sys


import numpy as np
import pytest

from shanshui.errors import ShanshuiError
from shanshui.runtime import bnb
from shanshui.runtime.pipeline import Request, open_pipeline

PROMPT = "一棵青松，青山环绕，云雾缭绕"
torch = pytest.importorskip("torch")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_int8_hands_all_three_modules_to_bnb(tiny_model, monkeypatch):
    calls = []

    def to_int8(modules, device):  # the contract of shanshui.runtime.bnb.to_int8: in place, returns a summary
        calls.append((sorted(modules), device, {k: next(m.parameters()).dtype for k, m in modules.items()}))
        return {"unet": 0}

    monkeypatch.setattr(bnb, "to_int8", to_int8)
    pipe = open_pipeline(tiny_model, device="cpu", precision="int8")
    assert calls == [(["text_encoder", "unet", "vae"], "cpu", {k: torch.float32 for k in ("text_encoder", "unet", "vae")})]
    assert pipe(Request(PROMPT, steps=1, height=128, width=128)).images[0].shape == (128, 128, 3)


def test_int8_errors_propagate_as_one_line(tiny_model, monkeypatch):
    def refuse(modules, device):
        raise ShanshuiError("bitsandbytes cannot run here (no GPU); or use the int8 ONNX export")

    monkeypatch.setattr(bnb, "to_int8", refuse)
    with pytest.raises(ShanshuiError, match="bitsandbytes cannot run here"):
        open_pipeline(tiny_model, device="cpu", precision="int8")
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # not installed
    with pytest.raises(ShanshuiError, match=r"needs bitsandbytes: pip install 'shanshui\[bnb\]'"):
        open_pipeline(tiny_model, device="cpu", precision="int8")


@pytest.mark.parametrize("kw,fragment", [
    ({"precision": "fp16"}, "fp16 on the CPU is slower than fp32"),
    ({"precision": "bf16"}, "bf16 on the CPU is slower than fp32"),
    ({"cuda_graphs": True}, "need a CUDA GPU"),
    ({"precision": "fp8"}, "precision 'fp8' is not available"),
])
def test_cpu_refusals(tiny_model, kw, fragment):
    with pytest.raises(ShanshuiError, match=fragment):
        open_pipeline(tiny_model, device="cpu", **kw)


def test_sdpa_processor_is_set(tiny_model):
    import diffusers
    from diffusers.models.attention_processor import AttnProcessor2_0

    from shanshui.runtime.torch_cuda import load_dtype, use_sdpa

    unet = diffusers.UNet2DConditionModel.from_pretrained(tiny_model / "unet")
    assert use_sdpa(unet)
    assert unet.attn_processors and all(isinstance(p, AttnProcessor2_0) for p in unet.attn_processors.values())
    assert not use_sdpa(torch.nn.Linear(2, 2))
    assert [load_dtype(p, "cuda") for p in ("fp32", "fp16", "bf16", "int8")] == ["float32", "float16", "bfloat16", "float16"]
    assert load_dtype("int8", "cpu") == "float32"


@pytest.mark.parametrize("channels_last", [False, True])
def test_runner_matches_the_plain_backend(tiny_model, monkeypatch, channels_last):
    """The CUDA runner's eager path, run on the CPU (CUDA events faked): same numbers as TorchComponents' own."""
    from shanshui.runtime.torch_cuda import CudaRunner
    from tests.engines.fake_trt import FakeEvent

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    plain = open_pipeline(tiny_model, device="cpu").components
    runner = CudaRunner(plain.te, plain.un, plain.vae, "fp32", channels_last=channels_last, device="cpu")
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 4096, size=(2, 64))
    x, t = rng.standard_normal((2, 4, 16, 24)).astype(np.float32), np.array([10.0, 900.0], np.float32)
    cond = plain.text_encoder(ids)
    np.testing.assert_allclose(runner.text_encoder(ids), cond, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(runner.unet(x, t, cond), plain.unet(x, t, cond), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(runner.vae_decoder(x[:1]), plain.vae_decoder(x[:1]), rtol=1e-4, atol=1e-4)
    assert {k: len(v) for k, v in runner.timings.items()} == {"text_encoder": 1, "unet": 1, "vae_decoder": 1}


@pytest.fixture(scope="module")
def cpu_reference(tiny_model):
    pipe = open_pipeline(tiny_model, device="cpu")
    return {g: pipe(Request(PROMPT, steps=4, seed=3, guidance=g, negative_prompt="blurry")).images[0] for g in (7.5, 1.0)}


@cuda
@pytest.mark.parametrize("precision,floor_db", [("fp32", 35.0), ("fp16", 30.0), ("bf16", 22.0)])
def test_cuda_precisions_match_cpu_fp32(tiny_model, cpu_reference, precision, floor_db):
    """Final images on CUDA against CPU fp32: fp16 ≥ 30 dB (bf16, with 8 mantissa bits, ≥ 22 dB; fp32 ≥ 35 dB, as
    cuDNN convolutions may use TF32)."""
    pipe = open_pipeline(tiny_model, device="cuda", precision=precision)
    assert pipe.components.cuda is not None and pipe.components.device == "cuda"
    result = pipe(Request(PROMPT, steps=4, seed=3, guidance=7.5, negative_prompt="blurry"))
    assert psnr(result.images[0], cpu_reference[7.5]) >= floor_db
    t = pipe.components.timings
    assert len(t["unet"]) == result.timings["unet_calls"] == 4 and all(ms > 0 for ms in t["unet"])
    assert len(t["text_encoder"]) == 1 and len(t["vae_decoder"]) == 1


@cuda
def test_cuda_graphs_give_the_eager_output(tiny_model, cpu_reference):
    eager = open_pipeline(tiny_model, device="cuda", precision="fp16")
    graphed = open_pipeline(tiny_model, device="cuda", precision="fp16", cuda_graphs=True)
    for g in (7.5, 1.0):  # two batch sizes: one graph each
        req = Request(PROMPT, steps=4, seed=3, guidance=g, negative_prompt="blurry")
        a, b = eager(req).images[0], graphed(req).images[0]
        assert psnr(a, b) >= 50.0
        assert psnr(b, cpu_reference[g]) >= 30.0
    assert len(graphed.components.cuda._graphs) == 2
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 32, 32)).astype(np.float32)
    t = np.full(2, 500.0, np.float32)
    c = rng.standard_normal((2, 64, 256)).astype(np.float32)
    np.testing.assert_allclose(graphed.components.unet(x, t, c), eager.components.unet(x, t, c), rtol=1e-2, atol=1e-2)
    x2 = x[::-1].copy()  # new contents in the same static buffers
    np.testing.assert_allclose(graphed.components.unet(x2, t, c), eager.components.unet(x2, t, c), rtol=1e-2, atol=1e-2)
