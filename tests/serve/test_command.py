"""`shanshui serve`: refusals come before the model loads; the binding rules."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from shanshui.cli import app
from shanshui.errors import ShanshuiError
from shanshui.serve.security import check_binding, is_loopback, key_matches


def test_non_loopback_needs_a_key():
    r = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--model", "/nonexistent"])
    assert r.exit_code == 1
    assert r.output.startswith("error: --host 0.0.0.0 is reachable from other machines: give --api-key")
    assert "Traceback" not in r.output


def test_short_key_is_refused():
    r = CliRunner().invoke(app, ["serve", "--api-key", "short", "--model", "/nonexistent"])
    assert r.exit_code == 1 and "at least 16 characters" in r.output


def test_bad_model_is_one_line():
    r = CliRunner().invoke(app, ["serve", "--model", "/nonexistent/model"])
    assert r.exit_code == 1 and r.output.startswith("error: model folder") and "Traceback" not in r.output


def test_bad_port_is_one_line():
    r = CliRunner().invoke(app, ["serve", "--port", "70000"])
    assert r.exit_code == 2 and r.output.startswith("error:")


def test_binding_rules():
    for host in ("127.0.0.1", "::1", "[::1]", "localhost", "127.0.0.2"):
        assert is_loopback(host) and check_binding(host, None, False) is None
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.org"):
        assert not is_loopback(host)
        with pytest.raises(ShanshuiError, match="--api-key"):
            check_binding(host, None, False)
    assert check_binding("0.0.0.0", "k" * 16, False).startswith("warning:")
    assert "WITHOUT AN API KEY" in check_binding("0.0.0.0", None, True)


def test_key_matching():
    import base64

    key = "s3cret-key-s3cret"
    basic = "Basic " + base64.b64encode(f"user:{key}".encode()).decode()
    assert key_matches(f"Bearer {key}", None, key) and key_matches(None, key, key) and key_matches(basic, None, key)
    assert not key_matches(None, None, key) and not key_matches(f"Bearer {key}x", None, key)
    assert not key_matches("Basic !!!", None, key) and not key_matches(f"Token {key}", None, key)


def test_opt_out_passes_the_binding_check():
    r = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0", "--insecure-no-api-key", "--model", "/nonexistent/m"])
    assert r.exit_code == 1 and r.output.startswith("error: model folder")  # got past the binding rule to the model
