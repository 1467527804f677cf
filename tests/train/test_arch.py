"""Architectures: sizes as promised, and our folders are real diffusers pipelines."""

import json

import numpy as np


def test_tiny_fits_the_budget(tiny_model):
    params = json.loads((tiny_model / "shanshui.json").read_text())["parameters"]
    assert params["total"] <= 25_000_000
    assert params["total"] == params["text_encoder"] + params["unet"] + params["vae"]


def test_sd15_has_stable_diffusion_shapes():
    """Built on the meta device (no memory): SD 1.5's U-Net is 859.52 M parameters, CLIP-L's text model 123.06 M."""
    import torch

    from shanshui.train.arch import build_components, count_parameters

    with torch.device("meta"):
        te, unet, vae, _ = build_components("sd15")
    assert count_parameters(unet) == 859_520_964
    assert count_parameters(te) == 123_060_480
    assert count_parameters(vae) == 83_653_863


def test_diffusers_loads_and_runs_our_folder(tiny_model):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_model, safety_checker=None)
    out = pipe("一棵青松", num_inference_steps=2, height=64, width=64, output_type="np",
               generator=__import__("torch").Generator().manual_seed(0)).images
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all()


def test_tokenizer_handles_chinese_and_english(tiny_model):
    from shanshui.runtime.tokenizer import open_tokenizer

    tok = open_tokenizer(tiny_model / "tokenizer")
    ids, truncated = tok(["一棵青松，青山环绕，云雾缭绕", "a lone pine among misty mountains", "松" * 200])
    assert ids.shape == (3, 64) and truncated == [False, False, True]
    words = tok.tok.encode("一棵青松，青山环绕").tokens
    assert words[:5] == ["[BOS]", "一", "棵", "青", "松"]  # one token per character
    assert "[UNK]" not in tok.tok.encode("a lone pine among misty mountains").tokens
