"""Foundation measurements, side by side in one run: export time of the SD 1.5 shapes, and one U-Net call
(latent 32×32, batch 2) in PyTorch eager fp32 vs ONNX Runtime fp32 with the same thread count.

    python scripts/measure_foundation.py --work /tmp/sd15-measure --threads 2 --repeats 7

Timings are interleaved (torch, ort, torch, ort, …) so machine noise hits both alike; medians and the spread are
reported, with the ratio. Writes a JSON next to the work folder. Not a test: benchmarks live in scripts and `shanshui bench`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/sd15-measure"))
    ap.add_argument("--arch", default="sd15")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--latent", type=int, default=32)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import numpy as np
    import onnxruntime as ort
    import torch

    from shanshui.hf import load_component
    from shanshui.export.onnx_export import export_model
    from shanshui.spec.source import open_source
    from shanshui.train.arch import init_model

    torch.set_num_threads(args.threads)
    model_dir, onnx_dir = args.work / args.arch, args.work / f"{args.arch}-onnx"
    report: dict = {"arch": args.arch, "threads": args.threads, "machine": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "torch": torch.__version__, "onnxruntime": ort.__version__}
    if not model_dir.exists():
        t = time.perf_counter()
        init_model(args.arch, model_dir)
        report["init_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    m = export_model(model_dir, onnx_dir, max_batch=1, on_event=lambda c, e: print(f"{c}: {e}", flush=True))
    report["export_total_s"] = round(time.perf_counter() - t, 1)  # trace + save + parity checks, all components
    report["export_trace_s"] = {k: v["export_seconds"] for k, v in m["components"].items()}
    report["onnx_bytes"] = m["files_bytes"]
    report["parity_max_abs_error"] = {k: max(p["max_abs_error"] for p in v["parity"]) for k, v in m["components"].items()}

    source = open_source(model_dir)
    unet = load_component(source, "unet")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = args.threads, 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # spinning ORT threads would slow the torch calls
    sess = ort.InferenceSession(str(onnx_dir / "unet" / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"sample": rng.standard_normal((2, 4, args.latent, args.latent)).astype(np.float32),
             "timestep": np.array([500.0, 500.0], np.float32),
             "encoder_hidden_states": rng.standard_normal((2, source.dims.text_len, source.dims.text_dim)).astype(np.float32)}
    tin = [torch.from_numpy(v) for v in feeds.values()]
    times: dict[str, list[float]] = {"torch_eager_fp32": [], "onnxruntime_fp32": []}
    with torch.inference_mode():
        unet(*tin), sess.run(None, feeds)  # warm-up
        for _ in range(args.repeats):
            t = time.perf_counter()
            unet(*tin)
            times["torch_eager_fp32"].append(time.perf_counter() - t)
            t = time.perf_counter()
            sess.run(None, feeds)
            times["onnxruntime_fp32"].append(time.perf_counter() - t)
    report["unet_call"] = {k: {"median_s": round(statistics.median(v), 3), "min_s": round(min(v), 3), "max_s": round(max(v), 3)}
                           for k, v in times.items()}
    report["unet_call"]["ort_speedup_vs_torch"] = round(
        statistics.median(times["torch_eager_fp32"]) / statistics.median(times["onnxruntime_fp32"]), 2)
    out = args.work / f"measure-{args.arch}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
