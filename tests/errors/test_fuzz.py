"""Property tests: random strings, numbers and bytes at `generate`'s options and at the manifest reader.

generate runs in-process (CliRunner) against the shipped model, loaded once; painting is replaced by a marker
raised after validation, so an example costs milliseconds. The property: an input is either refused with one
`error:` line (never a traceback), or accepted and then inside the documented limits.
"""

from __future__ import annotations

import json
import math
import os
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from shanshui import limits
from shanshui.errors import ShanshuiError
from shanshui.spec.manifest import MANIFEST, open_exported, read_manifest
from shanshui.models import DEFAULT_ONNX

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


class Accepted(Exception):
    """Validation passed; painting would start here."""


def load_shipped():
    """The shipped model, loaded (runtime.pipeline.open_pipeline, or Pipeline on older layouts)."""
    import shanshui.runtime.pipeline as pipeline

    return getattr(pipeline, "open_pipeline", None) and pipeline.open_pipeline(None, threads=1) or pipeline.Pipeline(None, threads=1)


@pytest.fixture(scope="module")
def loaded():
    return load_shipped()


@pytest.fixture
def cli(loaded, monkeypatch, tmp_path):
    from shanshui.cli import app

    def fake_loader(model, request=None, **kw):
        loaded.validate(request)
        raise Accepted(request)

    try:  # where generate finds its loader: cli/generate.py's open_pipeline, or the runtime's Pipeline
        import shanshui.cli.generate as target

        monkeypatch.setattr(target, "open_pipeline", fake_loader)
    except ImportError:
        import shanshui.runtime.pipeline as target

        monkeypatch.setattr(target, "Pipeline", fake_loader)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    return lambda args, env=None: runner.invoke(app, args, env=env, catch_exceptions=True)


def _check(result) -> object:
    """The request when accepted; asserts a clean one-line error otherwise."""
    if isinstance(result.exception, Accepted):
        return result.exception.args[0]
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return None


numbers = st.one_of(st.integers(min_value=-(2**70), max_value=2**70).map(str),
                    st.floats(allow_nan=True, allow_infinity=True).map(repr),
                    st.sampled_from(["nan", "inf", "-inf", "1e309", "0x10", "", " ", "1_000", "٣", "１"]),
                    st.text(max_size=12))
OPTIONS = ["--steps", "--guidance", "--seed", "--height", "--width", "--num-images", "--threads", "--strength"]


@FAST
@given(option=st.sampled_from(OPTIONS), value=numbers)
def test_generate_numbers(cli, option, value):
    req = _check(cli(["generate", "山", option, value]))
    if req is None:
        return
    assert 1 <= req.steps <= 1000 and math.isfinite(req.guidance) and 0 <= req.guidance <= 50
    assert 0 <= req.seed <= 2**64 - 1 and 1 <= req.num_images <= 16
    for v in (req.height, req.width):
        assert v is None or (32 <= v <= 1024 and v % 32 == 0)  # the shipped model's stride and max_size


@FAST
@given(prompt=st.text(max_size=300), negative=st.text(max_size=300))
def test_generate_prompts(cli, prompt, negative):
    if prompt.startswith("-"):  # an option name, for the parser
        prompt = " " + prompt
    req = _check(cli(["generate", prompt, "-n", negative]))
    if req is not None:
        assert req.prompt.strip() and "\x00" not in req.prompt + req.negative_prompt


@FAST
@given(value=st.one_of(st.text(max_size=10), st.integers(-(2**40), 2**40).map(str)))
def test_threads_environment(cli, value):
    if "\x00" in value:
        return  # an environment variable cannot hold NUL
    req = _check(cli(["generate", "山"], env={"SHANSHUI_THREADS": value}))
    if req is not None and value.strip():
        assert value.strip().isascii() and 1 <= int(value.strip()) <= limits.max_threads()


@pytest.fixture(scope="module")
def export_copy(tmp_path_factory):
    """A hard-linked copy of the shipped export; each example writes its own manifest over the copy's."""
    root = tmp_path_factory.mktemp("fuzz") / "export"
    shutil.copytree(DEFAULT_ONNX, root, copy_function=os.link)
    (root / MANIFEST).unlink()
    return root


def _open(root):
    try:
        model = open_exported(root)
    except ShanshuiError as e:
        assert "\n" not in str(e)
        return None
    return model.dims, model.shapes, [model.onnx_path(c) for c in ("text_encoder", "unet", "vae_decoder")]


@FAST
@given(data=st.binary(max_size=400))
def test_manifest_bytes(export_copy, data):
    (export_copy / MANIFEST).write_bytes(data)
    assert _open(export_copy) is None  # random bytes are never a manifest


json_values = st.recursive(st.none() | st.booleans() | st.integers(-(2**65), 2**65) | st.floats() | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=12)


def _paths(obj, prefix=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))


SHIPPED = json.loads((DEFAULT_ONNX / MANIFEST).read_text(encoding="utf-8"))
PATHS = sorted(_paths(SHIPPED))


@FAST
@given(path=st.sampled_from(PATHS), value=json_values)
def test_manifest_with_one_field_changed(export_copy, path, value):
    m = json.loads(json.dumps(SHIPPED))
    node = m
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    (export_copy / MANIFEST).write_text(json.dumps(m), encoding="utf-8")  # NaN/Infinity literals included
    opened = _open(export_copy)
    if opened is not None:  # accepted: then the files it names are inside the folder and intact
        _, _, files = opened
        assert all(export_copy.resolve() in f.resolve().parents for f in files)
        assert read_manifest(export_copy) is not None
