"""Low-memory rows of the bench: planned beside onnxruntime/cpu rows, resolved before loading, compared with their
normal row, shown in the Markdown and chart (synthetic reports; no measuring)."""

import numpy as np
import pytest

from shanshui.bench import lowmem as bench_lowmem
from shanshui.bench.markdown import to_markdown
from shanshui.bench.plan import Row
from shanshui.errors import ShanshuiError
from shanshui.runtime.lowmem import LOW_MEMORY
from shanshui.spec.folders import default_model_dir
from tests.bench.helpers import fake_report, row


def test_requests_are_checked_up_front():
    assert bench_lowmem.requests(True, "1G", "lean,sequential") == ["low", "budget:1G", "lean", "sequential"]
    with pytest.raises(ShanshuiError, match="not one of"):
        bench_lowmem.requests(False, None, "lean,fastest")
    with pytest.raises(ShanshuiError, match="not a size"):
        bench_lowmem.requests(False, "lots", None)


def test_rows_added_beside_onnxruntime_cpu_rows_and_the_diffusers_peer():
    rows = [Row("m", 256, "shanshui", "onnxruntime", "cpu", "int8"), Row("m", 256, "shanshui", "torch", "cpu", "fp32"),
            Row("m", 256, "diffusers", "torch", "cpu", "fp32"),
            Row("m", 256, "shanshui", "onnxruntime", "cuda", "fp32", status="skipped", reason="no GPU")]
    out = bench_lowmem.add_rows(rows, ["low", "lean"])
    assert [r.id for r in out][:3] == ["m@256/onnxruntime-cpu-int8", "m@256/onnxruntime-cpu-int8/mem:low",
                                       "m@256/onnxruntime-cpu-int8/mem:lean"]
    assert [r.id for r in out][4:6] == ["m@256/diffusers-cpu-fp32", "m@256/diffusers-cpu-fp32/mem:low"]
    assert len(out) == len(rows) + 3  # one diffusers row: its lowest-memory settings, whatever was asked of ours
    assert bench_lowmem.add_rows(rows, []) == rows


def test_diffusers_low_memory_settings_tile_the_vae_in_two_by_two():
    pytest.importorskip("diffusers")
    from types import SimpleNamespace

    from diffusers import AutoencoderKL

    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=8, sample_size=512)
    calls = []
    pipe = SimpleNamespace(vae=vae, enable_attention_slicing=calls.append)
    bench_lowmem.configure_diffusers(pipe, 512)
    assert calls == ["max"] and vae.use_tiling
    assert vae.tile_latent_min_size == 40 and vae.tile_sample_min_size == 320  # < 512 px: it does tile, 2 per side
    record = bench_lowmem.diffusers_row(512)
    assert record["strategy"] == bench_lowmem.DIFFUSERS_LOW and record["estimated_peak_mb"] is None


def test_resolve_row_names_the_strategy_and_estimate():
    got = bench_lowmem.resolve_row("low", default_model_dir(), 256, 7.5)
    assert got["strategy"] == LOW_MEMORY.name and got["estimated_peak_mb"] > 0
    assert bench_lowmem.resolve_row("budget:100G", default_model_dir(), 256, 7.5)["strategy"] == "normal"
    with pytest.raises(ShanshuiError, match="too small"):
        bench_lowmem.resolve_row("budget:10M", default_model_dir(), 256, 7.5)


def _with_memory_row() -> tuple[dict, dict]:
    rep = fake_report()
    low = row("tiny@256/onnxruntime-cpu-int8", "shanshui", "onnxruntime", "int8", 1.2, 0.09, 150, pid=104)
    low["id"] += "/mem:low"
    low["memory"] = {"request": "low", "strategy": LOW_MEMORY.name, "estimated_peak_mb": 140.0}
    rep["rows"].insert(2, low)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    noisy = np.clip(base.astype(int) + rng.integers(-2, 3, base.shape), 0, 255).astype(np.uint8)
    return rep, {"tiny@256/onnxruntime-cpu-int8": base, "tiny@256/onnxruntime-cpu-int8/mem:low": noisy}


def test_vs_normal_compares_with_the_row_without_a_strategy():
    rep, images = _with_memory_row()
    bench_lowmem.add_vs_normal(rep["rows"], images)
    q = rep["rows"][2]["vs_normal"]
    assert q["reference"] == "tiny@256/onnxruntime-cpu-int8" and 40 < q["psnr_db"] < 60
    assert all("vs_normal" not in r for r in rep["rows"] if not r.get("memory"))


def test_markdown_lists_memory_rows_with_ratios():
    rep, images = _with_memory_row()
    bench_lowmem.add_vs_normal(rep["rows"], images)
    md = to_markdown(rep)
    line = next(ln for ln in md.splitlines() if ln.startswith("| `tiny@256/onnxruntime-cpu-int8/mem:low`") and LOW_MEMORY.name in ln)
    assert "150 (400)" in line and "1.50×" in line  # peak (normal's), time 1.2 s ÷ 0.8 s


def test_chart_draws_the_memory_rows(tmp_path):
    from shanshui.bench.chart import draw_chart

    rep, _ = _with_memory_row()
    img = draw_chart(rep)
    assert img.width >= 1400 and img.height > 100
