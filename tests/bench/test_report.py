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
    assert s == {"median_s": 5.5, "p10_s": 1.0, "p90_s": 9.0, "min_s": 1.0, "n": 10}
    assert report.summarize([4.0, 2.0, 3.0]) == {"median_s": 3.0, "p10_s": 2.0, "p90_s": 4.0, "min_s": 2.0, "n": 3}
    assert report.summarize([2.0]) == {"median_s": 2.0, "p10_s": 2.0, "p90_s": 2.0, "min_s": 2.0, "n": 1}
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
        assert img.format == "PNG" and img.size[0] == 1480 and img.size[1] > 150  # three panels: time, U-Net step, peak RSS
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


def _steps(rec: dict, median: float, p10: float, p90: float) -> None:
    rec["stages"]["unet_step"].update(median_s=median, p10_s=p10, p90_s=p90, n=5)


def test_compare_says_whether_runs_agree_within_their_spread():
    old, new = fake_report(1.0), fake_report(1.0)
    fp32_old, fp32_new = old["rows"][0], new["rows"][0]  # U-Net step 0.10 s
    _steps(fp32_old, 0.10, 0.095, 0.105)  # ±10% spread
    _steps(fp32_new, 0.108, 0.103, 0.113)  # 8% slower: inside the spread
    fp32_new["generation"]["median_s"] = 1.06
    int8_old, int8_new = old["rows"][1], new["rows"][1]  # U-Net step 0.08 s
    _steps(int8_old, 0.08, 0.079, 0.081)  # ±2.5%
    _steps(int8_new, 0.13, 0.128, 0.132)  # 1.6× slower: the bimodal case this was built for
    entries = {e["id"]: e for e in report.compare_reports(old, new)}
    e = entries[fp32_old["id"]]
    assert e["agrees"] and e["spread"] == pytest.approx(0.1)
    e = entries[int8_old["id"]]
    assert not e["agrees"] and e["unet_step"] == pytest.approx(1.625) and e["unet_step_p10"] == pytest.approx(0.128 / 0.079)
    assert entries["tiny@256/diffusers-cpu-fp32"]["agrees"]  # identical rows: within the 2% floor
    text = report.format_compare(report.compare_reports(old, new), old, new)
    assert "2 of 3 rows agree within their own spread" in text and "NO" in text and "±10%" in text
    assert "disturbed" not in text
    int8_new["steadiness"] = {"rerun": 4, "kept_disturbed": 3}
    entries = {e["id"]: e for e in report.compare_reports(old, new)}
    assert entries[int8_old["id"]]["disturbed"] == ["new"]
    assert "(measured while disturbed: new run)" in report.format_compare(list(entries.values()), old, new)


def test_spread_of_an_old_report_without_p10():
    rec = fake_report()["rows"][0]  # its stages have no p10 (written before p10 was recorded): steps in generations
    rec["unet_step_in_pipeline"] = {"median_s": 0.1, "p90_s": 0.11, "n": 4}
    assert report.relative_spread(rec) == pytest.approx(0.1)
    rec["unet_step_in_pipeline"] = None
    assert report.relative_spread(rec) == report.SPREAD_FLOOR


def test_reports_name_no_directory_of_this_machine(tmp_path):
    from shanshui import fsutil

    rep = fake_report()
    rep["rows"][0]["model_dir"] = str(tmp_path / "exports" / "tiny" / "fp32")
    rep["rows"][0]["reason"] = "text / with slashes"
    path = report.write_reports(rep, tmp_path / "r")[0]
    text = path.read_text(encoding="utf-8")
    assert str(tmp_path) not in text and '"…/tiny/fp32"' in text and "text / with slashes" in text
    assert fsutil.portable_paths(str(fsutil.Path(fsutil.__file__).parent / "models" / "x")) == "<shanshui>/models/x"
    assert fsutil.portable_paths({"a": ["C:\\Users\\me\\m"]}) == {"a": ["…/" + "/".join(fsutil.Path("C:\\Users\\me\\m").parts[-2:])]}
