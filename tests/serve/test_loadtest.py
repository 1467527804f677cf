"""The load test script at CI size: 8 clients x 2 requests into a queue of 2, so some are turned away."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_loadtest_small(tmp_path):
    out = tmp_path / "load.json"
    proc = subprocess.run([sys.executable, "scripts/loadtest_serve.py", "--clients", "8", "--requests", "2",
                           "--max-queue", "2", "--threads", "1", "--deadline-s", "60", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["sent"] == 16 and report["accepted"] + report["rejected_429"] == 16
    assert report["accepted"] >= 3 and report["rejected_429"] >= 1  # 8 at once into 1 painting + 2 waiting
    assert report["server_errors_5xx"] == 0 and not report["bad_images"]
    assert all(report["checks"].values()), report["checks"]
    assert report["server_images_total"] == report["accepted"] + 1  # + the warm-up
