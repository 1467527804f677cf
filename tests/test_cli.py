"""The CLI through typer's CliRunner: the happy path, and every bad input as one line, non-zero, no traceback."""

import json

import pytest
from typer.testing import CliRunner

from shanshui.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def assert_one_line_error(result, fragment):
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert fragment in lines[0], lines[0]


def test_init_export_generate(tmp_path):
    model, onnx, png = tmp_path / "m", tmp_path / "m-onnx", tmp_path / "out.png"
    r = run("init", model, "--arch", "tiny", "--seed", "1")
    assert r.exit_code == 0, r.output
    assert "24.9 M parameters" in r.output
    assert json.loads((model / "shanshui.json").read_text())["parameters"]["total"] <= 25_000_000
    r = run("export", model, onnx, "--height", "128", "--width", "128", "--max-batch", "1")
    assert r.exit_code == 0, r.output
    assert "unet" in r.output and f"wrote {onnx}" in r.output
    r = run("generate", "一棵青松，青山环绕，云雾缭绕", "--model", onnx, "-o", png, "--steps", "3", "--seed", "5",
            "--sampler", "euler", "--guidance", "4", "--negative-prompt", "模糊", "--height", "128", "--width", "160")
    assert r.exit_code == 0, r.output
    assert f"wrote {png}" in r.output and png.is_file()
    r = run("generate", "pine", "--model", model, "--backend", "torch", "-o", tmp_path / "t.png", "--steps", "2",
            "--num-images", "2")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "t-0.png").is_file() and (tmp_path / "t-1.png").is_file()


def test_help_lists_commands():
    r = run("--help")
    assert r.exit_code == 0 and all(c in r.output for c in ("init", "export", "generate"))


@pytest.fixture(scope="module")
def model_args(tiny_export):
    return ["--model", str(tiny_export)]


@pytest.mark.parametrize("args,fragment", [
    (["generate", "pine", "--steps", "0"], "steps must be"),
    (["generate", "pine", "--steps", "-3"], "steps must be"),
    (["generate", "pine", "--height", "100"], "multiple of 8"),
    (["generate", "pine", "--width", "250"], "multiple of 8"),
    (["generate", ""], "prompt is empty"),
    (["generate", "pine", "--sampler", "plms"], "'plms' is not one of"),
    (["generate", "pine", "-o", "out.jpg"], "must end in .png"),
    (["generate", "pine", "--backend", "torch"], "is an ONNX export"),
    (["generate", "pine", "--steps", "many"], "should be a valid integer"),
])
def test_bad_generate_input(model_args, args, fragment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(run(*args, *model_args), fragment)
    assert not list(tmp_path.iterdir()), "a failed command wrote files"


def test_missing_and_wrong_model_folders(tmp_path):
    assert_one_line_error(run("generate", "pine", "--model", tmp_path / "nope"), "does not exist")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("x")
    assert_one_line_error(run("generate", "pine", "--model", tmp_path / "junk"), "neither a shanshui export")
    assert_one_line_error(run("export", tmp_path / "junk", tmp_path / "o"), "not a diffusers pipeline folder")
    assert_one_line_error(run("export", tmp_path / "nope"), "does not exist")


def test_bad_init_input(tmp_path, tiny_model):
    assert_one_line_error(run("init", tiny_model), "already exists")
    assert_one_line_error(run("init", tmp_path / "x", "--arch", "sd99"), "'sd99' is not one of")


def test_export_refuses_unknown_precision_and_bad_size(tiny_model, tmp_path):
    assert_one_line_error(run("export", tiny_model, tmp_path / "o", "--precision", "int4"), "'int4' is not one of")
    assert_one_line_error(run("export", tiny_model, tmp_path / "o", "--height", "250"), "multiple of 32")


def test_quantize_command(tiny_export, tmp_path):
    out = tmp_path / "fp16"
    r = run("quantize", tiny_export, out, "--precision", "fp16", "--no-check")
    assert r.exit_code == 0, r.output
    assert "unet          fp16" in r.output and f"wrote {out}" in r.output
    assert_one_line_error(run("quantize", tiny_export, tmp_path / "o2", "--precision", "int3"), "'int3' is not one of")
    assert_one_line_error(run("quantize", tmp_path / "nope", tmp_path / "o3"), "not a shanshui export")


def test_export_fp16_keeps_its_fp32_reference(tiny_model, tmp_path):
    out = tmp_path / "m-fp16"
    r = run("export", tiny_model, out, "--precision", "fp16", "--no-check", "--max-batch", "1", "--height", "128", "--width", "128")
    assert r.exit_code == 0, r.output
    m = json.loads((out / "shanshui_manifest.json").read_text())
    assert m["precision"] == "fp16" and json.loads((out / ".fp32" / "shanshui_manifest.json").read_text())["precision"] == "fp32"
    r = run("export", tiny_model, out, "--precision", "fp16", "--no-check", "--max-batch", "1", "--height", "128", "--width", "128")
    assert r.exit_code == 0 and "unchanged, kept" in r.output  # both the fp32 reference and the fp16 result are reused
