"""Prompt → token ids with the `tokenizers` library (no transformers needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from shanshui.errors import ShanshuiError
from shanshui.spec.clip_bpe import clip_tokenizer, special_tokens


class PromptTokenizer:
    """Fixed-length encoding: the tokenizer's own special tokens, truncated and padded to max_length."""

    def __init__(self, tokenizer_json, max_length: int, pad_token: str):
        """`tokenizer_json`: a tokenizer.json path, or a `tokenizers.Tokenizer` already built."""
        from tokenizers import Tokenizer

        try:
            self.tok = tokenizer_json if isinstance(tokenizer_json, Tokenizer) else Tokenizer.from_file(str(tokenizer_json))
        except Exception as e:  # tokenizers raises plain Exception subclasses for unreadable files
            raise ShanshuiError(f"cannot read tokenizer {tokenizer_json}: {e}") from None
        pad_id = self.tok.token_to_id(pad_token)
        if pad_id is None:
            raise ShanshuiError(f"pad token {pad_token!r} is not in {tokenizer_json}")
        self.max_length = int(max_length)
        self.tok.enable_truncation(max_length=self.max_length)
        self.tok.enable_padding(length=self.max_length, pad_id=pad_id, pad_token=pad_token)

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, list[bool]]:
        """(ids (N, max_length) int64, whether each text was truncated)."""
        encs = self.tok.encode_batch(list(texts))
        ids = np.array([e.ids for e in encs], dtype=np.int64)
        return ids, [bool(e.overflowing) for e in encs]


def open_tokenizer(folder: Path, max_length: int | None = None, pad_token: str | None = None) -> PromptTokenizer:
    """The tokenizer in a model or export folder; settings default to its tokenizer_config.json."""
    folder = Path(folder)
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    source = folder / "tokenizer.json"
    if not source.is_file():
        if not ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()):
            raise ShanshuiError(f"{folder} has neither tokenizer.json nor CLIP's vocab.json + merges.txt; "
                                "re-save the model's tokenizer with transformers")

        source = clip_tokenizer(folder)  # a CLIP BPE tokenizer as transformers 4.x saves it
        cfg = {**special_tokens(folder), **cfg}
    pad = pad_token or cfg.get("pad_token")
    pad = pad.get("content") if isinstance(pad, dict) else pad
    length = max_length or int(cfg.get("model_max_length", 77))
    if not 0 < length <= 4096:
        length = 77
    return PromptTokenizer(source, length, pad or "[PAD]")
