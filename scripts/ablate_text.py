"""Short ablations of what makes the prompt reach the painting (issue 12), scored by eval's prompt swap.

    python scripts/ablate_text.py NAME DATA VAE OUT_ROOT [--steps 500] [--size 128] [--seeds 4]

NAME picks a recipe from ABLATIONS. Each run trains text encoder + U-Net from scratch on the same data, seeds and
cached latents (copied from OUT_ROOT/latents-SIZE.safetensors when present), then paints the prompt-swap set with
the PyTorch backend and writes OUT_ROOT/NAME/ablation.json: per-attribute classifier accuracy over its ceiling,
the three colour contrasts per seed, and the U-Net's conditional effect size. Run two at once with
OMP_NUM_THREADS=1 on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

ABLATIONS = {  # name → UnetConfig overrides
    "baseline": dict(prediction_type="epsilon", zero_snr=False, text_time_embed=False, text_pretrain_steps=0),
    "zero_snr_v": dict(prediction_type="v_prediction", zero_snr=True, text_time_embed=False, text_pretrain_steps=0),
    "pooled_text": dict(prediction_type="epsilon", zero_snr=False, text_time_embed=True, text_pretrain_steps=0),
    "text_pretrain": dict(prediction_type="epsilon", zero_snr=False, text_time_embed=False, text_pretrain_steps=300),
    "all": dict(prediction_type="v_prediction", zero_snr=True, text_time_embed=True, text_pretrain_steps=300),
    # the captions: a new true caption drawn from each rendered painting's scene at every visit, or the two it has
    "fresh_captions": dict(text_pretrain_steps=300, fresh_captions=True),
    "stored_captions": dict(text_pretrain_steps=300, fresh_captions=False),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("name", choices=sorted(ABLATIONS))
    ap.add_argument("data", type=Path)
    ap.add_argument("vae", type=Path)
    ap.add_argument("root", type=Path)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--lr", type=float, default=4e-4)
    args = ap.parse_args()

    from shanshui.runtime.pipeline import open_pipeline
    from shanshui.eval.evaluate import prompt_swap, train_classifier
    from shanshui.train.unet import UnetConfig, train_unet

    out = args.root / args.name
    out.mkdir(parents=True, exist_ok=True)
    shared = args.root / f"latents-{args.size}.safetensors"
    if shared.is_file() and not (out / "latents.safetensors").is_file():
        shutil.copy2(shared, out / "latents.safetensors")
    cfg = UnetConfig(size=args.size, batch=args.batch, steps=args.steps, lr=args.lr, warmup=100, sample_every=0,
                     checkpoint_every=args.steps, **ABLATIONS[args.name])
    t0 = time.perf_counter()
    train_unet(args.data, out, args.vae, cfg)
    train_s = time.perf_counter() - t0
    if not shared.is_file():
        shutil.copy2(out / "latents.safetensors", shared)
    net, ceiling = train_classifier()
    pipe = open_pipeline(out, backend="torch", threads=1)
    report = prompt_swap(pipe, net, ceiling, seeds=args.seeds, langs=("zh",), grid=out / "swap-grid.png")
    report.update(name=args.name, recipe=ABLATIONS[args.name], steps=args.steps, size=args.size, batch=args.batch,
                  train_seconds=round(train_s, 1))
    (out / "ablation.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps({k: report[k] for k in ("name", "mean_of_ceiling", "of_ceiling", "contrasts", "effect_size", "train_seconds")},
                     ensure_ascii=False))


if __name__ == "__main__":
    main()
