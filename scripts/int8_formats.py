"""Which int8 format is fast on this CPU? One U-Net call, side by side in one run.

    python scripts/int8_formats.py EXPORT_DIR [--torch DIFFUSERS_DIR] --threads 2 --latent 32 --repeats 7 --json OUT.json

Rows: PyTorch eager fp32 (with --torch), ONNX Runtime fp32, and the U-Net quantized by shanshui's int8 path in each
format (QDQ / QOperator × uint8 / int8 activations × reduce_range on/off), all calibrated on the same recorded sampler
inputs with the same float layers. Timings are interleaved round by round so machine noise hits every row alike;
medians, minima and ratios to both fp32 rows are reported, with each format's output SNR against fp32. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

VARIANTS = {  # name: (format, activations, reduce_range)
    "qdq_u8s8": ("qdq", "uint8", False),
    "qdq_u8s8_reduce_range": ("qdq", "uint8", True),
    "qdq_s8s8": ("qdq", "int8", False),
    "qoperator_u8s8": ("qoperator", "uint8", False),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("export", type=Path)
    ap.add_argument("--torch", type=Path, default=None, help="diffusers folder of the same model, for the eager row")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--latent", type=int, default=32)
    ap.add_argument("--batch", type=int, default=2, help="U-Net batch (both guidance branches of one image: 2)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--min-layer-snr", type=float, default=None, help="default: the library's MIN_LAYER_SNR_DB")
    ap.add_argument("--calib-prompts", type=int, default=None, help="use only the first N calibration prompts")
    ap.add_argument("--calib-size", type=int, default=None, help="image size of the calibration runs (default: the export's)")
    ap.add_argument("--quantize-only", action="store_true", help="make the variants, skip the timing")
    ap.add_argument("--work", type=Path, default=None, help="keep the quantized models here; existing ones are reused")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import numpy as np
    import onnx
    import onnxruntime as ort

    from shanshui.quantize.convert import CALIBRATION_PROMPTS, CALIBRATION_SEEDS, CALIBRATION_STEPS
    from shanshui.quantize.int8 import MIN_LAYER_SNR_DB, _quantize, candidate_nodes, int8_format, record_calibration
    from shanshui.quantize.sensitivity import isolated_layer_snr

    src = args.export / "unet" / "model.onnx"
    work = args.work or Path(tempfile.mkdtemp(prefix="int8-formats-"))
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {"export": str(args.export), "threads": args.threads, "latent": args.latent, "batch": args.batch,
                    "machine": platform.processor() or platform.machine(), "onnxruntime": ort.__version__,
                    "cpu_vnni": int8_format()["cpu_vnni"]}
    names = args.variants.split(",")
    feeds = None
    if not all((work / n / "model.onnx").is_file() for n in names):
        t = time.perf_counter()
        prompts = CALIBRATION_PROMPTS[: args.calib_prompts or len(CALIBRATION_PROMPTS)]
        feeds = record_calibration(args.export, prompts, CALIBRATION_SEEDS, CALIBRATION_STEPS, threads=args.threads,
                                   size=args.calib_size)
        report["calibration_s"], report["calibration_feeds"] = round(time.perf_counter() - t, 1), len(feeds)
        allowed, _ = candidate_nodes(onnx.load(str(src), load_external_data=False))
        t = time.perf_counter()
        snr = isolated_layer_snr(src, feeds, allowed)
        report["sensitivity_s"] = round(time.perf_counter() - t, 1)
        floor = args.min_layer_snr if args.min_layer_snr is not None else MIN_LAYER_SNR_DB
        nodes = [n for n in allowed if snr[n] >= floor]
        report["min_layer_snr_db"] = floor
        report["quantized_layers"], report["candidate_layers"] = len(nodes), len(allowed)
        (work / "layer_snr.json").write_text(json.dumps(snr, indent=1), encoding="utf-8")

    paths = {"ort_fp32": src}
    for name in names:
        fmt_name, act, rr = VARIANTS[name]
        dst = work / name / "model.onnx"
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.is_file():
            t = time.perf_counter()
            _quantize(src, dst, feeds, nodes, int8_format(fmt_name, act, rr))
            report.setdefault("quantize_s", {})[name] = round(time.perf_counter() - t, 1)
        paths[name] = dst

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = args.threads, 1
    opts.log_severity_level = 3
    # Several sessions live in this one process: spinning worker threads of the session that just ran would steal
    # the cores from the next one. Without spinning every row pays the same wake-up cost.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if args.quantize_only:
        print(json.dumps(report, indent=1))
        return
    rng = np.random.default_rng(0)
    fp32 = onnx.load(str(src), load_external_data=False)
    dims = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in fp32.graph.input}
    channels, (text_len, text_dim) = dims["sample"][1], dims["encoder_hidden_states"][1:]
    feed = {"sample": rng.standard_normal((args.batch, channels, args.latent, args.latent)).astype(np.float32),
            "timestep": np.full((args.batch,), 500.0, np.float32),
            "encoder_hidden_states": rng.standard_normal((args.batch, text_len, text_dim)).astype(np.float32)}
    if feeds:  # a real text embedding, as the sampler sees it
        feed["encoder_hidden_states"] = np.repeat(feeds[len(feeds) // 2]["encoder_hidden_states"][:1], args.batch, axis=0)
    runners = {}
    for name, path in paths.items():
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        runners[name] = lambda s=sess: s.run(["out_sample"], feed)[0]
    if args.torch:
        import torch

        from shanshui.hf import load_component
        from shanshui.spec.source import open_source

        torch.set_num_threads(args.threads)
        module = load_component(open_source(args.torch), "unet")
        tfeed = [torch.from_numpy(feed[k]) for k in ("sample", "timestep", "encoder_hidden_states")]

        def eager():
            with torch.inference_mode():
                return module(*tfeed).numpy()

        runners = {"torch_eager_fp32": eager, **runners}

    outs = {name: run() for name, run in runners.items()}  # warm-up, and the outputs compared below
    ref = outs["ort_fp32"].astype(np.float64)
    times: dict[str, list[float]] = {n: [] for n in runners}
    for _ in range(args.repeats):
        for name, run in runners.items():
            t = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t)
    rows = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        err = float(np.sum((outs[name] - ref) ** 2))
        rows[name] = {"median_s": round(med, 4), "min_s": round(min(ts), 4), "max_s": round(max(ts), 4),
                      "output_snr_db": None if err == 0 else round(10 * np.log10(float(np.sum(ref ** 2)) / err), 2)}
    for name, row in rows.items():
        row["speedup_vs_ort_fp32"] = round(rows["ort_fp32"]["median_s"] / row["median_s"], 2)
        if "torch_eager_fp32" in rows:
            row["speedup_vs_torch_eager"] = round(rows["torch_eager_fp32"]["median_s"] / row["median_s"], 2)
        if name in paths:
            row["bytes"] = sum(p.stat().st_size for p in paths[name].parent.glob("model.onnx*"))
    report["rows"] = rows
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
