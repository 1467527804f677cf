"""`shanshui engine …` and `generate --backend tensorrt` through the CLI: one-line errors where TensorRT or a GPU is
missing or an engine is stale; the happy path on the fake TensorRT of fake_trt.py."""

import sys
import types

import pytest
from typer.testing import CliRunner

from shanshui.cli import app
from tests.engines import fake_trt
from tests.test_cli import assert_one_line_error

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def no_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError, GPU or not


@pytest.fixture
def tensorrt_without_gpu(monkeypatch):
    import torch

    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_build_without_tensorrt(no_tensorrt, tiny_export, tmp_path):
    r = run("engine", "build", tiny_export, "--out", tmp_path / "e")
    assert_one_line_error(r, "TensorRT is not installed: pip install 'shanshui[tensorrt]'")
    assert "or use --backend onnxruntime --device cuda" in r.output
    assert not (tmp_path / "e").exists()


def test_build_without_gpu(tensorrt_without_gpu, tiny_export, tmp_path):
    r = run("engine", "build", tiny_export, "--out", tmp_path / "e")
    assert_one_line_error(r, "no CUDA GPU is visible here")
    assert "--backend onnxruntime --device cpu" in r.output
    assert not (tmp_path / "e").exists()


def test_old_tensorrt_is_refused(monkeypatch, tiny_export, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="8.6.1"))
    assert_one_line_error(run("engine", "build", tiny_export, "--out", tmp_path / "e"), "TensorRT 8.6.1 is too old")


@pytest.mark.parametrize("args,fragment", [
    (["--shapes", "1x256"], "is not NxHxW"),
    (["--shapes", "4x256x256"], "images per call must be 1..2"),
    (["--shapes", "1x250x256"], "must be a multiple of 32"),
    (["--precision", "int8"], "int8 engines are built from an int8 (QDQ) export"),
    (["--precision", "bf16"], "'bf16' is not one of"),
])
def test_bad_build_options(fake, tiny_export, tmp_path, args, fragment):
    assert_one_line_error(run("engine", "build", tiny_export, "--out", tmp_path / "e", *args), fragment)
    assert not (tmp_path / "e").exists()


def test_bad_shapes_are_reported_before_tensorrt_is_looked_for(no_tensorrt, tiny_export, tmp_path):
    assert_one_line_error(run("engine", "build", tiny_export, "--shapes", "1x256"), "is not NxHxW")
    assert_one_line_error(run("engine", "build", tiny_export, "--precision", "int8"), "int8 engines are built from an int8")


def test_build_of_a_non_export(tmp_path):
    assert_one_line_error(run("engine", "build", tmp_path), "is not a shanshui export")


@pytest.fixture
def fake(monkeypatch):
    return fake_trt.install(monkeypatch)


def test_build_info_and_generate_on_fake_tensorrt(fake, tiny_export, tmp_path, monkeypatch):
    out = tmp_path / "engines"
    r = run("engine", "build", tiny_export, "--out", out, "--precision", "fp32", "--shapes", "1x256x256")
    assert r.exit_code == 0, r.output
    assert "text_encoder: building fp32 engine for 1x256x256 (not built yet)" in r.output
    assert f"wrote {out}" in r.output and "unet" in r.output and "TensorRT 10.3.0 on Fake GPU (sm_90)" in r.output
    r = run("engine", "build", tiny_export, "--out", out, "--precision", "fp32")
    assert r.exit_code == 0 and r.output.count("cached, reused") == 3, r.output
    r = run("engine", "info", out)
    assert r.exit_code == 0 and "they run on this machine" in r.output, r.output
    png = tmp_path / "p.png"
    r = run("generate", "pine", "--model", out, "-o", png, "--steps", "2", "--no-cuda-graphs")
    assert r.exit_code == 0, r.output
    assert png.is_file() and "tensorrt" in r.output

    monkeypatch.setattr(fake_trt.FakeCuda, "get_device_name", lambda self, i=0: "Other GPU")
    r = run("engine", "info", out)
    assert r.exit_code == 0 and "they cannot run here: the text_encoder engine" in r.output and "is stale" in r.output
    r = run("generate", "pine", "--model", out, "-o", tmp_path / "q.png", "--steps", "2")
    assert_one_line_error(r, "is stale (GPU Fake GPU (sm_90) → Other GPU (sm_90)): rebuild with `shanshui engine build")
    assert not (tmp_path / "q.png").exists()


@pytest.mark.parametrize("extra,fragment", [
    ([], "TensorRT is not installed"),
    (["--device", "cpu"], "TensorRT runs on NVIDIA GPUs only: use --backend onnxruntime"),
])
def test_generate_with_tensorrt_backend_here(no_tensorrt, tiny_export, tmp_path, monkeypatch, extra, fragment):
    monkeypatch.chdir(tmp_path)
    r = run("generate", "pine", "--model", tiny_export, "--backend", "tensorrt", *extra)
    assert_one_line_error(r, fragment)
    assert not list(tmp_path.iterdir())


def test_generate_tensorrt_without_engines(fake, tiny_export, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run("generate", "pine", "--model", tiny_export, "--backend", "tensorrt")
    assert_one_line_error(r, f"no TensorRT engines in {tiny_export / 'engines'}: build them with `shanshui engine build")


def test_engine_info_without_engines(tmp_path):
    assert_one_line_error(run("engine", "info", tmp_path), "no TensorRT engines in")


@pytest.mark.parametrize("args,fragment", [
    (["--precision", "fp16"], "--precision is for the torch backend"),
    (["--backend", "tensorrt", "--precision", "int8"], "--precision is for the torch backend"),
    (["--cuda-graphs"], "--cuda-graphs is for --backend torch or tensorrt"),
    (["--precision", "fp8"], "'fp8' is not one of"),
])
def test_generate_option_combinations_on_an_export(tiny_export, tmp_path, monkeypatch, args, fragment):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(run("generate", "pine", "--model", tiny_export, *args), fragment)
