"""Put a trained model inside the package as the shipped default: its export beside fp16 safetensors.

    python scripts/ship_model.py MODEL_DIR EXPORT_DIR [--dest shanshui/models/default] [--limit-mb 80]

MODEL_DIR is a diffusers folder from `shanshui train unet`; EXPORT_DIR its export (`shanshui export MODEL_DIR OUT
--precision int8`, gated). Writes DEST/diffusers (weights cast to fp16; training leftovers such as checkpoints,
cached latents and sample grids are left out) and DEST/onnx (the export without its fp32 reference copy), then
checks the total against the size budget. The old DEST is replaced only when the new one is complete.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

SKIP = {"checkpoints", "samples", "latents.safetensors", "loss.jsonl"}


def fp16_copy(src: Path, dst: Path) -> None:
    """Copy a diffusers folder, every floating-point safetensors tensor cast to float16."""
    from safetensors.torch import load_file, save_file

    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if any(part in SKIP or part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        out = dst / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".safetensors":
            from shanshui.weights import portable_key

            rename = portable_key if rel.parts[0] == "text_encoder" else (lambda k: k)  # keys transformers 4.x and 5.x load
            tensors = {rename(k): (v.half() if v.is_floating_point() else v) for k, v in load_file(str(path)).items()}
            save_file(tensors, str(out), metadata={"format": "pt"})
        elif path.suffix in (".json", ".txt"):
            shutil.copy2(path, out)


def export_copy(src: Path, dst: Path) -> None:
    """Copy an export without hidden folders (the fp32 reference, candidates); paths in the manifest made relative."""
    from shanshui.spec.manifest import MANIFEST

    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dst / rel)
    manifest = json.loads((dst / MANIFEST).read_text(encoding="utf-8"))
    for key in ("out_dir", "source_export", "model_dir", "source"):
        if isinstance(manifest.get(key), str):
            manifest[key] = Path(manifest[key]).name
    if isinstance(manifest.get("source"), dict) and manifest["source"].get("path"):
        manifest["source"]["path"] = "../diffusers"  # the shipped fp16 copy of the model this was exported from
    (dst / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("export", type=Path)
    ap.add_argument("--dest", type=Path, default=Path(__file__).resolve().parent.parent / "shanshui" / "models" / "default")
    ap.add_argument("--limit-mb", type=float, default=80.0)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix=".ship-", dir=args.dest.parent))
    try:
        fp16_copy(args.model, tmp / "diffusers")
        export_copy(args.export, tmp / "onnx")
        from shanshui.fsutil import drop_load_path

        for config in tmp.rglob("config.json"):  # no folder of the training machine in what ships
            drop_load_path(config)
        sizes = {}
        for path in sorted(tmp.rglob("*")):
            if path.is_file():
                top = "/".join(path.relative_to(tmp).parts[:2])
                sizes[top] = sizes.get(top, 0) + path.stat().st_size
        total = sum(sizes.values())
        for k, v in sizes.items():
            print(f"{k:28s} {v / 1e6:8.2f} MB")
        print(f"{'total':28s} {total / 1e6:8.2f} MB (limit {args.limit_mb} MB)")
        if total > args.limit_mb * 1e6:
            raise SystemExit(f"error: {total / 1e6:.1f} MB is over the {args.limit_mb} MB budget; nothing was changed")
        old = args.dest.with_name(args.dest.name + ".old")
        if args.dest.exists():
            args.dest.rename(old)
        tmp.rename(args.dest)
        shutil.rmtree(old, ignore_errors=True)
        print(f"wrote {args.dest}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
