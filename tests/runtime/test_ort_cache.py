"""ONNX Runtime's saved optimized graphs (shanshui/runtime/ort_cache.py), on the shipped int8 U-Net: the first load
writes an entry, later loads map its laid-out weights and give the plain load's output bit for bit; a cache turned
off, damaged or unwritable falls back to the plain load."""

import numpy as np
import onnxruntime as ort
import pytest

from shanshui.runtime import ort_cache
from shanshui.runtime.ort_memory import session_options
from shanshui.spec.folders import default_model_dir
from shanshui.spec.manifest import read_manifest

CPU = ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def unet():
    root = default_model_dir()
    m = read_manifest(root)
    rng = np.random.default_rng(0)
    feeds = {"sample": rng.standard_normal((2, 4, 16, 16)).astype(np.float32),
             "timestep": np.full(2, 500.0, np.float32),
             "encoder_hidden_states": rng.standard_normal((2, int(m["dims"]["text_len"]),
                                                           int(m["dims"]["text_dim"]))).astype(np.float32)}
    path = root / "unet" / "model.onnx"
    ident = {"file": "unet/model.onnx", "sha256": m["components"]["unet"]["sha256"], "level": "all", "prepack": True}
    plain = ort.InferenceSession(str(path), _opts(), providers=CPU).run(None, feeds)[0]
    return path, ident, feeds, plain


def _opts():
    return session_options("unet", 1, True, prepack=True)


def _entries(root):
    return sorted(root.glob("*/*/" + ort_cache.MODEL))


def _mapped(entry) -> bool:
    """Whether this process maps the entry's data file (the laid-out weights read from the cache)."""
    with open("/proc/self/maps", encoding="utf-8") as f:
        return any(str(entry.parent / ort_cache.DATA) in line for line in f)


def test_first_load_saves_the_entry_and_later_loads_map_it(unet, tmp_path, monkeypatch):
    path, ident, feeds, plain = unet
    monkeypatch.setenv(ort_cache.ENV, str(tmp_path))
    first = ort_cache.cached_session(ort, path, ident, _opts, CPU)
    (entry,) = _entries(tmp_path)
    assert (entry.parent / ort_cache.DATA).stat().st_size > path.stat().st_size  # int8 weights and their packed copy
    assert np.array_equal(first.run(None, feeds)[0], plain)
    del first
    monkeypatch.setattr(ort_cache, "_save", lambda *a: pytest.fail("the entry was written again"))
    again = ort_cache.cached_session(ort, path, ident, _opts, CPU)
    assert _mapped(entry)
    assert np.array_equal(again.run(None, feeds)[0], plain)
    assert [p.name for p in entry.parent.parent.iterdir()] == [entry.parent.name]  # no temporary folder left


def test_another_graph_gets_its_own_entry(unet, tmp_path, monkeypatch):
    path, ident, feeds, plain = unet
    monkeypatch.setenv(ort_cache.ENV, str(tmp_path))
    ort_cache.cached_session(ort, path, ident, _opts, CPU)
    changed = {**ident, "sha256": {**ident["sha256"], "model.onnx": "0" * 64}}  # the source graph's hash changed
    sess = ort_cache.cached_session(ort, path, changed, _opts, CPU)
    assert len(_entries(tmp_path)) == 2
    assert np.array_equal(sess.run(None, feeds)[0], plain)


def test_off_writes_nothing(unet, tmp_path, monkeypatch):
    path, ident, feeds, plain = unet
    monkeypatch.setenv(ort_cache.ENV, "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    sess = ort_cache.cached_session(ort, path, ident, _opts, CPU)
    assert np.array_equal(sess.run(None, feeds)[0], plain)
    assert not list(tmp_path.rglob("*"))


def test_a_damaged_entry_is_dropped_and_the_source_loaded(unet, tmp_path, monkeypatch):
    path, ident, feeds, plain = unet
    monkeypatch.setenv(ort_cache.ENV, str(tmp_path))
    ort_cache.cached_session(ort, path, ident, _opts, CPU)
    (entry,) = _entries(tmp_path)
    entry.write_bytes(b"not a graph")
    sess = ort_cache.cached_session(ort, path, ident, _opts, CPU)
    assert np.array_equal(sess.run(None, feeds)[0], plain)
    assert not entry.parent.exists()


def test_an_unwritable_cache_falls_back_to_the_plain_load(unet, tmp_path, monkeypatch):
    path, ident, feeds, plain = unet
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv(ort_cache.ENV, str(blocker / "cache"))
    sess = ort_cache.cached_session(ort, path, ident, _opts, CPU)
    assert np.array_equal(sess.run(None, feeds)[0], plain)
