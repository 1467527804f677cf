"""The VAE decoder cut at its group norms: decoded in tiles it gives the whole decode's image (fp32: to float
rounding; int8: the rounding of whole-image statistics only), at any tile count, and `--low-memory` uses it."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from typer.testing import CliRunner

from shanshui.cli import app
from shanshui.export.vae_segments import segment_decoder
from shanshui.metrics import psnr, to_uint8
from shanshui.runtime import lowmem
from shanshui.runtime.pipeline import Request, open_pipeline
from shanshui.runtime.vae_segments import decode_segmented, grid
from shanshui.runtime.vae_tiling import decode_tiled
from shanshui.spec.folders import default_model_dir

INT8_PSNR_DB = 38.0  # shipped int8 decoder, segmented vs whole at 512 px (measured 40.2 dB; 2 × 2 blended: 37.9)


def _sessions(path):
    protos, entries = segment_decoder(onnx.load(str(path)))
    blobs = [p.SerializeToString() for p in protos]

    def load(k):
        sess = ort.InferenceSession(blobs[k], providers=["CPUExecutionProvider"])
        return lambda feeds: dict(zip(entries[k]["outputs"], sess.run(entries[k]["outputs"], feeds)))
    whole = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return load, entries, lambda z: whole.run(None, {"latent_sample": z})[0]


@pytest.fixture(scope="module")
def tiny_fp32(tiny_export):
    return _sessions(tiny_export / "vae_decoder" / "model.onnx")


def test_segments_chain_and_mark_what_may_be_tiled(tiny_fp32):
    _, entries, _ = tiny_fp32
    made = {"latent_sample"}
    for e in entries:  # every image-shaped input comes from the latent or an earlier segment
        assert set(e["in_scales"]) <= made, set(e["in_scales"]) - made
        made |= set(e["outputs"])
        assert all(m["mean"] in e["inputs"] and m["invstd"] in e["inputs"] for m in e["norms"])
    assert entries[-1]["outputs"] == ["sample"]
    assert not entries[0]["tiled"] and entries[0]["scale"] == 1  # the mid block (attention) runs whole
    tiled = [e for e in entries if e["tiled"]]
    assert tiled and all(e["scale"] >= 2 and 1 <= e["halo"] <= 4 for e in tiled)


@pytest.mark.parametrize("shape,tile", [((1, 4, 32, 32), 8), ((1, 4, 24, 40), 7), ((2, 4, 16, 16), 16)])
def test_fp32_tiles_are_the_whole_decode(tiny_fp32, shape, tile):
    """fp32: tiles give exactly the one-tile result (same arithmetic per pixel), which is ONNX Runtime's whole decode
    up to the statistics' float rounding (5e-4 stated on outputs of about ±2; measured 1.5e-4 here, 1.2e-5 on
    SD 1.5 at 256 px)."""
    load, entries, whole = tiny_fp32
    z = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    ref = whole(z)
    got = decode_segmented(load, entries, z, tile)
    assert got.shape == ref.shape
    np.testing.assert_array_equal(got, decode_segmented(load, entries, z, max(shape[2:])))
    np.testing.assert_allclose(got, ref, atol=5e-4)
    if tile >= min(shape[2:]):
        return  # one tile: nothing to compare with blending
    blended = decode_tiled(whole, z[:1], 8, tile + 4)  # the blended tiles it replaces are measurably worse
    assert np.abs(blended - ref[:1]).max() > 10 * np.abs(got[:1] - ref[:1]).max()


def test_int8_tiles_do_not_depend_on_the_tile_count():
    """Shipped int8 decoder at 512 px: 1, 4 and 64 tiles give one image (the tiling itself is exact); against ONNX
    Runtime's whole decode only the statistics' rounding differs, which int8 re-rounding amplifies a little."""
    load, entries, whole = _sessions(default_model_dir() / "vae_decoder" / "model.onnx")
    z = np.random.default_rng(0).standard_normal((1, 4, 64, 64)).astype(np.float32)
    one, four, many = (decode_segmented(load, entries, z, t) for t in (64, 32, 8))
    np.testing.assert_allclose(four, one, atol=1e-5)
    np.testing.assert_allclose(many, one, atol=1e-5)
    assert psnr(to_uint8(whole(z))[0], to_uint8(many)[0]) >= INT8_PSNR_DB


def test_grid_covers_evenly():
    assert grid(64, 16) == [(0, 16), (16, 32), (32, 48), (48, 64)]
    assert grid(30, 16) == [(0, 15), (15, 30)]
    assert grid(10, 64) == [(0, 10)]


@pytest.fixture(scope="module")
def shipped_low(tmp_path_factory):
    out = tmp_path_factory.mktemp("lowmem") / "shipped-low"
    res = CliRunner().invoke(app, ["lowmem", str(default_model_dir()), str(out), "--no-fuse-attention", "--parts", "2"])
    assert res.exit_code == 0, res.output
    return out


def test_lowmem_lists_and_hashes_the_segments(shipped_low):
    m = json.loads((shipped_low / "shanshui_manifest.json").read_text())
    dec = m["components"]["vae_decoder"]
    assert dec["segments"] and all(e["file"].startswith("vae_decoder/segment-") for e in dec["segments"])
    for e in dec["segments"]:
        name = e["file"].split("/")[1]
        assert name in dec["files"] and len(dec["sha256"][name]) == 64
        assert (shipped_low / e["file"]).is_file()


def test_low_memory_decodes_the_segments_in_tiles(shipped_low):
    """--low-memory at 512 px on a segmented export: the image of the normal mode (≥ 38 dB; blended tiles on the
    same model measured 35.6 dB), with exact tiles of 16 latent pixels."""
    req = Request("一棵青松，青山环绕，云雾缭绕", steps=2, seed=5, height=512, width=512)
    normal = open_pipeline(shipped_low, threads=2)(req).images[0]
    pipe = open_pipeline(shipped_low, threads=2, memory=lowmem.BY_NAME["sequential+split+tiled-vae"])
    got = pipe(req).images[0]
    assert psnr(got, normal) >= INT8_PSNR_DB
    assert pipe.components.loads["vae_decoder"] == 1 and pipe.components.resident() == []


PEAK_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from pathlib import Path
    from shanshui.runtime import lowmem
    from shanshui.runtime.pipeline import open_pipeline

    def hwm():
        return int([l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]) / 1024

    strategy = lowmem.BY_NAME[sys.argv[2]]
    pipe = open_pipeline(Path(sys.argv[1]), threads=1, memory=strategy)
    z = np.random.default_rng(0).standard_normal((1, 4, 64, 64)).astype(np.float32)  # 512 px
    before = hwm()
    pipe.components.vae_decoder(z)
    print(json.dumps({"before": before, "peak": hwm()}))
""")


def test_segmented_decode_needs_less_memory(shipped_low):
    """Fresh processes, 512 px: the segmented decode's peak is under the whole decode's (VmHWM; measured 152 against
    240 MB, the whole int8 decoder prepacked). From 768 px up the whole-run head, the mid block's attention over
    every latent pixel, sets both peaks on this small decoder (768 px: 429 against 440 MB; 1024 px: 1.15 GB each),
    while its tiled segments hold about 100 MB."""
    peaks = {}
    for name in ("sequential+split", "sequential+split+tiled-vae"):
        out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(shipped_low), name], capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        peaks[name] = json.loads(out.stdout.strip().splitlines()[-1])["peak"]
    assert peaks["sequential+split+tiled-vae"] < 0.8 * peaks["sequential+split"], peaks
