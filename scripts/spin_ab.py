"""A/B: ONNX Runtime pool threads of the once-per-image components (text encoder, VAE decoder) spinning or not.

Alternates fresh processes of each setting, each timing generations after warm-up, and prints the per-pair ratio of
generation medians (B = the shipped setting, spinning only for the U-Net) and its median over pairs.

    python scripts/spin_ab.py [--model DIR] [--size 256] [--steps 25] [--pairs 6] [--gens 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np

CHILD = r"""
import json, sys, time
import numpy as np
import shanshui.runtime.backends as b
from shanshui.runtime.pipeline import Request, open_pipeline
a = json.loads(sys.argv[1])
if a["all_spin"]:
    b.SPINNING = {k: True for k in b.SPINNING}
pipe = open_pipeline(a["model"], backend="onnxruntime", device="cpu", threads=a["threads"])
req = Request(prompt="一棵青松，青山环绕，云雾缭绕", steps=a["steps"], guidance=7.5, seed=0, height=a["size"], width=a["size"])
for _ in range(2):
    pipe(req)
ts = []
for _ in range(a["gens"]):
    t = time.perf_counter(); pipe(req); ts.append(time.perf_counter() - t)
print(json.dumps({"median_s": float(np.median(ts)), "runs_s": ts}))
"""


def run(args, all_spin: bool) -> float:
    spec = {"model": args.model, "size": args.size, "steps": args.steps, "gens": args.gens, "threads": args.threads,
            "all_spin": all_spin}
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["median_s"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--pairs", type=int, default=6)
    ap.add_argument("--gens", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.model is None:
        from shanshui.models import default_model_path

        args.model = str(default_model_path())
    ratios = []
    for i in range(args.pairs):
        order = (True, False) if i % 2 == 0 else (False, True)  # alternate which goes first
        t = {s: run(args, s) for s in order}
        ratios.append(t[True] / t[False])
        print(f"pair {i}: all spinning {t[True]:.3f} s, U-Net only {t[False]:.3f} s, ratio {ratios[-1]:.3f}", flush=True)
    print(json.dumps({"size": args.size, "steps": args.steps, "threads": args.threads, "pairs": args.pairs,
                      "ratio_all_spinning_over_unet_only": {"median": float(np.median(ratios)), "min": min(ratios),
                                                             "max": max(ratios)}}))


if __name__ == "__main__":
    main()
