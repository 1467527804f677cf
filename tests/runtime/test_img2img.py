"""Image-to-image: the VAE encoder export, the schedule it starts from, backends agreeing, the CLI options."""

import json

import numpy as np
import pytest

from shanshui.errors import ShanshuiError
from shanshui.runtime.img2img import load_init_image, skipped_steps
from shanshui.runtime.pipeline import Request, open_pipeline


def psnr(a, b) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def sketch(h=96, w=160) -> np.ndarray:
    """A rough sketch: sky, a dark mountain triangle, water."""
    yy, xx = np.mgrid[:h, :w]
    img = np.full((h, w, 3), 235, np.uint8)
    img[yy > 0.7 * h] = (90, 120, 150)
    img[(yy > 0.2 * h + np.abs(xx - w / 2) * 0.8) & (yy <= 0.7 * h)] = (40, 50, 45)
    return img


@pytest.fixture(scope="module")
def ort_pipe(tiny_export):
    return open_pipeline(tiny_export, threads=2)


def test_export_has_a_checked_vae_encoder(tiny_export):
    m = json.loads((tiny_export / "shanshui_manifest.json").read_text())
    entry = m["components"]["vae_encoder"]
    assert [t["name"] for t in entry["outputs"]] == ["latent_parameters"] and entry["outputs"][0]["dims"][1] == 8
    assert all(p["max_abs_error"] <= p["allowed"] for p in entry["parity"])
    assert json.loads((tiny_export / "vae_encoder" / "config.json").read_text())["latent_channels"] == 4


def test_init_image_is_scaled_to_cover_and_centre_cropped(tmp_path):
    from PIL import Image

    img = np.zeros((50, 200, 3), np.uint8)
    img[:, 90:110] = 255  # a white band in the middle
    Image.fromarray(img).save(tmp_path / "wide.png")
    out = load_init_image(tmp_path / "wide.png", 64, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert out[:, 24:40].mean() > 200 and out[:, :8].mean() < 30 and out[:, -8:].mean() < 30  # centre kept, sides cut
    with pytest.raises(ShanshuiError, match="does not exist"):
        load_init_image(tmp_path / "nope.png", 64, 64)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ShanshuiError, match="cannot read init image"):
        load_init_image(tmp_path / "bad.png", 64, 64)


def test_skipped_steps_follow_diffusers():
    assert skipped_steps(25, 0.6) == 10 and skipped_steps(10, 1.0) == 0 and skipped_steps(10, 0.05) == 10
    with pytest.raises(ShanshuiError, match="strength"):
        skipped_steps(10, 0.0)


def test_low_strength_returns_the_vae_round_trip(ort_pipe):
    """Strength → 0 runs no step: the result is the init image through encoder and decoder."""
    init = load_init_image(sketch(), 256, 256)
    result = ort_pipe(Request("远山", steps=10, init_image=init, strength=0.05))
    assert result.timings["unet_calls"] == 0
    c = ort_pipe.components
    x = (init.astype(np.float32) / 127.5 - 1).transpose(2, 0, 1)[None]
    rt = c.vae_decoder(c.vae_encoder(x))[0]
    rt = np.round((np.clip(rt, -1, 1).transpose(1, 2, 0) + 1) * 127.5).astype(np.uint8)
    assert psnr(result.images[0], rt) >= 50


def test_strength_sets_the_steps_run_and_changes_the_picture(ort_pipe):
    init = load_init_image(sketch(), 256, 256)
    lo = ort_pipe(Request("远山", steps=10, seed=1, init_image=init, strength=0.3))
    hi = ort_pipe(Request("远山", steps=10, seed=1, init_image=init, strength=0.9))
    assert (lo.timings["unet_calls"], hi.timings["unet_calls"]) == (3, 9)
    assert psnr(lo.images[0], hi.images[0]) < 40
    assert lo.params["init_image"] == "array" and lo.params["strength"] == 0.3


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "euler_a"])
def test_onnxruntime_and_torch_agree(ort_pipe, tiny_model, sampler):
    init = sketch(256, 256)
    req = Request("一棵青松", steps=6, seed=2, sampler=sampler, init_image=init, strength=0.6, num_images=2)
    a = ort_pipe(req).images
    b = open_pipeline(tiny_model, backend="torch", device="cpu")(req).images
    assert len(a) == 2 and all(psnr(x, y) >= 40 for x, y in zip(a, b))


def test_an_export_without_encoder_says_so(tiny_export, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(tiny_export, old)
    m = json.loads((old / "shanshui_manifest.json").read_text())
    del m["components"]["vae_encoder"]
    (old / "shanshui_manifest.json").write_text(json.dumps(m))
    pipe = open_pipeline(old)
    pipe(Request("pine", steps=1))  # text-to-image still works
    with pytest.raises(ShanshuiError, match="no VAE encoder"):
        pipe(Request("pine", steps=2, init_image=sketch()))


def test_cli_init_image_and_strength(tiny_export, tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from shanshui.cli import app

    Image.fromarray(sketch()).save(tmp_path / "sketch.png")
    run = lambda *a: CliRunner().invoke(app, [str(x) for x in a])  # noqa: E731
    r = run("generate", "秋山", "--model", tiny_export, "-o", tmp_path / "out.png", "--steps", "4",
            "--init-image", tmp_path / "sketch.png", "--strength", "0.5")
    assert r.exit_code == 0, r.output
    with Image.open(tmp_path / "out.png") as im:
        text = im.text["parameters"]
    assert "Denoising strength: 0.5" in text and str(tmp_path) not in text
    r = run("generate", "秋山", "--model", tiny_export, "-o", tmp_path / "x.png", "--strength", "0.5")
    assert r.exit_code == 1 and "--strength is for image-to-image" in r.output
