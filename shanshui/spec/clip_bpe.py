"""CLIP's byte-level BPE tokenizer from `vocab.json` + `merges.txt`, with the `tokenizers` library only (no transformers).

Stable Diffusion folders written by transformers 4.x (and Optimum's ONNX exports) ship their CLIP tokenizer as these
two files; transformers 5 writes only `tokenizer.json`; transformers 4.x's slow `CLIPTokenizer` needs the two files.
This module converts either way, so the runtime stays torch-free and every folder we write has both forms.
The pipeline (lower-cased NFC text, CLIP's split pattern, byte-level BPE with `</w>` word ends, BOS … EOS) is the
one CLIP's fast tokenizer uses; tests compare it with transformers' own tokenizers token for token.
"""

from __future__ import annotations

import json
from pathlib import Path

from shanshui.errors import ShanshuiError

CLIP_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def token_text(value) -> str | None:
    """A special token as tokenizer configs store it: a string or {"content": …}."""
    return value.get("content") if isinstance(value, dict) else value


def special_tokens(folder: Path) -> dict[str, str]:
    """bos/eos/unk/pad tokens from tokenizer_config.json and special_tokens_map.json (CLIP's defaults otherwise)."""
    found = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = Path(folder) / name
        if path.is_file():
            cfg = json.loads(path.read_text(encoding="utf-8"))
            found.update({k: token_text(cfg[k]) for k in ("bos_token", "eos_token", "unk_token", "pad_token") if cfg.get(k)})
    found.setdefault("pad_token", found["eos_token"])
    return found


def read_merges(path: Path) -> list[tuple[str, str]]:
    merges = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.startswith("#version") or not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ShanshuiError(f"{path} has a malformed merge line {line!r}; re-save the tokenizer")
        merges.append((parts[0], parts[1]))
    return merges


def clip_tokenizer(folder: Path):
    """A `tokenizers.Tokenizer` for the CLIP BPE files in `folder`."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    folder = Path(folder)
    try:
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        merges = read_merges(folder / "merges.txt")
    except (OSError, ValueError) as e:
        raise ShanshuiError(f"cannot read the CLIP tokenizer in {folder.name}/: {e}; re-save the model's tokenizer") from None
    tokens = special_tokens(folder)
    missing = [t for t in (tokens["bos_token"], tokens["eos_token"]) if t not in vocab]
    if missing:
        raise ShanshuiError(f"{folder.name}/vocab.json lacks {', '.join(missing)}; it is not a CLIP tokenizer")
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=tokens["unk_token"], continuing_subword_prefix="",
                               end_of_word_suffix="</w>", fuse_unk=False))
    specials = sorted({t for t in tokens.values() if t in vocab}, key=vocab.get)
    tok.add_special_tokens(specials)
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    split = "|".join(_escape(t) for t in specials) + "|" + CLIP_SPLIT
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    bos, eos = tokens["bos_token"], tokens["eos_token"]
    tok.post_processor = processors.RobertaProcessing((eos, vocab[eos]), (bos, vocab[bos]), trim_offsets=False,
                                                      add_prefix_space=False)
    return tok


def _escape(token: str) -> str:
    import re

    return re.escape(token).replace("\\<", "<").replace("\\>", ">")


def bpe_files_from_json(tokenizer_json: Path, folder: Path) -> None:
    """vocab.json + merges.txt from a BPE tokenizer.json (what transformers 5 writes), for transformers 4.x."""
    model = json.loads(Path(tokenizer_json).read_text(encoding="utf-8")).get("model", {})
    if model.get("type") != "BPE":
        raise ShanshuiError(f"{Path(tokenizer_json).name} holds a {model.get('type')} model, not CLIP's BPE")
    vocab = dict(model["vocab"])
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    (Path(folder) / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (Path(folder) / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges), encoding="utf-8")
