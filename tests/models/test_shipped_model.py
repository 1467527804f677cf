"""The default model inside the package: present, within its size budget, loadable by both backends, and gated."""

import json

import numpy as np
import pytest

from shanshui.models import DEFAULT_DIFFUSERS, DEFAULT_ONNX, default_model_path, default_source_path

BUDGET_BYTES = 80_000_000


def test_the_package_ships_a_default_model_within_budget():
    assert default_model_path() == DEFAULT_ONNX and default_source_path() == DEFAULT_DIFFUSERS
    total = sum(p.stat().st_size for p in DEFAULT_ONNX.parent.rglob("*") if p.is_file())
    assert total <= BUDGET_BYTES, f"{total / 1e6:.1f} MB"
    weights = [p for p in DEFAULT_DIFFUSERS.rglob("*.safetensors")]
    assert {p.parent.name for p in weights} == {"text_encoder", "unet", "vae"}


def test_nothing_shipped_or_documented_names_a_folder_of_the_machine_it_was_made_on():
    """JSON shipped in the package or committed under docs/ holds no absolute path (training and export machines' folders)."""
    import re
    from pathlib import Path

    docs = Path(__file__).resolve().parents[2] / "docs"
    absolute = re.compile(r'"(/(?:work|root|home|tmp|Users|var|opt|mnt)/[^"]*|[A-Za-z]:\\\\[^"]*)"')
    files = list(DEFAULT_ONNX.parent.rglob("*.json")) + list(docs.rglob("*.json"))
    assert len(files) > 20
    found = {str(f.name): m.group(1) for f in files for m in [absolute.search(f.read_text(encoding="utf-8"))] if m}
    assert not found, found


def test_shipped_export_passed_its_gate_and_says_what_it_is():
    m = json.loads((DEFAULT_ONNX / "shanshui_manifest.json").read_text(encoding="utf-8"))
    assert m["gate"]["passed"] and m["gate"]["worst"]["psnr_db"] >= m["gate"]["floors"]["psnr_db"]
    assert m["quantization"]["unet"]["precision"] == "int8"

    def values(x):
        if isinstance(x, dict):
            for v in x.values():
                yield from values(v)
        elif isinstance(x, list):
            for v in x:
                yield from values(v)
        else:
            yield x

    roots = ("/work/", "/tmp/", "/home/", "/root/", "/Users/", "/mnt/", "/opt/", "/var/", "~")  # ONNX node names start "/m/"
    build_paths = [v for v in values(m) if isinstance(v, str) and (v.startswith(roots) or ":\\" in v)]
    assert not build_paths  # nothing of the machine it was built on


@pytest.mark.parametrize("component", ["text_encoder", "unet", "vae_decoder"])
def test_shipped_graphs_pass_onnx_checker(component):
    pytest.importorskip("onnx")  # in the dev extra; the lean runtime does not need it
    from shanshui.export.graph_check import check_onnx

    check_onnx(DEFAULT_ONNX / component / "model.onnx")  # topologically sorted, full check


def test_generate_without_a_model_uses_the_shipped_export():
    from shanshui.runtime.pipeline import Request, open_pipeline

    pipe = open_pipeline(threads=1)
    assert pipe.backend == "onnxruntime" and pipe.root == DEFAULT_ONNX
    result = pipe(Request("一棵青松，青山环绕，云雾缭绕", steps=3, seed=0))
    image = result.images[0]
    assert image.shape == (*pipe.default_size, 3) and image.std() > 2  # a picture, not a flat field


def test_shipped_fp16_safetensors_load_in_pytorch():
    pytest.importorskip("diffusers")
    from shanshui.runtime.backends import TorchComponents

    parts = TorchComponents.from_folder(DEFAULT_DIFFUSERS, device="cpu", threads=1)
    ids = np.zeros((2, parts.te.config.max_position_embeddings), np.int64)
    assert np.isfinite(parts.text_encoder(ids)).all()


def test_shipped_model_paints_what_the_prompt_says():
    """Issue 12: same seed, prompts differing in time of day or style, no torch: the painting changes the way the
    words say (eval's prompt swap measures the same contrasts over 12 seeds and both languages)."""
    from shanshui.runtime.pipeline import Request, open_pipeline
    from shanshui.eval.evaluate import colour_stats

    pipe = open_pipeline(threads=1)
    prompts = {"day": "晴日当空，青山环绕", "night": "明月当空，青山环绕", "dusk": "夕阳西下，青山环绕",
               "ink": "水墨山水，青山环绕", "blue_green": "青绿山水，青山环绕"}
    for seed in (0, 1):
        stats = {k: colour_stats(pipe(Request(p, steps=12, seed=seed)).images[0]) for k, p in prompts.items()}
        assert stats["night"]["luminance"] < stats["day"]["luminance"] - 10, (seed, stats)
        assert stats["dusk"]["warmth"] > stats["night"]["warmth"], (seed, stats)
        assert stats["blue_green"]["greenness"] > stats["ink"]["greenness"], (seed, stats)
