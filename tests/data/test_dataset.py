"""Data set writer and loader: round trip, resume after interruption, sidecar folders, clear errors, CLI."""

import json
import os

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from shanshui.cli.data import app
from shanshui.data.dataset import METADATA, example_record, load_folder, render_dataset
from shanshui.errors import ShanshuiError

SIZE = 64


def test_round_trip(tmp_path):
    res = render_dataset(tmp_path / "ds", 6, size=SIZE, seed=3, workers=2, p_empty=0.0)
    assert (res.rendered, res.skipped) == (6, 0)
    ex = load_folder(tmp_path / "ds")
    assert [e.path.name for e in ex] == [f"{i:08d}.png" for i in range(6)]
    for i, e in enumerate(ex):
        meta, img = example_record(i, SIZE, 3, None, 0.0)
        assert (e.text_zh, e.text_en, e.attributes, e.seed) == (meta["text_zh"], meta["text_en"], meta["attributes"], meta["seed"])
        assert e.text == e.text_zh and e.text_zh and e.text_en
        assert np.array_equal(e.image(), img)


def test_resume_renders_only_missing(tmp_path):
    out = tmp_path / "ds"
    render_dataset(out, 6, size=SIZE, workers=2)
    before = {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    lines = (out / METADATA).read_text(encoding="utf-8").splitlines()
    # interruption: image 4's line never written (its PNG was), image 5 missing, a torn line and a temp file left
    (out / "images" / "00000005.png").unlink()
    (out / METADATA).write_text("\n".join(lines[:4]) + "\n" + lines[5][:30], encoding="utf-8")
    (out / "images" / ".00000005.png.abc.tmp").write_bytes(b"half")
    progress = []
    res = render_dataset(out, 6, size=SIZE, workers=2, progress=lambda d, t: progress.append((d, t)))
    assert (res.rendered, res.skipped) == (2, 4)
    assert progress[0] == (4, 6) and progress[-1] == (6, 6)
    after = {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    assert sorted(after) == [f"{i:08d}.png" for i in range(6)]  # temp file gone
    assert all(after[n] == before[n] for n in [f"{i:08d}.png" for i in range(4)])
    recs = [json.loads(x) for x in (out / METADATA).read_text(encoding="utf-8").splitlines()]
    assert [r["file_name"] for r in recs] == [f"images/{i:08d}.png" for i in range(6)]
    again = render_dataset(out, 8, size=SIZE, workers=1)  # growing the set renders only the new ones
    assert (again.rendered, again.skipped) == (2, 6)


def test_resume_refuses_other_options(tmp_path):
    render_dataset(tmp_path / "ds", 1, size=SIZE)
    with pytest.raises(ShanshuiError, match="size=64"):
        render_dataset(tmp_path / "ds", 1, size=128)


def test_sidecar_folder(tmp_path):
    for name, text in [("a.png", "一棵青松，青山环绕"), ("b.jpg", "a pine by a lake")]:
        Image.new("RGB", (16, 16), (200, 190, 170)).save(tmp_path / name)
        (tmp_path / name).with_suffix(".txt").write_text(text + "\n", encoding="utf-8")
    ex = load_folder(tmp_path)
    assert [(e.path.name, e.text_zh, e.text_en, e.text) for e in ex] == [
        ("a.png", "一棵青松，青山环绕", "", "一棵青松，青山环绕"), ("b.jpg", "", "a pine by a lake", "a pine by a lake")]
    assert ex[0].image().shape == (16, 16, 3)
    Image.new("RGB", (8, 8)).save(tmp_path / "c.png")
    with pytest.raises(ShanshuiError, match="no .txt caption"):
        load_folder(tmp_path)


def test_user_metadata_jsonl(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    (tmp_path / METADATA).write_text(json.dumps({"file_name": "x.png", "text": "山水"}, ensure_ascii=False) + "\n", "utf-8")
    (ex,) = load_folder(tmp_path)
    assert (ex.text, ex.text_zh, ex.attributes) == ("山水", "山水", None)
    (tmp_path / METADATA).write_text('{"file_name": "gone.png", "text": "x"}\n', "utf-8")
    with pytest.raises(ShanshuiError, match="gone.png"):
        load_folder(tmp_path)


def test_loader_errors(tmp_path):
    with pytest.raises(ShanshuiError, match="not a folder"):
        load_folder(tmp_path / "nope")
    with pytest.raises(ShanshuiError, match="no images"):
        load_folder(tmp_path)


@pytest.mark.parametrize("kwargs, message", [
    (dict(count=0), "--count must be at least 1"),
    (dict(size=100), "multiple of 8"),
    (dict(size=4096), "multiple of 8 from 64 to 2048"),
    (dict(workers=0), "--workers"),
])
def test_bad_input(tmp_path, kwargs, message):
    args = dict(count=2, size=SIZE) | kwargs
    with pytest.raises(ShanshuiError, match=message):
        render_dataset(tmp_path / "ds", **args)
    assert not (tmp_path / "ds" / METADATA).exists()


def test_unwritable_out(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ShanshuiError, match="cannot write to .*choose a folder"):
        render_dataset(blocker / "ds", 2, size=SIZE)
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(ShanshuiError, match="cannot write"):
            render_dataset(ro / "ds", 2, size=SIZE)


def test_cli_render(tmp_path):
    r = CliRunner().invoke(app, ["render", str(tmp_path / "ds"), "--count", "3", "--size", "64", "--seed", "2",
                                 "--workers", "1", "--format", "tall"])
    assert r.exit_code == 0, r.output
    assert "wrote 3 images to" in r.output and "images/s" in r.output
    recs = [json.loads(x) for x in (tmp_path / "ds" / METADATA).read_text(encoding="utf-8").splitlines()]
    assert len(recs) == 3 and all(x["attributes"]["fmt"] == "tall" for x in recs)
    bad = CliRunner().invoke(app, ["render", str(tmp_path / "ds2"), "--count", "0"])
    assert bad.exit_code != 0 and isinstance(bad.exception, ShanshuiError)
    bad = CliRunner().invoke(app, ["render", str(tmp_path / "ds3"), "--format", "round"])
    assert bad.exit_code == 2
