"""Rounds: a row's share of the work per round, and the pooling of its rounds' results (synthetic results)."""

import pytest

from shanshui.bench.plan import Settings
from shanshui.bench.runner import merge_rounds, round_share


def result(pid: int, load: float, runs: list[float], unet: list[float], rss: float, ok: bool = True) -> dict:
    if not ok:
        return {"ok": False, "pid": pid, "error": "worker exited with 1: boom"}
    return {"ok": True, "pid": pid, "load_s": load, "rss_after_load_mb": rss - 10, "peak_rss_load_mb": rss - 5,
            "generation": {"first": {"total_s": 9.0}, "runs_s": runs, "steps_s": [r / 4 for r in runs] * 4,
                           "split_s": {"text_encoder_s": [0.01] * len(runs)}, "unet_calls": 4, "peak_rss_mb": rss,
                           "gpu_peak_mb": None},
            "stages": {"unet_step": {"runs_s": unet, "peak_rss_mb": rss, "gpu_peak_mb": None, "inputs": {}}},
            "steadiness": {"rerun": 1, "kept_disturbed": 0, "waited_s": 0.5, "probes": 4, "gave_up": False},
            "image": f"/tmp/row-{pid}.npy"}


def test_each_round_measures_its_share_at_least_once():
    s = Settings(repeats=3, stage_repeats=5, min_time_s=3.0)
    assert round_share(s, 3) == {"repeats": 1, "stage_repeats": 2, "min_time_s": 1.0}
    assert round_share(Settings(repeats=1, stage_repeats=1, min_time_s=0.0), 4) == {"repeats": 1, "stage_repeats": 1, "min_time_s": 0.0}


def test_rounds_pool_samples_and_keep_the_peaks():
    rounds = [result(11, 1.0, [2.0], [0.10, 0.11], 500.0), result(12, 3.0, [2.4], [0.13], 520.0),
              result(13, 2.0, [2.2, 2.1], [0.12], 510.0)]
    m = merge_rounds(rounds)
    assert m["ok"] and m["pids"] == [11, 12, 13] and m["pid"] == 11 and m["rounds"] == 3
    assert m["generation"]["runs_s"] == [2.0, 2.4, 2.2, 2.1] and len(m["generation"]["steps_s"]) == 16
    assert m["generation"]["split_s"]["text_encoder_s"] == [0.01] * 4
    assert m["stages"]["unet_step"]["runs_s"] == [0.10, 0.11, 0.13, 0.12]
    assert m["generation"]["peak_rss_mb"] == 520.0 and m["stages"]["unet_step"]["peak_rss_mb"] == 520.0
    assert m["load_s"] == 2.0 and m["peak_rss_load_mb"] == 515.0  # median load; highest peak
    assert m["generation"]["first"]["total_s"] == 9.0 and m["image"] == "/tmp/row-11.npy"  # cold run: round 1's
    assert m["steadiness"]["rerun"] == 3 and m["steadiness"]["waited_s"] == pytest.approx(1.5)
    assert rounds[0]["generation"]["runs_s"] == [2.0]  # the inputs are left as they were


def test_a_failed_round_fails_the_row():
    m = merge_rounds([result(11, 1.0, [2.0], [0.1], 500.0), result(12, 0, [], [], 0, ok=False)])
    assert not m["ok"] and "boom" in m["error"]


def test_one_round_is_passed_through():
    m = merge_rounds([result(11, 1.0, [2.0], [0.1], 500.0)])
    assert m["pids"] == [11] and "rounds" not in m and m["generation"]["runs_s"] == [2.0]
