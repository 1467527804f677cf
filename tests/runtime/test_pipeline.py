"""The runtime loop: backends agree, seeds reproduce, PNGs carry their parameters, bad requests are refused."""

import json

import numpy as np
import pytest

from shanshui.errors import ShanshuiError
from shanshui.runtime.pipeline import Request, open_pipeline

PROMPT = "一棵青松，青山环绕，云雾缭绕"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def ort_pipe(tiny_export):
    return open_pipeline(tiny_export, threads=2)


@pytest.mark.parametrize("sampler", ["ddim", "euler", "euler_a", "dpmpp_2m"])
def test_onnxruntime_matches_torch(ort_pipe, tiny_model, sampler):
    """Same model, seed and sampler: the ONNX Runtime and PyTorch backends give the same picture (PSNR ≥ 40 dB)."""
    req = Request(PROMPT, steps=4, seed=3, sampler=sampler, negative_prompt="blurry")
    a = ort_pipe(req).images[0]
    b = open_pipeline(tiny_model, backend="torch", device="cpu")(req).images[0]
    assert a.shape == (256, 256, 3) and a.dtype == np.uint8
    assert psnr(a, b) >= 40.0


def test_seed_reproduces_and_varies(ort_pipe):
    req = Request(PROMPT, steps=3, seed=11)
    a, b = ort_pipe(req).images[0], ort_pipe(req).images[0]
    c = ort_pipe(Request(PROMPT, steps=3, seed=12)).images[0]
    np.testing.assert_array_equal(a, b)
    assert psnr(a, c) < 30


def test_batch_size_and_progress(ort_pipe):
    seen = []
    result = ort_pipe(Request("pine", steps=5, num_images=2, height=192, width=320), callback=lambda i, n: seen.append((i, n)))
    assert [im.shape for im in result.images] == [(192, 320, 3)] * 2
    assert not np.array_equal(result.images[0], result.images[1])
    assert seen == [(i, 5) for i in range(5)]
    assert result.timings["unet_calls"] == 5


def test_png_carries_parameters(ort_pipe, tmp_path):
    from PIL import Image

    from shanshui.runtime.image import save_png

    result = ort_pipe(Request(PROMPT, steps=2))
    path = save_png(tmp_path / "p.png", result.images[0], result.params)
    with Image.open(path) as im:
        params = json.loads(im.text["shanshui"])
        text = im.text["parameters"]
        assert "prompt" not in im.text  # ComfyUI reads a `prompt` chunk as its own workflow JSON
    assert params["prompt"] == PROMPT and params["steps"] == 2 and params["sampler"] == "dpmpp_2m"
    assert text.splitlines()[0] == PROMPT and "Steps: 2, Sampler: DPM++ 2M, CFG scale: 7.5, Seed: 0" in text
    assert params["model"] == ort_pipe.root.name and str(ort_pipe.root.parent) not in path.read_bytes().decode("latin-1")
    assert not list(tmp_path.glob(".*")), "temporary file left behind"


@pytest.mark.parametrize("req,match", [
    (Request(""), "prompt is empty"),
    (Request("   "), "prompt is empty"),
    (Request("pine", steps=0), "steps must be"),
    (Request("pine", height=100), "multiple of 8"),
    (Request("pine", width=264), "multiple of 32"),
    (Request("pine", sampler="plms"), "unknown sampler"),
    (Request("pine", guidance=-1), "guidance"),
])
def test_bad_requests(ort_pipe, req, match):
    with pytest.raises(ShanshuiError, match=match):
        ort_pipe(req)


def test_wrong_backend_for_folder(tiny_export, tiny_model):
    with pytest.raises(ShanshuiError, match="is an ONNX export"):
        open_pipeline(tiny_export, backend="torch")
    with pytest.raises(ShanshuiError, match="run `shanshui export"):
        open_pipeline(tiny_model, backend="onnxruntime")
