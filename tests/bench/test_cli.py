"""`shanshui bench` option errors: one line, non-zero, before anything is measured."""

import json

import pytest
from typer.testing import CliRunner

from shanshui.cli import app
from tests.bench.helpers import fake_report
from tests.test_cli import assert_one_line_error

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("args,fragment", [
    (["--backends", "openvino"], "backend openvino is not one of onnxruntime, torch, tensorrt"),
    (["--precisions", "fp8"], "precision fp8 is not one of fp32, fp16, int8"),
    (["--peers", "tgi"], "peer tgi is not one of diffusers, optimum, sdcpp, none"),
    (["--size", "250"], "size 250 is not a positive multiple of 8"),
    (["--size", "big"], "must be image sizes in pixels"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--repeats", "0"], "--repeats must be at least 1"),
    (["--device", "tpu"], "'tpu' is not one of"),
    (["--model", "/no/such/model"], "no such folder"),
    (["--compare", "/no/such/old.json"], "does not exist"),
    (["--load", "/no/such/new.json"], "does not exist"),
])
def test_bad_options_are_one_line(args, fragment):
    assert_one_line_error(run("bench", *args), fragment)


def test_no_default_model_is_one_clear_error(monkeypatch):
    import shanshui.models as models

    monkeypatch.setattr(models, "default_source_path", lambda: None)  # a build without the shipped model
    monkeypatch.setattr(models, "default_model_path", lambda: None)
    assert_one_line_error(run("bench"), "no default model ships")


def test_not_a_model_folder(tmp_path):
    assert_one_line_error(run("bench", "--model", tmp_path), "neither a diffusers folder nor a shanshui export")


def test_compare_with_a_file_that_is_no_report(tmp_path):
    (tmp_path / "old.json").write_text(json.dumps({"rows": []}), encoding="utf-8")
    assert_one_line_error(run("bench", "--compare", tmp_path / "old.json"), "not a shanshui bench report")


def test_load_compare_and_rerender(tmp_path):
    old, new = fake_report(1.0), fake_report(2.0)
    (tmp_path / "old.json").write_text(json.dumps(old), encoding="utf-8")
    (tmp_path / "new.json").write_text(json.dumps(new), encoding="utf-8")
    r = run("bench", "--load", tmp_path / "new.json", "--compare", tmp_path / "old.json", "--out", tmp_path / "again")
    assert r.exit_code == 0, r.output
    assert "tiny@256/onnxruntime-cpu-fp32" in r.output and "2.00×" in r.output
    assert (tmp_path / "again.md").is_file() and (tmp_path / "again.png").is_file()
    assert json.loads((tmp_path / "again.json").read_text(encoding="utf-8")) == new


def test_help_lists_bench():
    r = run("--help")
    assert r.exit_code == 0 and "bench" in r.output
    r = run("bench", "--help")
    assert r.exit_code == 0 and "--compare" in r.output and "--quick" in r.output
