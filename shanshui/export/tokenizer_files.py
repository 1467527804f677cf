"""The tokenizer folder of an export: readable by transformers 4.x and 5.x, Optimum and our torch-free runtime.

A CLIP tokenizer gets both forms: `vocab.json` + `merges.txt` (transformers 4.x's `CLIPTokenizer`, which Optimum and
`model_index.json` name) and `tokenizer.json` (the fast tokenizer; our runtime). Other tokenizers (shanshui's
WordPiece) travel as `tokenizer.json` with their `PreTrainedTokenizerFast` config. The source's own files are kept.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from shanshui.errors import ShanshuiError
from shanshui.spec.clip_bpe import bpe_files_from_json, clip_tokenizer, special_tokens


def is_clip_bpe(folder: Path, index: dict) -> bool:
    cls = (index.get("tokenizer") or [None, None])[1] or ""
    cfg_path = Path(folder) / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    return (cls.startswith("CLIPTokenizer") or str(cfg.get("tokenizer_class", "")).startswith("CLIPTokenizer")
            or ((Path(folder) / "vocab.json").is_file() and (Path(folder) / "merges.txt").is_file()))


def write_tokenizer_folder(src: Path, dst: Path, index: dict) -> None:
    """Copy the tokenizer from `src` to `dst`, completing whichever form a reader needs."""

    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file():
            shutil.copy2(f, dst / f.name)
    if not is_clip_bpe(dst, index):
        if not (dst / "tokenizer.json").is_file():
            raise ShanshuiError(f"{src} has no tokenizer.json and is not a CLIP BPE tokenizer; re-save it with transformers")
        return
    if not (dst / "tokenizer.json").is_file():
        clip_tokenizer(dst).save(str(dst / "tokenizer.json"))
    if not ((dst / "vocab.json").is_file() and (dst / "merges.txt").is_file()):
        bpe_files_from_json(dst / "tokenizer.json", dst)
    if not (dst / "special_tokens_map.json").is_file():
        tokens = special_tokens(dst)
        (dst / "special_tokens_map.json").write_text(json.dumps(tokens, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
