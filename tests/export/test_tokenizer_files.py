"""Tokenizer folders that transformers (4.57 and 5.x), Optimum and our runtime all read, consistent with model_index."""

import json

import numpy as np
import pytest

from tests.peers import run_in_peer

PROMPTS = ["a quiet lake at dusk", "Hello  World!! 123", "the thing, in ink", "it's snowing", "<|endoftext|> in"]


@pytest.fixture(scope="module")
def clip_sd(tmp_path_factory):
    """A plain diffusers StableDiffusionPipeline folder with a CLIP BPE tokenizer (random weights, tiny)."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tmp = tmp_path_factory.mktemp("clip")
    torch.manual_seed(0)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz!',0123456789":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    merges = [("t", "h"), ("th", "e</w>"), ("i", "n"), ("in", "g</w>"), ("l", "a")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    (tmp / "vocab.json").write_text(json.dumps(vocab))
    (tmp / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tok = CLIPTokenizer(str(tmp / "vocab.json"), str(tmp / "merges.txt"), model_max_length=16, pad_token="<|endoftext|>")
    te = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                attention_head_dim=2, norm_num_groups=32)
    vae = AutoencoderKL(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=32, sample_size=16)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=EulerDiscreteScheduler(),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    src = tmp / "sd"
    pipe.save_pretrained(src, safe_serialization=True)  # transformers 5: tokenizer.json + config only
    return src


def test_clip_bpe_matches_transformers(clip_sd, tmp_path):
    from transformers import CLIPTokenizer

    from shanshui.spec.clip_bpe import bpe_files_from_json, clip_tokenizer

    folder = clip_sd / "tokenizer"
    bpe_files_from_json(folder / "tokenizer.json", tmp_path)  # also checks the JSON → files direction
    (tmp_path / "tokenizer_config.json").write_text((folder / "tokenizer_config.json").read_text())
    ours = clip_tokenizer(tmp_path)
    ref = CLIPTokenizer.from_pretrained(folder)
    for p in PROMPTS:
        assert ours.encode(p).ids == ref(p)["input_ids"], p


def test_export_writes_both_forms_and_transformers_reads_them(clip_sd, tmp_path):
    from transformers import AutoTokenizer, CLIPTokenizerFast

    from shanshui.export.onnx_export import export_model
    from shanshui.runtime.tokenizer import open_tokenizer

    out = tmp_path / "onnx"
    export_model(clip_sd, out, height=32, width=32, max_batch=1)
    tok_dir = out / "tokenizer"
    for f in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tok_dir / f).is_file(), f
    index = json.loads((out / "model_index.json").read_text())
    assert index["tokenizer"][1] == "CLIPTokenizer"
    ours = open_tokenizer(tok_dir)(PROMPTS)[0]
    for cls in (AutoTokenizer, CLIPTokenizerFast):
        ref = cls.from_pretrained(tok_dir)(PROMPTS, padding="max_length", max_length=16, truncation=True)["input_ids"]
        np.testing.assert_array_equal(ours, np.array(ref))
    peer = run_in_peer(PEER_TOKENIZERS, str(tok_dir), json.dumps(PROMPTS), "CLIPTokenizer")
    assert peer["version"].startswith("4.")
    for name, ids in peer["ids"].items():
        np.testing.assert_array_equal(ours, np.array(ids), err_msg=name)


def test_generate_runs_a_diffusers_folder_with_only_clip_bpe_files(clip_sd, tmp_path):
    import shutil

    from shanshui.runtime.pipeline import Request, open_pipeline

    src = tmp_path / "sd"
    shutil.copytree(clip_sd, src)
    from shanshui.spec.clip_bpe import bpe_files_from_json

    bpe_files_from_json(src / "tokenizer" / "tokenizer.json", src / "tokenizer")
    (src / "tokenizer" / "tokenizer.json").unlink()  # as transformers 4.x saves a CLIPTokenizer
    result = open_pipeline(src, backend="torch", device="cpu")(Request("a quiet lake", steps=2, height=32, width=32))
    assert result.images[0].shape == (32, 32, 3)


PEER_TOKENIZERS = r"""
import json, sys, transformers
from transformers import AutoTokenizer
transformers.utils.logging.set_verbosity_error()
folder, prompts, cls = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
classes = {"AutoTokenizer": AutoTokenizer, cls: getattr(transformers, cls)}
if cls == "CLIPTokenizer":
    classes["CLIPTokenizerFast"] = transformers.CLIPTokenizerFast
n = json.load(open(folder + "/tokenizer_config.json")).get("model_max_length", 77)
ids = {name: c.from_pretrained(folder)(prompts, padding="max_length", max_length=n, truncation=True)["input_ids"]
       for name, c in classes.items()}
print(json.dumps({"version": transformers.__version__, "ids": ids}))
"""


def test_shipped_style_tokenizer_loads_in_transformers(tiny_model):
    """shanshui's WordPiece tokenizer (PreTrainedTokenizerFast, as model_index names it) in both transformers."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from shanshui.runtime.tokenizer import open_tokenizer

    folder = tiny_model / "tokenizer"
    index = json.loads((tiny_model / "model_index.json").read_text())
    assert index["tokenizer"][1] == json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"]
    prompts = ["一棵青松，青山环绕", "a pine on a cliff"]
    ours = open_tokenizer(folder)(prompts)[0]
    for cls in (AutoTokenizer, PreTrainedTokenizerFast):
        ref = cls.from_pretrained(folder)(prompts, padding="max_length", max_length=64, truncation=True)["input_ids"]
        np.testing.assert_array_equal(ours, np.array(ref))
    peer = run_in_peer(PEER_TOKENIZERS, str(folder), json.dumps(prompts), "PreTrainedTokenizerFast")
    for name, ids in peer["ids"].items():
        np.testing.assert_array_equal(ours, np.array(ids), err_msg=name)
