"""A real `shanshui bench --quick` on the tiny model: each row in its own process, the parent free of torch and
onnxruntime, the report complete. Tiny settings (128 px, 2 steps, 1 thread); no timing is asserted."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from shanshui.bench.memory import PeakRss
from shanshui.bench.runner import run_worker

HEAVY = ["torch", "onnxruntime", "diffusers", "transformers"]


@pytest.fixture(scope="module")
def quick_run(tiny_export, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    args = ["bench", "--quick", "--model", str(tiny_export), "--size", "128", "--steps", "2", "--backends", "onnxruntime,tensorrt",
            "--precisions", "fp32", "--threads", "1", "--steady", "--rounds", "2", "--cache", str(tmp / "cache"), "--out", str(tmp / "out" / "r")]
    code = textwrap.dedent(f"""
        import sys
        from shanshui.cli import app
        try:
            app({args!r})
        except SystemExit as e:
            assert e.code in (0, None), e.code
        print("HEAVY=" + ",".join(m for m in {HEAVY!r} if m in sys.modules))
        print("PID=%d" % __import__("os").getpid())
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads((tmp / "out" / "r.json").read_text(encoding="utf-8"))
    return rep, proc, tmp


def test_report_schema(quick_run):
    rep, _, _ = quick_run
    assert rep["schema"] == "shanshui-bench/1"
    env = rep["environment"]
    for key in ("date", "cpu", "cpu_flags", "cores", "threads", "python", "versions", "git", "gpu"):
        assert key in env, key
    assert env["threads"] == 1 and isinstance(env["cpu_flags"], dict) and "onnxruntime" in env["versions"]
    assert rep["settings"]["steps"] == 2 and rep["settings"]["quick"] is True
    assert rep["settings"]["steady"] is True and rep["settings"]["probe_baseline_ms"] > 0 and rep["settings"]["min_time_s"] == 1.0
    assert rep["settings"]["rounds"] == 2
    by_id = {r["id"]: r for r in rep["rows"]}
    ok = [r for r in rep["rows"] if r["status"] == "ok"]
    assert {r["id"] for r in ok} == {"tiny@128/onnxruntime-cpu-fp32", "tiny@128/diffusers-cpu-fp32"}, by_id
    for r in ok:
        assert isinstance(r["load_s"], float) and r["load_s"] > 0
        g = r["generation"]
        assert g["n"] >= 1 and g["unet_calls"] == 2 and g["first_s"] > 0 and g["median_s"] > 0 and g["peak_rss_mb"] > 50
        for stage in ("text_encoder", "unet_step", "vae_decode"):
            st = r["stages"][stage]
            assert st["n"] >= 5 and st["median_s"] > 0 and st["p90_s"] >= st["median_s"] and st["first_s"] > 0
            assert st["peak_rss_mb"] > 50
        assert r["stages"]["unet_step"]["inputs"]["sample"] == [2, 4, 16, 16]  # guided step: batch 2, 128 px / 8
        assert r["memory_method"] in ("clear_refs", "getrusage") and r["disk_bytes"]["total"] > 1e6
        st = r["steadiness"]  # the capacity probe ran around every measured call (1 generation + 3 stage calls at least)
        assert st["enabled"] and st["probe_baseline_ms"] > 0 and st["probes"] >= 8
        assert st["rerun"] >= 0 and st["kept_disturbed"] >= 0
        assert r["speedup_vs_diffusers"]["baseline"] == "tiny@128/diffusers-cpu-fp32"
        assert r["quality"]["ssim"] > 0.99  # same noise, scheduler and weights: diffusers and shanshui agree
    assert by_id["tiny@128/onnxruntime-cpu-fp32"]["component_precisions"] == {c: "fp32" for c in ("text_encoder", "unet", "vae_decoder", "vae_encoder")}
    for rid, why in (("tiny@128/tensorrt-cuda-*", "CUDA"), ("tiny@128/optimum-cpu-fp32", "--peers optimum")):
        assert by_id[rid]["status"] == "skipped" and why in by_id[rid]["reason"]


def test_each_row_ran_in_a_fresh_process(quick_run):
    rep, proc, _ = quick_run
    parent = int(proc.stdout.split("PID=")[1].split()[0])
    pids = [p for r in rep["rows"] if r["status"] == "ok" for p in r["pids"]]
    assert len(set(pids)) == len(pids) == 4 and parent not in pids  # 2 rows × 2 rounds, each its own process
    assert all(r["rounds"] == 2 and r["pid"] == r["pids"][0] for r in rep["rows"] if r["status"] == "ok")
    assert rep["parent"]["pid"] == parent and rep["parent"]["heavy_modules_loaded"] == []
    assert "HEAVY=\n" in proc.stdout  # the parent never imported torch or onnxruntime
    ort_row = next(r for r in rep["rows"] if r["id"].endswith("onnxruntime-cpu-fp32"))
    assert "onnxruntime" in ort_row["modules_loaded"] and "torch" not in ort_row["modules_loaded"]


def test_markdown_and_png_written(quick_run):
    _, proc, tmp = quick_run
    md = (tmp / "out" / "r.md").read_text(encoding="utf-8")
    assert "`tiny@128/onnxruntime-cpu-fp32`" in md and "Not run:" in md
    assert (tmp / "out" / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {tmp / 'out' / 'r.json'}" in proc.stdout
    assert "tiny@128/diffusers-cpu-fp32: generation" in proc.stderr  # the progress display's line per row


def test_compare_against_itself_is_all_ones(quick_run):
    from typer.testing import CliRunner

    from shanshui.cli import app

    _, _, tmp = quick_run
    r = CliRunner().invoke(app, ["bench", "--load", str(tmp / "out" / "r.json"), "--compare", str(tmp / "out" / "r.json")])
    assert r.exit_code == 0, r.output
    assert "tiny@128/onnxruntime-cpu-fp32" in r.output and "1.00×" in r.output


def test_worker_failure_is_one_line(tmp_path):
    spec = {"task": "row", "runner": "shanshui", "backend": "onnxruntime", "device": "cpu", "precision": "fp32",
            "model_dir": str(tmp_path / "nowhere"), "height": 128, "width": 128, "prompt": "pine", "seed": 0, "steps": 1,
            "guidance": 7.5, "threads": 1, "warmup": 1, "repeats": 1, "stage_warmup": 1, "stage_repeats": 1,
            "image": str(tmp_path / "i.npy")}
    res = run_worker(spec, tmp_path, "bad")
    assert res["ok"] is False and "does not exist" in res["error"] and "\n" not in res["error"]
    assert res["pid"] != os.getpid()


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux only")
def test_peak_rss_resets_between_stages():
    mem = PeakRss()
    assert mem.method == "clear_refs"
    big = bytearray(200 * 2**20)  # 200 MiB, touched
    big[:: 4096] = b"x" * len(big[:: 4096])
    high = mem.peak_mb()
    del big
    mem.reset()
    assert mem.peak_mb() < high - 150


def test_optimum_worker_never_imports_shanshui():
    """It runs under Optimum's own venv, where shanshui is not installed."""
    import ast
    from pathlib import Path

    from shanshui.bench.runner import OPTIMUM_SCRIPT

    tree = ast.parse(Path(OPTIMUM_SCRIPT).read_text(encoding="utf-8"))
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert names and not [n for n in names if n.split(".")[0] == "shanshui"], names
