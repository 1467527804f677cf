"""Export: layout, per-component parity against PyTorch, skipping unchanged work, atomicity, foreign SD folders."""

import json

import numpy as np
import pytest

from shanshui.errors import ShanshuiError
from shanshui.spec.contract import components
from shanshui.spec.manifest import MANIFEST, open_exported
from shanshui.export.onnx_export import export_model
from shanshui.spec.source import resolve_source_ref, source_ref


def test_source_ref_is_relative_or_a_bare_name(tmp_path):
    src, near, far = tmp_path / "m" / "tiny", tmp_path / "exports" / "x", tmp_path / "a" / "b" / "c" / "d" / "x"
    assert source_ref(src, near) == "../../m/tiny"
    assert source_ref(src, far) == "tiny"  # would spell out directories: the name alone
    assert resolve_source_ref("tiny", far) is None


def test_layout_and_manifest(tiny_model, tiny_export):
    m = json.loads((tiny_export / MANIFEST).read_text())
    for comp in ("text_encoder", "unet", "vae_decoder", "vae_encoder"):
        assert (tiny_export / comp / "model.onnx").is_file()
        assert (tiny_export / comp / "config.json").is_file()
        entry = m["components"][comp]
        assert entry["key"]["source_hash"] == m["source"]["hashes"][comp]
        assert [t["name"] for t in entry["inputs"]] == [t.name for t in components(open_exported(tiny_export).dims)[comp].inputs]
        assert entry["files"]["model.onnx"] == (tiny_export / comp / "model.onnx").stat().st_size
        mins, opts, maxs = zip(*entry["profile"].values())
        assert all(np.all(np.array(a) <= np.array(b)) for a, b in zip(mins, opts))
        assert all(np.all(np.array(a) <= np.array(b)) for a, b in zip(opts, maxs))
    for f in ("model_index.json", "scheduler/scheduler_config.json", "tokenizer/tokenizer.json"):
        assert (tiny_export / f).is_file(), f
    assert m["tokenizer"] == {"max_length": 64, "pad_token": "[PAD]", "pad_id": 0}
    assert not list(tiny_export.glob(".*")), "temporary files were left behind"
    text = (tiny_export / MANIFEST).read_text()
    assert str(tiny_export.parent.parent) not in text  # no absolute path of this machine
    assert resolve_source_ref(m["source"]["path"], tiny_export) == tiny_model.resolve()  # found again, relatively
    from shanshui.fsutil import umask

    for f in (tiny_export / MANIFEST, tiny_export / "unet" / "model.onnx"):
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask(), f"{f} has unusual permissions"


def test_each_component_matches_pytorch(tiny_model, tiny_export):
    """Our own check, independent of the exporter's: ONNX Runtime vs PyTorch on fresh inputs at a non-default shape."""
    import onnxruntime as ort
    import torch

    from shanshui.hf import load_component
    from shanshui.spec.source import open_source

    source = open_source(tiny_model)
    values = {"B2": 2, "B": 1, "h": 24, "w": 40, "H": 192, "W": 320}
    for name, spec in components(source.dims).items():
        feeds = spec.sample_inputs(source.dims, values, seed=7)
        sess = ort.InferenceSession(str(tiny_export / name / "model.onnx"), providers=["CPUExecutionProvider"])
        got = sess.run(None, feeds)
        with torch.no_grad():
            ref = load_component(source, name)(*[torch.from_numpy(v) for v in feeds.values()])
        ref = ref if isinstance(ref, tuple) else (ref,)
        for g, r in zip(got, ref):
            r = r.numpy()
            assert g.shape == r.shape
            assert np.abs(g - r).max() <= spec.atol + spec.rtol * np.abs(r).max(), name


def test_rerun_skips_unchanged_components(tiny_model, tiny_export):
    before = {c: (tiny_export / c / "model.onnx").stat().st_mtime_ns for c in ("text_encoder", "unet", "vae_decoder", "vae_encoder")}
    events = []
    export_model(tiny_model, tiny_export, max_batch=2, on_event=lambda c, e: events.append((c, e)))
    assert sorted(events) == sorted((c, "skip") for c in before)
    assert before == {c: (tiny_export / c / "model.onnx").stat().st_mtime_ns for c in before}


def test_failed_parity_writes_nothing(tiny_model, tmp_path, monkeypatch):
    """A component that misses its tolerance raises a clear error and leaves no model.onnx and no manifest entry."""
    import dataclasses

    import shanshui.export.onnx_export as ex

    real = ex.components

    def strict(dims):
        specs = real(dims)
        specs["unet"] = dataclasses.replace(specs["unet"], atol=-1.0, rtol=0.0)  # nothing can pass
        return specs

    monkeypatch.setattr(ex, "components", strict)
    out = tmp_path / "exp"
    with pytest.raises(ShanshuiError, match="unet.out_sample: ONNX differs from PyTorch"):
        export_model(tiny_model, out, max_batch=2)
    assert not (out / "unet" / "model.onnx").exists()
    manifest = json.loads((out / MANIFEST).read_text())
    assert "unet" not in manifest["components"] and "text_encoder" in manifest["components"]
    assert not list(out.glob(".*")), "temporary folders were left behind"
    monkeypatch.setattr(ex, "components", real)
    events = []
    export_model(tiny_model, out, max_batch=2, on_event=lambda c, e: events.append((c, e)))
    assert ("text_encoder", "skip") in events and ("unet", "export") in events


def test_changed_weights_are_re_exported(tiny_model, tmp_path):
    import shutil

    src = tmp_path / "model"
    shutil.copytree(tiny_model, src)
    out = tmp_path / "exp"
    export_model(src, out, max_batch=1)
    weights = src / "vae" / "diffusion_pytorch_model.safetensors"
    from safetensors.numpy import load_file, save_file

    tensors = load_file(weights)
    name = next(k for k in tensors if k.startswith("decoder.conv_out.bias"))
    tensors[name] = tensors[name] + 0.5
    save_file(tensors, weights)
    events = []
    export_model(src, out, max_batch=1, on_event=lambda c, e: events.append((c, e)))
    assert ("vae_decoder", "export") in events and ("unet", "skip") in events


@pytest.mark.parametrize("case", ["missing", "not_a_model", "pickle_weights"])
def test_bad_model_folder(tiny_model, tmp_path, case):
    import shutil

    if case == "missing":
        src, match = tmp_path / "nope", "does not exist"
    elif case == "not_a_model":
        src, match = tmp_path, "not a diffusers pipeline folder"
        (tmp_path / "readme.txt").write_text("hello")
    else:
        src, match = tmp_path / "m", "pickle weights are never loaded"
        shutil.copytree(tiny_model, src)
        w = src / "unet" / "diffusion_pytorch_model.safetensors"
        w.rename(w.with_suffix(".bin"))
    with pytest.raises(ShanshuiError, match=match):
        export_model(src, tmp_path / "out")


def test_size_not_a_multiple_is_refused(tiny_model, tmp_path):
    with pytest.raises(ShanshuiError, match="multiple of 32"):
        export_model(tiny_model, tmp_path / "out", height=200)


def test_foreign_sd_folder_with_clip_tokenizer(tmp_path):
    """A plain diffusers StableDiffusionPipeline folder (CLIP BPE tokenizer files, PNDM scheduler) exports and runs."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    import torch

    torch.manual_seed(0)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), model_max_length=16, pad_token="<|endoftext|>")
    te = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                attention_head_dim=2, norm_num_groups=32)
    vae = AutoencoderKL(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=32, sample_size=16)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=PNDMScheduler(skip_prk_steps=True, steps_offset=1),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    src = tmp_path / "sd"
    pipe.save_pretrained(src, safe_serialization=True)
    (src / "tokenizer" / "tokenizer.json").unlink(missing_ok=True)  # only the BPE files, as older SD folders ship
    for name in ("vocab.json", "merges.txt"):  # transformers 5 saves a CLIPTokenizer as tokenizer.json alone
        (src / "tokenizer" / name).write_text((tmp_path / name).read_text())
    out = tmp_path / "sd-onnx"
    m = export_model(src, out, height=32, width=32, max_batch=1)
    assert m["tokenizer"]["pad_token"] == "<|endoftext|>" and (out / "tokenizer" / "tokenizer.json").is_file()

    from shanshui.runtime.pipeline import Request, open_pipeline

    result = open_pipeline(out)(Request("a quiet lake", steps=3, height=32, width=32))
    assert result.images[0].shape == (32, 32, 3)


def test_trained_resolution_is_the_default_size(tiny_model, tmp_path):
    import shutil

    from shanshui.spec.source import model_resolution

    assert model_resolution(tiny_model) == 256
    src = tmp_path / "m"
    shutil.copytree(tiny_model, src)
    meta = json.loads((src / "shanshui.json").read_text())
    (src / "shanshui.json").write_text(json.dumps({**meta, "resolution": 128}))
    assert model_resolution(src) == 128
