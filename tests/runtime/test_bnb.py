"""bitsandbytes int8 for the PyTorch backend: Linear layers swapped, outputs close to fp32, clear errors without it."""

import sys

import numpy as np
import pytest

from shanshui.errors import ShanshuiError


def test_missing_bitsandbytes_is_one_clear_error(monkeypatch):
    from shanshui.runtime.bnb import to_int8

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` raise ImportError
    with pytest.raises(ShanshuiError, match=r"pip install 'shanshui\[bnb\]'.*--precision int8"):
        to_int8({}, "cpu")


def test_int8_linear_layers_follow_fp32(tiny_model):
    pytest.importorskip("bitsandbytes")  # in the [dev] extra, so present in CI
    import torch

    from shanshui.runtime.bnb import to_int8
    from shanshui.runtime.backends import TorchComponents

    ref = TorchComponents.from_folder(tiny_model, device="cpu")
    q = TorchComponents.from_folder(tiny_model, device="cpu")
    linear_before = sum(isinstance(m, torch.nn.Linear) for m in q.un.modules())
    swapped = to_int8({"text_encoder": q.te, "unet": q.un}, "cpu")
    assert swapped["unet"] == linear_before > 0 and swapped["text_encoder"] > 0
    assert not any(type(m) is torch.nn.Linear for m in q.un.modules())
    assert all(m.weight.dtype == torch.int8 for m in q.un.modules() if type(m).__name__ == "Linear8bitLt")

    rng = np.random.default_rng(0)
    ids = rng.integers(4, 200, (2, ref.te.config.max_position_embeddings))
    x = rng.standard_normal((2, 4, 16, 16)).astype(np.float32)
    t = np.array([500.0, 20.0], np.float32)
    cond = ref.text_encoder(ids)
    a, b = ref.unet(x, t, cond), q.unet(x, t, q.text_encoder(ids))
    snr = 10 * np.log10(np.sum(a.astype(np.float64) ** 2) / np.sum((a - b) ** 2))
    assert snr > 20, f"int8 U-Net output SNR {snr:.1f} dB"  # stated tolerance: 20 dB on random weights


def test_generate_with_torch_int8_from_the_cli(tiny_model, tmp_path):
    pytest.importorskip("bitsandbytes")
    from typer.testing import CliRunner

    from shanshui.cli import app

    out = tmp_path / "int8.png"
    r = CliRunner().invoke(app, ["generate", "一棵青松", "-m", str(tiny_model), "--backend", "torch", "--precision", "int8",
                                 "--steps", "2", "--height", "64", "--width", "64", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert out.is_file() and out.stat().st_size > 0
