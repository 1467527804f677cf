"""PNG metadata in AUTOMATIC1111's `parameters` form, read back by an independent parser (sd-parsers, PyPI)."""

import json

import numpy as np
import pytest

from shanshui.pngmeta import a1111_parameters, model_label
from shanshui.runtime.image import save_png

PARAMS = {"prompt": "一棵青松，青山环绕, mist: dawn", "negative_prompt": "blurry, ugly", "steps": 25, "sampler": "euler_a",
          "guidance": 6.5, "seed": 1234, "height": 64, "width": 96, "model": "my-model", "backend": "onnxruntime",
          "num_images": 1}


def test_parameters_text_follows_the_web_ui_layout():
    text = a1111_parameters(PARAMS)
    lines = text.splitlines()
    assert lines[0] == PARAMS["prompt"]
    assert lines[1] == "Negative prompt: blurry, ugly"
    assert lines[2].startswith("Steps: 25, Sampler: Euler a, CFG scale: 6.5, Seed: 1234, Size: 96x64, Model: my-model")
    no_negative = a1111_parameters({**PARAMS, "negative_prompt": ""}).splitlines()
    assert len(no_negative) == 2 and not no_negative[1].startswith("Negative")
    quoted = a1111_parameters({**PARAMS, "model": "a, b: c"})
    assert 'Model: "a, b: c"' in quoted  # values with separators are JSON-quoted, as the web UI does
    img2img = a1111_parameters({**PARAMS, "init_image": "sketch.png", "strength": 0.6})
    assert "Denoising strength: 0.6" in img2img


def test_sd_parsers_reads_back_every_field(tmp_path):
    sd_parsers = pytest.importorskip("sd_parsers", reason="sd-parsers is in the dev extra")
    from PIL import Image

    path = save_png(tmp_path / "p.png", np.zeros((64, 96, 3), np.uint8), PARAMS)
    with Image.open(path) as im:
        info = sd_parsers.ParserManager().parse(im)
        machine = json.loads(im.text["shanshui"])
    assert info is not None and info.generator.value == "AUTOMATIC1111"
    sampler = info.samplers[0]
    assert [p.value for p in sampler.prompts] == [PARAMS["prompt"]]
    assert [p.value for p in sampler.negative_prompts] == [PARAMS["negative_prompt"]]
    assert sampler.name == "Euler a"
    assert sampler.parameters == {"cfg_scale": "6.5", "seed": "1234", "steps": "25"}
    assert info.metadata["Size"] == "96x64" and sampler.model.name == "my-model"
    assert machine == PARAMS


def test_model_label_hides_the_path(tmp_path):
    from shanshui import models

    assert model_label(tmp_path / "deep" / "my-model") == "my-model"
    assert model_label(models.DEFAULT_ONNX) == "shanshui-default"
