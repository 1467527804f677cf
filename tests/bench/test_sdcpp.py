"""The stable-diffusion.cpp peer: its rows in the plan, its venv's marker and pins, its worker's parsing and whole
request/result path (run against a fake `stable_diffusion_cpp` module: nothing is compiled here), and its quality
reference in the report."""

from __future__ import annotations

import json
import os
import stat
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from shanshui.bench import sdcpp_worker as w
from shanshui.bench import venv
from shanshui.bench.markdown import to_markdown
from shanshui.bench.plan import ModelRef, Peer, Settings, parse_list, plan_rows
from shanshui.bench.report import add_quality
from shanshui.bench.runner import MEMORY_MODULE, SDCPP_SCRIPT, STEADY_MODULE, run_worker
from shanshui.errors import ShanshuiError
from tests.bench.helpers import fake_report, row

CPU_ONLY = {"providers": ["CPUExecutionProvider"], "torch": True, "torch_cuda": False, "tensorrt": False, "trt_backend": False}
WITH_GPU = {"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"], "torch": True, "torch_cuda": True,
            "tensorrt": False, "trt_backend": False}
NO_OPTIMUM = {"ready": False, "reason": "not requested"}
READY = {"ready": True, "python": "/venv/bin/python"}
MODEL = ModelRef("sd15", "sd15-seed0", 512, arch="sd15")


def plan(peers, sdcpp, device="cpu", probe=CPU_ONLY, precisions=("int8",)):
    return plan_rows([MODEL], [256], ["onnxruntime"], list(precisions), device, peers, probe, NO_OPTIMUM, sdcpp)


def test_plan_has_one_row_per_weight_type_q8_0_first_whatever_the_precisions():
    for precisions in (["int8"], ["fp32", "fp16", "int8"]):
        rows = [r for r in plan(["diffusers", "sdcpp"], READY, precisions=precisions) if r.runner == "sdcpp"]
        assert [(r.id, r.status, r.backend) for r in rows] == [("sd15@256/sdcpp-cpu-q8_0", "planned", "ggml"),
                                                               ("sd15@256/sdcpp-cpu-f16", "planned", "ggml")]


def test_plan_says_why_sdcpp_does_not_run():
    why = "not requested (--peers sdcpp builds its own venv at /x, once)"
    rows = [r for r in plan(["diffusers", "sdcpp"], {"ready": False, "reason": why}) if r.runner == "sdcpp"]
    assert [(r.id, r.status, r.reason) for r in rows] == [("sd15@256/sdcpp-cpu-*", "skipped", why)]
    gpu = {r.id: r for r in plan(["sdcpp"], READY, device="auto", probe=WITH_GPU) if r.runner == "sdcpp"}
    assert gpu["sd15@256/sdcpp-cpu-q8_0"].status == "planned"
    assert gpu["sd15@256/sdcpp-cuda-*"].status == "skipped" and "CPU backend only" in gpu["sd15@256/sdcpp-cuda-*"].reason
    assert not [r for r in plan(["diffusers"], READY) if r.runner == "sdcpp"]  # not a peer of this run: no row


def test_peer_names_are_parsed_and_unknown_ones_refused():
    assert parse_list("sdcpp, diffusers", Peer, "peer") == ["sdcpp", "diffusers"]
    with pytest.raises(ShanshuiError, match="peer sd.cpp is not one of diffusers, optimum, sdcpp, none"):
        parse_list("sd.cpp", Peer, "peer")


def test_venv_marker_pins_and_python(tmp_path):
    folder = tmp_path / "sdcpp"
    py = venv.venv_python(folder)
    py.parent.mkdir(parents=True)
    assert not venv.is_ready(folder, venv.SDCPP)  # no marker: not ready (rebuilt on request)
    py.write_text("")
    venv.write_marker(folder, venv.SDCPP, {"stable-diffusion-cpp-python": "0.4.7", "torch": "2"}, build_s=12.34)
    marker = json.loads((folder / venv.MARKER).read_text(encoding="utf-8"))
    assert marker["pins"] == ["stable-diffusion-cpp-python==0.4.7", "numpy>=1.24,<3"] and marker["build_s"] == 12.3
    assert marker["versions"] == {"stable-diffusion-cpp-python": "0.4.7", "numpy": None, "pillow": None}
    assert venv.is_ready(folder, venv.SDCPP) and not venv.is_ready(folder, venv.OPTIMUM)  # other pins: not this venv
    assert not list(folder.glob("*.tmp"))
    info = venv.sdcpp_venv(tmp_path, create=False)
    assert not info["ready"] and "ready at" in info["reason"] and "--peers sdcpp" in info["reason"]
    assert venv.sdcpp_venv(tmp_path, create=True)["ready"]  # ready: nothing is built
    py.unlink()
    info = venv.sdcpp_venv(tmp_path, create=False)  # a marker without its python is not a venv
    assert not info["ready"] and "builds its own venv" in info["reason"]


def test_optimum_marker_of_before_stays_valid(tmp_path):
    folder = tmp_path / "optimum"
    venv.venv_python(folder).parent.mkdir(parents=True)
    venv.venv_python(folder).write_text("")
    (folder / venv.MARKER).write_text(json.dumps({"pins": [venv.TORCH_PIN, *venv.OPTIMUM_PINS]}), encoding="utf-8")
    assert venv.optimum_venv(tmp_path, create=True)["ready"]


def test_failed_build_is_one_line_with_its_log(tmp_path):
    peer = venv.PeerVenv("broken", "Broken", (("--no-index", "--find-links", str(tmp_path), "no-such-package-here"),),
                         "import no_such_module", ())
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "half-built").write_text("x")  # an earlier attempt without a marker: removed first
    info = venv.peer_venv(peer, tmp_path, create=True, timeout_s=600)
    assert not info["ready"] and "\n" not in info["reason"]
    assert info["reason"].startswith("creating the Broken venv failed while installing") and "broken-install.log" in info["reason"]
    assert not (tmp_path / "broken" / "half-built").exists() and not (tmp_path / "broken" / venv.MARKER).exists()
    assert "no-such-package-here" in (tmp_path / "broken-install.log").read_text(encoding="utf-8")


def test_stage_lines_and_step_times():
    assert w.parse_stage_line("stable-diffusion.cpp:3168 - get_learned_condition completed, taking 0.35s\n") == ("text_encoder", 0.35)
    assert w.parse_stage_line("sampling completed, taking 12.50s") == ("unet", 12.5)
    assert w.parse_stage_line("encode_first_stage completed, taking 80 ms") is None  # not a txt2img stage
    assert w.parse_stage_line("decode_first_stage completed, taking 250 ms") == ("vae_decode", 0.25)
    assert w.parse_stage_line("generate_image completed in 14.00s") is None
    assert w.step_times([(0, 10.0), (1, 11.5), (2, 12.25)], 2) == [1.5, 0.75]
    assert w.step_times([(1, 11.5), (2, 12.0)], 2) == []  # no start mark: no step times rather than wrong ones


def test_stage_log_reads_and_resets_the_peak_at_each_stage_end(capsys):
    class Mem:
        def __init__(self):
            self.peak, self.resets = 100.0, 0

        def peak_mb(self):
            return self.peak

        def reset(self):
            self.resets += 1
            self.peak = 0.0

    mem = Mem()
    log = w.StageLog(mem)
    log(1, b"get_learned_condition completed, taking 0.20s\n", None)
    mem.peak = 900.0
    log(1, b"some other line\n", None)
    log(1, b"sampling completed, taking 3.00s\n", None)
    mem.peak = 400.0
    log(1, b"decode_first_stage completed, taking 0.50s\n", None)
    assert log.times == {"text_encoder": 0.2, "unet": 3.0, "vae_decode": 0.5}
    assert log.peaks == {"text_encoder": 100.0, "unet": 900.0, "vae_decode": 400.0} and mem.resets == 3
    assert "some other line" in capsys.readouterr().err  # every line still reaches the row's log


def test_a_model_sdcpp_cannot_load_is_a_clear_error_not_a_crash():
    """sd.cpp returns a NULL context for a model it does not recognise; the binding keeps it as if loaded."""
    import ctypes
    from types import SimpleNamespace

    class Mem:
        def peak_mb(self):
            return 1.0

        def reset(self):
            pass

    log = w.StageLog(Mem())
    log(3, b"stable-diffusion.cpp:299  - get sd version from file failed: 'model'\n", None)
    log(1, b"stable-diffusion.cpp:212  - loading model from 'model'\n", None)  # info lines do not replace it
    null = SimpleNamespace(_model=SimpleNamespace(model=ctypes.POINTER(ctypes.c_int)()))
    with pytest.raises(RuntimeError, match=r"could not load this model \(get sd version from file failed: 'model'\)"):
        w.check_loaded(null, log.last_error)
    assert null._model.model is None  # nothing will free the NULL context
    loaded = SimpleNamespace(_model=SimpleNamespace(model=ctypes.pointer(ctypes.c_int(1))))
    w.check_loaded(loaded, None)
    assert loaded._model.model


FAKE_SDCPP = '''
"""A stand-in for the stable_diffusion_cpp binding: the calls the worker makes, sd.cpp's log lines, no C++."""
import ctypes, time
from PIL import Image

sd_log_callback = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_log = [None]
calls = []


def sd_set_log_callback(cb, data):
    _log[0] = cb


class StableDiffusion:
    def __init__(self, model_path, wtype, n_threads, vae_decode_only, verbose):
        assert wtype in ("q8_0", "f16") and n_threads == 1 and vae_decode_only
        self.big = bytearray(64 * 2**20)
        self.big[::4096] = b"x" * len(self.big[::4096])  # 64 MiB touched: a load peak
        _log[0](1, b"loading tensors completed, taking 0.10s\\n", None)

    def generate_image(self, prompt, negative_prompt, width, height, cfg_scale, sample_method, scheduler, sample_steps,
                       seed, progress_callback):
        assert (sample_method, scheduler, negative_prompt, cfg_scale) == ("dpm++2m", "discrete", "", 7.5)
        _log[0](1, b"get_learned_condition completed, taking 0.01s\\n", None)
        for k in range(sample_steps + 1):
            progress_callback(k, sample_steps, 0.0)
            time.sleep(0.002)
        progress_callback(1, 4, 0.0)  # other progress (another total) is ignored
        _log[0](1, b"sampling completed, taking 0.02s\\n", None)
        _log[0](1, b"decode_first_stage completed, taking 0.03s\\n", None)
        return [Image.new("RGB", (width, height), (10, seed % 256, 0))]
'''


@pytest.fixture
def fake_python(tmp_path):
    """A `python` for run_worker that puts the fake binding first on sys.path, then runs the worker script isolated."""
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "stable_diffusion_cpp.py").write_text(FAKE_SDCPP, encoding="utf-8")
    launcher = tmp_path / "python"
    launcher.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        # called as: python -I SCRIPT
        exec "{sys.executable}" -I -c "import sys, runpy; sys.path.insert(0, '{tmp_path / 'fake'}'); \\
        runpy.run_path(sys.argv[1], run_name='__main__')" "$2"
        """), encoding="utf-8")
    launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR)
    return str(launcher)


def spec_for(tmp_path: Path, weight_type: str) -> dict:
    s = Settings(steps=3, warmup=1, repeats=2, min_time_s=0.0, threads=1)
    return {"task": "row", "runner": "sdcpp", "backend": "ggml", "device": "cpu", "precision": weight_type,
            "weight_type": weight_type, "model_dir": str(tmp_path / "model"), "height": 64, "width": 64, "prompt": "pine",
            "seed": 7, "steps": s.steps, "guidance": s.guidance, "threads": 1, "warmup": s.warmup, "repeats": s.repeats,
            "stage_warmup": 1, "stage_repeats": 1, "image": str(tmp_path / f"{weight_type}.npy"), "steady": False,
            "min_time_s": 0.0, "steady_module": str(STEADY_MODULE), "memory_module": str(MEMORY_MODULE)}


@pytest.mark.skipif(os.name == "nt", reason="a POSIX shell launcher")
def test_worker_request_and_result_through_a_fake_binding(tmp_path, fake_python):
    res = run_worker(spec_for(tmp_path, "q8_0"), tmp_path, "row0", 120, python=fake_python, script=SDCPP_SCRIPT)
    assert res["ok"], (res, (tmp_path / "row0.log").read_text())
    assert res["pid"] != os.getpid() and res["weight_type"] == "q8_0" and "shanshui" not in res["modules_loaded"]
    assert res["load_s"] > 0 and res["peak_rss_load_mb"] > 64 and res["memory_method"] in ("clear_refs", "getrusage")
    g = res["generation"]
    assert len(g["runs_s"]) == 2 and g["unet_calls"] == 3 and len(g["steps_s"]) == 6 and all(t > 0.001 for t in g["steps_s"])
    assert g["split_s"] == {"text_encoder_s": [0.01, 0.01], "denoise_s": [0.02, 0.02], "vae_decoder_s": [0.03, 0.03]}
    assert g["first"]["text_encoder_s"] == 0.01 and g["first"]["unet_first_step_s"] > 0 and g["peak_rss_mb"] > 10
    for name in ("text_encoder", "unet_step", "vae_decode"):
        st = res["stages"][name]
        assert st["source"] == "in_pipeline" and st["runs_s"] and st["peak_rss_mb"] > 10
    image = np.load(res["image"])
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8 and image[0, 0].tolist() == [10, 7, 0]
    assert "get_learned_condition completed" in (tmp_path / "row0.log").read_text()  # sd.cpp's log kept in the row's log


def test_missing_venv_python_is_a_one_line_failure(tmp_path):
    res = run_worker(spec_for(tmp_path, "f16"), tmp_path, "row1", 60, python=str(tmp_path / "no-venv" / "bin" / "python"),
                     script=SDCPP_SCRIPT)
    assert res["ok"] is False and res["error"].startswith("cannot start") and "\n" not in res["error"]


def imported(path: Path, top_level: bool = False) -> set[str]:
    """Modules a file imports (anywhere, or only at module level: what loading it needs)."""
    import ast

    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    nodes = tree.body if top_level else list(ast.walk(tree))
    names = [a.name for n in nodes if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in nodes if isinstance(n, ast.ImportFrom)]
    return {n.split(".")[0] for n in names}


def test_worker_and_what_it_loads_by_path_never_import_shanshui():
    """They run in the sd.cpp venv, where shanshui is not installed: the worker needs only its binding and NumPy,
    memory.py only the standard library to load (its GPU part imports torch/pynvml when used), steady.py NumPy."""
    assert imported(SDCPP_SCRIPT) - set(sys.stdlib_module_names) == {"numpy", "stable_diffusion_cpp"}
    assert imported(MEMORY_MODULE, top_level=True) - set(sys.stdlib_module_names) == set()
    assert imported(STEADY_MODULE, top_level=True) - set(sys.stdlib_module_names) == {"numpy"}


def test_quality_of_sdcpp_rows_is_q8_0_against_its_own_f16():
    rep = fake_report()
    q8 = row("tiny@256/sdcpp-cpu-q8_0", "sdcpp", "ggml", "q8_0", 2.0, 0.1)
    f16 = row("tiny@256/sdcpp-cpu-f16", "sdcpp", "ggml", "f16", 2.5, 0.12)
    recs = rep["rows"] + [q8, f16]
    base = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    noisy = np.clip(base.astype(int) + np.random.default_rng(1).integers(-3, 4, base.shape), 0, 255).astype(np.uint8)
    other = np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    images = {q8["id"]: noisy, f16["id"]: base, "tiny@256/onnxruntime-cpu-fp32": other, "tiny@256/diffusers-cpu-fp32": other,
              "tiny@256/onnxruntime-cpu-int8": other}
    add_quality(recs, images)
    assert q8["quality"]["reference"] == f16["id"] and q8["quality"]["psnr_db"] > 35  # ±3 levels of noise
    assert f16["quality"] is None  # no image of the same noise to compare it with
    assert all((r.get("quality") or {}).get("reference", "").find("sdcpp") < 0 for r in rep["rows"])
    md = to_markdown({**rep, "rows": recs})
    assert "`tiny@256/sdcpp-cpu-q8_0`" in md and "*sdcpp* rows" in md and "not against the other rows" in md
    assert "*sdcpp* rows" not in to_markdown(fake_report())
