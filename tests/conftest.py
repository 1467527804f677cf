"""Shared fixtures: one tiny random-weight model and its export per test session (fixed seeds)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def ort_cache(tmp_path_factory):
    """ONNX Runtime's saved graphs (shanshui/runtime/ort_cache.py) go to a folder of this test session, not the
    user's cache; subprocesses inherit it."""
    old = os.environ.get("SHANSHUI_ORT_CACHE")
    path = tmp_path_factory.mktemp("ort-cache")
    os.environ["SHANSHUI_ORT_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("SHANSHUI_ORT_CACHE", None)
    else:
        os.environ["SHANSHUI_ORT_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A random-weight `tiny` diffusers folder, made by `shanshui init`."""
    from shanshui.train.arch import init_model

    path = tmp_path_factory.mktemp("models") / "tiny"
    init_model("tiny", path, seed=0)
    return path


@pytest.fixture(scope="session")
def tiny_export(tiny_model, tmp_path_factory):
    """Its ONNX export (fp32), checked against PyTorch by the exporter itself."""
    from shanshui.export.onnx_export import export_model

    out = tmp_path_factory.mktemp("exports") / "tiny-onnx"
    export_model(tiny_model, out, max_batch=2)
    return out
