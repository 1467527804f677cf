"""Every bad input in cases.CASES through the real CLI in a subprocess: a non-zero exit, exactly one `error:` line on
stderr (holding the case's fragment), no traceback, and no file left behind, in the run's folder or the inputs'.

The runs are independent processes, so they go a few at a time (the slow part of each is Python starting up).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.errors.bad_inputs import cli_env, make_bad_inputs, run_cli, snapshot
from tests.errors.cases import CASES

PARALLEL = 3


def _fill(arg: str, paths: dict, here: Path) -> str:
    for k, v in sorted(paths.items(), key=lambda kv: -len(kv[0])):
        arg = arg.replace("{" + k + "}", str(v))
    return arg.replace("{T}", str(here))


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Run every case once; {id: (outcome, new paths in its folder)}, plus paths new among the shared inputs."""
    inputs = tmp_path_factory.mktemp("bad")
    paths = make_bad_inputs(inputs)
    before = snapshot(inputs)
    home = tmp_path_factory.mktemp("home")

    def one(case):
        cid, args, env, _ = case
        here = tmp_path_factory.mktemp(cid)
        out = run_cli([_fill(a, paths, here) for a in args], cwd=here, home=home, env=env, timeout=90)
        return cid, (out, sorted(snapshot(here)))

    with ThreadPoolExecutor(PARALLEL) as pool:
        results = dict(pool.map(one, CASES))
    results["__shared__"] = sorted(snapshot(inputs) - before)
    return results


def test_catalogue_is_large_and_covers_every_command():
    assert len(CASES) >= 80 and len({c[0] for c in CASES}) == len(CASES)
    commands = {tuple(a for a in args[:2] if not a.startswith(("{", "-")) and a.isascii() and a.isalpha())[:1]
                for _, args, _, _ in CASES}
    assert {("generate",), ("export",), ("quantize",), ("eval",), ("init",), ("data",), ("train",), ("engine",),
            ("bench",), ("serve",)} <= commands


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_error(case, outcomes):
    cid, _, _, fragment = case
    out, left = outcomes[cid]
    assert not out.timed_out, f"{cid} ran past its time limit: {out.stderr[-500:]}"
    assert out.code not in (0, -9), (out.code, out.stdout[-300:], out.stderr[-1500:])
    assert "Traceback" not in out.stderr + out.stdout, out.stderr[-1500:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and errors == lines[-1:], out.stderr[-1500:]
    assert fragment.lower() in errors[0].lower(), errors[0]
    assert len(errors[0]) < 600, errors[0]
    assert left == [], f"{cid} left {left}"


def test_nothing_left_among_the_inputs(outcomes):
    assert outcomes["__shared__"] == []


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _interrupt(args: list[str], cwd: Path, home: Path, ready: str | float, timeout: float = 300):
    """Start the CLI, send SIGINT once stderr shows `ready` (or it has used `ready` CPU seconds); (exit code, stderr)."""
    # SIGINT at its default in the child: a test run started in the background of a non-interactive shell inherits
    # SIGINT ignored, and Python then never raises KeyboardInterrupt (both tests failed that way, not from load)
    proc = subprocess.Popen([sys.executable, "-m", "shanshui.cli", *args], cwd=cwd, env=cli_env(home),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()

    def is_ready():
        return ready in "".join(lines) if isinstance(ready, str) else _cpu_seconds(proc.pid) >= ready

    t0 = time.monotonic()
    while proc.poll() is None and not is_ready() and time.monotonic() - t0 < timeout:
        time.sleep(0.05)
    assert proc.poll() is None and is_ready(), "".join(lines)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)  # a loaded CI machine: cleanup after the signal can take a while
    reader.join(timeout=10)
    return proc.returncode, "".join(lines)


def test_ctrl_c_during_generate_says_interrupted(tmp_path, tmp_path_factory):
    code, err = _interrupt(["generate", "山", "--steps", "1000", "-o", "x.png"], tmp_path, tmp_path_factory.mktemp("h"), 3.0)
    assert code == 130, err
    assert err.strip().splitlines()[-1] == "error: interrupted" and "Traceback" not in err, err
    assert sorted(snapshot(tmp_path)) == []


def test_ctrl_c_during_export_removes_its_temp_folders(tmp_path, tmp_path_factory):
    from shanshui.models import DEFAULT_DIFFUSERS

    out = tmp_path / "out"
    code, err = _interrupt(["export", str(DEFAULT_DIFFUSERS), str(out)], tmp_path, tmp_path_factory.mktemp("h"), "exporting")
    assert code == 130, err
    assert err.strip().splitlines()[-1] == "error: interrupted" and "Traceback" not in err, err
    hidden = [p for p in snapshot(tmp_path) if Path(p).name.startswith(".")]
    assert hidden == [], hidden
