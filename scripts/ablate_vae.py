"""Short VAE ablations for issue 12: does a painting's style, season and time of day survive the VAE?

    python scripts/ablate_vae.py NAME DATA OUT_ROOT [--steps 600] [--crop 128] [--batch 8] [--lr 1e-3]

NAME picks a recipe from ABLATIONS. Each run trains a VAE from scratch on the same data and seed, then scores it
the way `shanshui eval` would see its images: eval's attribute classifier reads reconstructions of held-out renders
(the ceiling any U-Net can reach through this VAE), beside the same renders unchanged; plus PSNR/SSIM and the mean
colour shift. Writes OUT_ROOT/NAME/ablation.json. Run two at once with OMP_NUM_THREADS=1 on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ABLATIONS = {  # name → VaeConfig overrides
    "pixel": dict(),  # L1 + MSE only (the recipe of the VAE shipped before)
    "colour": dict(colour_weight=2.0),
    "colour_edge": dict(colour_weight=2.0, edge_weight=0.5),
    "colour_edge_g8": dict(colour_weight=2.0, edge_weight=0.5, norm_groups=8),
    "colour_edge_g1": dict(colour_weight=2.0, edge_weight=0.5, norm_groups=1),
    "colour20_edge_g1": dict(colour_weight=20.0, edge_weight=0.5, norm_groups=1),
    "colour_edge_g1_c8": dict(colour_weight=2.0, edge_weight=0.5, norm_groups=1, latent_channels=8),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("name", choices=sorted(ABLATIONS))
    ap.add_argument("data", type=Path)
    ap.add_argument("root", type=Path)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--images", type=int, default=300)
    args = ap.parse_args()

    from shanshui.eval.evaluate import train_classifier, vae_readability
    from shanshui.train.vae import VaeConfig, train_vae

    out = args.root / args.name
    cfg = VaeConfig(steps=args.steps, crop=args.crop, batch=args.batch, lr=args.lr, warmup=50, max_images=2000,
                    checkpoint_every=args.steps, **ABLATIONS[args.name])
    t0 = time.perf_counter()
    report = train_vae(args.data, out, cfg)
    train_s = time.perf_counter() - t0
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(out)).eval()
    report.update(name=args.name, recipe=ABLATIONS[args.name], train_seconds=round(train_s),
                  readability=vae_readability(vae, "cpu", args.images, train_classifier()[0]))
    (out / "ablation.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
