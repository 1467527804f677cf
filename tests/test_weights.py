"""Weights load identically under transformers 4.x and 5.x, and a loader refuses missing or unexpected tensors."""

import json
import shutil

import numpy as np
import pytest

from shanshui.errors import ShanshuiError
from tests.peers import run_in_peer


def _keys(path):
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        return set(f.keys())


def test_text_encoder_is_saved_in_the_layout_transformers_4_reads(tiny_model):
    """transformers 4.x names CLIPTextModel weights `text_model.…`; a file without the prefix loads there as random."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig.from_pretrained(tiny_model / "text_encoder")
    current = set(CLIPTextModel(cfg).state_dict())  # 5.x: no prefix; 4.x: prefixed
    layout_4x = {k if k.startswith("text_model.") else "text_model." + k for k in current}
    assert _keys(tiny_model / "text_encoder" / "model.safetensors") == layout_4x


def test_saved_text_encoder_round_trips_exactly(tiny_model):
    import torch
    from safetensors.torch import load_file
    from transformers import CLIPTextModel

    from shanshui.weights import load_strict

    model = load_strict(CLIPTextModel, tiny_model / "text_encoder", "text encoder")
    saved = load_file(str(tiny_model / "text_encoder" / "model.safetensors"))
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k if k in saved else "text_model." + k]), k


@pytest.mark.parametrize("component,file", [("text_encoder", "model.safetensors"),
                                            ("unet", "diffusion_pytorch_model.safetensors")])
def test_missing_or_unexpected_weights_are_an_error(tiny_model, tmp_path, component, file):
    """diffusers and transformers both load such files with random weights and at most a log line; we refuse."""
    from safetensors.numpy import load_file, save_file

    from shanshui.export.onnx_export import export_model
    from shanshui.runtime.pipeline import open_pipeline

    src = tmp_path / "m"
    shutil.copytree(tiny_model, src)
    tensors = load_file(str(src / component / file))
    dropped = sorted(tensors)[3]
    tensors.pop(dropped)
    tensors["extra.weight"] = np.zeros(3, np.float32)
    save_file(tensors, str(src / component / file))
    with pytest.raises(ShanshuiError, match=r"do not fit .*1 missing .*1 unexpected \(extra.weight\)"):
        open_pipeline(src, backend="torch", device="cpu")
    with pytest.raises(ShanshuiError, match="do not fit"):
        export_model(src, tmp_path / "out", max_batch=1)


PEER_TEXT_ENCODER = r"""
import json, sys, numpy as np, torch, transformers
from transformers import CLIPTextModel
transformers.utils.logging.set_verbosity_error()
model, info = CLIPTextModel.from_pretrained(sys.argv[1], output_loading_info=True)
ids = torch.tensor(json.loads(sys.argv[2]))
with torch.no_grad():
    out = model(ids).last_hidden_state.numpy()
print(json.dumps({"version": transformers.__version__, "missing": len(info["missing_keys"]),
                  "unexpected": len(info["unexpected_keys"]), "out": out.tolist()}))
"""


def test_transformers_4_loads_the_init_text_encoder_identically(tiny_model):
    """Both ends of the declared range: transformers 4.57 (Optimum's pin, in the peer venv) and this venv's."""
    import torch
    from transformers import CLIPTextModel

    ids = [[2, 10, 20, 30, 3] + [0] * 59, [2, 99, 3] + [0] * 61]
    peer = run_in_peer(PEER_TEXT_ENCODER, str(tiny_model / "text_encoder"), json.dumps(ids))
    assert peer["version"].startswith("4.") and peer["missing"] == 0 and peer["unexpected"] == 0
    with torch.no_grad():
        ours = CLIPTextModel.from_pretrained(tiny_model / "text_encoder")(torch.tensor(ids)).last_hidden_state.numpy()
    assert np.abs(np.array(peer["out"]) - ours).max() < 1e-5
