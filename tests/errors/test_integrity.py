"""Integrity pieces one by one: hashes, paths inside the folder, strict JSON, finite stages, safetensors headers,
the memory estimate, stale temp folders; and an export that repairs a damaged component instead of keeping it."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from shanshui import limits
from shanshui.errors import ShanshuiError
from shanshui.fsutil import write_json_atomic
from shanshui.integrity import (check_finite, check_safetensors, inside, loads_strict, record_files,
                                remove_stale_temps, verify_component)
from shanshui.models import DEFAULT_DIFFUSERS, DEFAULT_ONNX


def test_shipped_manifest_hashes_match_its_files():
    m = json.loads((DEFAULT_ONNX / "shanshui_manifest.json").read_text(encoding="utf-8"))
    for name, entry in m["components"].items():
        assert set(entry["sha256"]) == set(entry["files"])
        verify_component(DEFAULT_ONNX, name, entry)  # raises on any mismatch


def test_verify_component_catches_same_size_damage(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "model.onnx").write_bytes(b"a" * 10_000)
    sizes, hashes = record_files(tmp_path / "unet", ["model.onnx"])
    entry = {"file": "unet/model.onnx", "files": sizes, "sha256": hashes}
    verify_component(tmp_path, "unet", entry)
    (tmp_path / "unet" / "model.onnx").write_bytes(b"a" * 5_000 + b"b" + b"a" * 4_999)  # same size
    with pytest.raises(ShanshuiError, match="does not match the hash"):
        verify_component(tmp_path, "unet", entry)
    (tmp_path / "unet" / "model.onnx").write_bytes(b"a" * 9_000)
    with pytest.raises(ShanshuiError, match="9,000 bytes"):
        verify_component(tmp_path, "unet", entry)


def test_inside_refuses_paths_that_leave_the_folder(tmp_path):
    root = tmp_path / "export"
    (root / "unet").mkdir(parents=True)
    (tmp_path / "secret").write_text("x")
    assert inside(root, "unet/model.onnx", "unet file") == root.resolve() / "unet/model.onnx"
    for bad in ("/etc/passwd", "../secret", "unet/../../secret", "", None, 3):
        with pytest.raises(ShanshuiError):
            inside(root, bad, "unet file")
    os.symlink(tmp_path / "secret", root / "unet" / "link")
    with pytest.raises(ShanshuiError, match="outside"):
        inside(root, "unet/link", "unet file")


def test_json_in_is_strict_and_json_out_has_no_nan(tmp_path):
    for text in ('{"a": NaN}', '{"a": Infinity}', "[-Infinity]", "{", ""):
        with pytest.raises(ShanshuiError, match="corrupt"):
            loads_strict(text, "x.json")
    write_json_atomic(tmp_path / "r.json", {"psnr": float("inf"), "snr": [float("nan"), 1.5]})
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert loads_strict(text, "r.json") == {"psnr": None, "snr": [None, 1.5]}


def test_check_finite_names_the_stage():
    x = np.zeros((1, 4, 8, 8), np.float32)
    assert check_finite("U-Net", x) is x
    x[0, 0, 0, 0] = np.nan
    with pytest.raises(ShanshuiError, match="the U-Net produced 1 NaN/Inf"):
        check_finite("U-Net", x)


def test_pipeline_refuses_a_nan_stage_instead_of_a_black_image(loaded_pipeline):
    from shanshui.runtime.pipeline import Pipeline, Request

    p = loaded_pipeline
    make = getattr(Pipeline, "from_parts", Pipeline)  # a pipeline over components in memory

    class NanUnet:
        def __getattr__(self, name):
            return getattr(p.components, name)

        def unet(self, x, t, c):
            return np.full_like(x, np.nan)

    broken = make(NanUnet(), p.tokenizer, p.scheduler, p.dims, p.scaling_factor, p.default_size)
    with pytest.raises(ShanshuiError, match="U-Net produced"):
        broken(Request("山", steps=2))


@pytest.fixture(scope="module")
def loaded_pipeline():
    from tests.errors.test_fuzz import load_shipped

    return load_shipped()


def test_negative_prompt_truncation_is_reported(loaded_pipeline):
    from shanshui.runtime.pipeline import Request

    r = loaded_pipeline(Request("山", negative_prompt="雾 " * 300, steps=1, height=128, width=128))
    assert r.negative_truncated and not r.truncated


def test_safetensors_header_must_cover_the_file(tmp_path):
    src = DEFAULT_DIFFUSERS / "vae" / "diffusion_pytorch_model.safetensors"
    check_safetensors(src)
    data = src.read_bytes()
    for name, blob in (("cut", data[: len(data) - 1]), ("long", data + b"\0"), ("junk", b"\xff" * 64), ("tiny", b"")):
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(ShanshuiError):
            check_safetensors(tmp_path / name)


def test_memory_estimate_refuses_with_the_largest_size_that_fits(monkeypatch):
    # the measured points the constants were fitted to: 73 / 356 / 1156 MB at 256 / 512 / 768 px (within 35 %)
    for side, mb in ((256, 73), (512, 356), (768, 1156)):
        assert 0.65 < limits.activation_bytes(1, side, side) / (mb * 2**20) < 1.35
    monkeypatch.setattr(limits, "available_bytes", lambda: 4 * 2**30)
    limits.check_memory(1, 1024, 1024, 8, 32, 128)  # one image at 1024 px: ~2.7 GiB, fits
    with pytest.raises(ShanshuiError, match=r"largest that fits is about (\d+)x\1") as e:
        limits.check_memory(16, 1024, 1024, 8, 32, 128)
    side = int(str(e.value).split("largest that fits is about ")[-1].split("x")[0])
    assert limits.activation_bytes(16, side, side) <= 4 * 2**30 < limits.activation_bytes(16, side + 32, side + 32)


def test_remove_stale_temps_only_touches_its_names(tmp_path):
    (tmp_path / ".unet.abc12").mkdir()
    (tmp_path / ".unet.abc12" / "model.onnx").write_bytes(b"x")
    (tmp_path / ".candidate-xyz").mkdir()
    (tmp_path / ".shanshui_manifest.json.q1.tmp").write_text("{")
    (tmp_path / "unet").mkdir()
    (tmp_path / ".fp32").mkdir()
    removed = remove_stale_temps(tmp_path, ["unet", "vae_decoder", "shanshui_manifest.json", "candidate-"])
    assert len(removed) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [".fp32", "unet"]


def test_export_repairs_damage_and_clears_stale_temps(tiny_model, tiny_export, tmp_path):
    from shanshui.export.onnx_export import export_model

    out = tmp_path / "e"  # a hard-linked copy of the session's export (conftest: max_batch=2, the model's size)
    shutil.copytree(tiny_export, out, copy_function=os.link)
    events = []
    stale = out / ".vae_decoder.k1ll3d"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"half")
    f = out / "unet" / "model.onnx"
    data = bytearray(f.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4096] = bytes(4096)
    f.unlink()  # never write through the link into the shared export
    f.write_bytes(bytes(data))
    m = export_model(tiny_model, out, max_batch=2, on_event=lambda c, w: events.append((c, w)))
    assert ("unet", "export") in events and ("text_encoder", "skip") in events
    assert not stale.exists()
    verify_component(out, "unet", m["components"]["unet"])
    assert (out / "shanshui_manifest.json").stat().st_ino != (tiny_export / "shanshui_manifest.json").stat().st_ino


def test_atomic_writes_clear_their_stale_temps(tmp_path):
    (tmp_path / ".r.json.k1ll3d.tmp").write_text("{")  # left by a run killed while writing r.json
    (tmp_path / ".other.json.k1ll3d.tmp").write_text("{")
    write_json_atomic(tmp_path / "r.json", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.json.k1ll3d.tmp", "r.json"]
