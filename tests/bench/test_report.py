"""Report maths on synthetic rows: percentiles, ratios to diffusers, quality against fp32, --compare, files written."""

import json

import numpy as np
import pytest
from PIL import Image

from shanshui.bench import report
from shanshui.errors import ShanshuiError
from tests.bench.helpers import fake_report, row


def test_summarize_median_and_nearest_rank_p90():
    s = report.summarize([5.0, 1.0, 3.0, 2.0, 4.0, 6.0, 7.0, 8.0, 9.0, 10.0])
    assert s == {"median_s": 5.5, "p90_s": 9.0, "n": 10}
    assert report.summarize([2.0]) == {"median_s": 2.0, "p90_s": 2.0, "n": 1}
    assert report.summarize([]) is None


def test_ratios_are_diffusers_time_over_row_time():
    rows = fake_report()["rows"]
    report.add_ratios(rows)
    ort, int8, diff, trt = rows
    assert ort["speedup_vs_diffusers"] == {"baseline": diff["id"], "generation": pytest.approx(4.0), "unet_step": pytest.approx(2.0)}
    assert int8["speedup_vs_diffusers"]["generation"] == pytest.approx(5.0)  # no int8 diffusers row: its fp32 row
    assert diff["speedup_vs_diffusers"]["generation"] == pytest.approx(1.0)
    assert trt["speedup_vs_diffusers"] is None


def test_quality_against_fp32_of_same_backend():
    rows = fake_report()["rows"]
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    noisy = np.clip(ref.astype(int) + rng.integers(-3, 4, ref.shape), 0, 255).astype(np.uint8)
    images = {rows[0]["id"]: ref, rows[1]["id"]: noisy, rows[2]["id"]: ref.copy()}
    report.add_quality(rows, images)
    q = rows[1]["quality"]
    assert q["reference"] == rows[0]["id"] and 35 < q["psnr_db"] < 60 and 0.5 < q["ssim"] < 1 and not q["identical"]
    assert rows[2]["quality"]["identical"] and rows[2]["quality"]["psnr_db"] is None  # JSON has no inf
    assert rows[0]["quality"]["reference"] == rows[2]["id"]  # the main fp32 row is checked against the next fp32 row
    assert rows[3]["quality"] is None


def test_compare_ratios_new_over_old():
    old, new = fake_report(1.0), fake_report(0.5)
    new["rows"][1]["generation"]["peak_rss_mb"] = 200.0
    new["rows"].append(row("tiny@512/onnxruntime-cpu-fp32", "shanshui", "onnxruntime", "fp32", 3, 0.3))
    entries = {e["id"]: e for e in report.compare_reports(old, new)}
    e = entries["tiny@256/onnxruntime-cpu-int8"]
    assert e["generation"] == pytest.approx(0.5) and e["unet_step"] == pytest.approx(0.5)
    assert e["peak_rss"] == pytest.approx(0.5) and e["load"] == pytest.approx(1.0)
    assert entries["tiny@512/onnxruntime-cpu-fp32"]["note"] == "only in the new report"
    assert "tiny@256/tensorrt-cuda-*" not in entries  # skipped rows are not compared
    text = report.format_compare(report.compare_reports(old, new), old, new)
    assert "tiny@256/onnxruntime-cpu-int8" in text and "0.50×" in text and "only in the new report" in text
    new["settings"]["steps"] = 25
    assert "settings differ: steps 4 → 25" in report.format_compare([], old, new)


def test_markdown_png_and_json_are_written(tmp_path):
    rep = fake_report()
    report.add_ratios(rep["rows"])
    paths = report.write_reports(rep, tmp_path / "sub" / "r")
    assert [p.name for p in paths] == ["r.json", "r.md", "r.png"] and all(p.is_file() for p in paths)
    assert json.loads(paths[0].read_text(encoding="utf-8")) == rep
    md = paths[1].read_text(encoding="utf-8")
    assert "| row | load s |" in md and "`tiny@256/onnxruntime-cpu-int8`" in md and "4.00×" in md
    assert "`tiny@256/tensorrt-cuda-*` (skipped): no CUDA GPU is visible here" in md and "![latency chart](r.png)" in md
    with Image.open(paths[2]) as img:
        assert img.format == "PNG" and img.size[0] == 1200 and img.size[1] > 150
    assert not [p for p in (tmp_path / "sub").iterdir() if p.name.startswith(".")]  # no temp files left


def test_load_report_rejects_other_files(tmp_path):
    with pytest.raises(ShanshuiError, match="does not exist"):
        report.load_report(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ShanshuiError, match="not a JSON report"):
        report.load_report(tmp_path / "x.json")
    (tmp_path / "y.json").write_text('{"rows": []}', encoding="utf-8")
    with pytest.raises(ShanshuiError, match="not a shanshui bench report"):
        report.load_report(tmp_path / "y.json")
