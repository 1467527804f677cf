"""Shared fixtures: one tiny random-weight model and its export per test session (fixed seeds)."""

from __future__ import annotations

import pytest


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
