"""Bad inputs on disk, made once per test session from the shipped model (hard links and small copies, no torch).

Each folder is one kind of damage a user (or an attacker, or a full disk) can hand a command. The catalogue and the
fuzz tests point the real CLI at them.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from shanshui.models import DEFAULT_DIFFUSERS, DEFAULT_ONNX

REPO = Path(__file__).resolve().parents[2]
MEMORY_LIMIT = 6 << 30  # address space of one CLI run: a blow-up fails fast instead of eating the shared machine


def _link_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, copy_function=os.link)


def _manifest(root: Path) -> dict:
    return json.loads((root / "shanshui_manifest.json").read_text(encoding="utf-8"))


def _export_with(root: Path, name: str, edit) -> Path:
    """A hard-linked copy of the shipped export whose manifest `edit(manifest)` changed."""
    out = root / name
    _link_tree(DEFAULT_ONNX, out)
    m = _manifest(DEFAULT_ONNX)
    edit(m)
    (out / "shanshui_manifest.json").unlink()  # a link: write a new file, never through to the shipped one
    (out / "shanshui_manifest.json").write_text(json.dumps(m), encoding="utf-8")
    return out


def _raw_manifest(root: Path, name: str, data: bytes) -> Path:
    out = root / name
    out.mkdir()
    (out / "shanshui_manifest.json").write_bytes(data)
    return out


def _damaged_unet(root: Path, name: str, damage) -> Path:
    out = root / name
    _link_tree(DEFAULT_ONNX, out)
    f = out / "unet" / "model.onnx"
    data = bytearray(f.read_bytes())
    f.unlink()
    f.write_bytes(damage(data))
    return out


def _overwrite_middle(data: bytearray) -> bytes:
    mid = len(data) // 2
    data[mid : mid + 4096] = bytes(4096)  # 4 KB of zeros: same size, different weights
    return bytes(data)


def _png_folder(root: Path, name: str, n: int, truncate: int | None = None) -> Path:
    from PIL import Image
    import numpy as np

    out = root / name
    out.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(out / f"{i:03d}.png")
        (out / f"{i:03d}.txt").write_text("青山 mountains", encoding="utf-8")
    if truncate is not None:
        p = out / f"{truncate:03d}.png"
        p.write_bytes(p.read_bytes()[:60])
    return out


def make_bad_inputs(root: Path) -> dict[str, Path]:
    """Build every bad input under `root`; returns the placeholders the cases use ({NAME} -> path)."""
    root.mkdir(parents=True, exist_ok=True)
    f = {"ONNX": DEFAULT_ONNX, "DIFF": DEFAULT_DIFFUSERS}
    (root / "afile").write_text("not a folder\n", encoding="utf-8")
    f["AFILE"] = root / "afile"
    (root / "empty").mkdir()
    f["EMPTY"] = root / "empty"
    (root / "folder.png").mkdir()
    f["DIRPNG"] = root / "folder.png"
    f["MISSING"] = root / "no-such-folder"
    f["NOTPNG"] = root / "notpng.png"
    f["NOTPNG"].write_text("hello", encoding="utf-8")
    f["TRUNCPNG"] = root / "trunc.png"
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 180, 150)).save(f["TRUNCPNG"])
    f["TRUNCPNG"].write_bytes(f["TRUNCPNG"].read_bytes()[:50])
    f["GOODPNG"] = root / "good.png"
    Image.new("RGB", (64, 64), (200, 180, 150)).save(f["GOODPNG"])

    for name, data in {
        "M_LIST": b"[1, 2, 3]", "M_VERSION_ONLY": b'{"format_version": 1}', "M_NOTJSON": b"{not json",
        "M_BYTES": bytes(range(256)), "M_V99": b'{"format_version": 99}', "M_EMPTY": b"",
        "M_COMPONENTS_STR": b'{"format_version": 1, "components": "x", "dims": {}, "shapes": {}}',
    }.items():
        f[name] = _raw_manifest(root, name.lower(), data)

    def set_unet_file(path):
        return lambda m: m["components"]["unet"].update(file=path)

    f["M_PASSWD"] = _export_with(root, "m_passwd", set_unet_file("/etc/passwd"))
    f["M_DOTDOT"] = _export_with(root, "m_dotdot", set_unet_file("../m_passwd/unet/model.onnx"))
    f["M_NAN"] = _export_with(root, "m_nan", lambda m: m.update(vae_scaling_factor=float("nan")))
    f["M_DIMS"] = _export_with(root, "m_dims", lambda m: m["dims"].pop("latent_channels"))
    f["M_SHAPES"] = _export_with(root, "m_shapes", lambda m: m["shapes"].update(max_size="big"))
    f["M_NOUNET"] = _export_with(root, "m_nounet", lambda m: m["components"].pop("unet"))
    f["CORRUPT_UNET"] = _damaged_unet(root, "corrupt_unet", _overwrite_middle)
    f["TRUNC_UNET"] = _damaged_unet(root, "trunc_unet", lambda d: bytes(d[: len(d) // 2]))
    f["MISSING_UNET"] = root / "missing_unet"
    _link_tree(DEFAULT_ONNX, f["MISSING_UNET"])
    (f["MISSING_UNET"] / "unet" / "model.onnx").unlink()

    f["TRUNC_ST"] = root / "trunc_st"  # a diffusers folder whose U-Net weights were cut short
    _link_tree(DEFAULT_DIFFUSERS, f["TRUNC_ST"])
    st = f["TRUNC_ST"] / "unet" / "diffusion_pytorch_model.safetensors"
    data = st.read_bytes()
    st.unlink()
    st.write_bytes(data[: len(data) // 2])
    f["PICKLE"] = root / "pickle_model"  # .bin (pickle) weights only
    _link_tree(DEFAULT_DIFFUSERS, f["PICKLE"])
    (f["PICKLE"] / "unet" / "diffusion_pytorch_model.safetensors").rename(f["PICKLE"] / "unet" / "diffusion_pytorch_model.bin")

    f["DATA"] = _png_folder(root, "data", 40)
    f["DATA_TRUNC"] = _png_folder(root, "data_trunc", 40, truncate=37)
    f["NONEMPTY"] = f["DATA"]
    return f


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    timed_out: bool = False


def _limits() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    os.setpgrp()


def cli_env(home: Path, extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHANSHUI_")}
    env.update(PYTHONPATH=str(REPO), HOME=str(home), PYTHONUNBUFFERED="1", NO_COLOR="1", COLUMNS="200",
               MPLCONFIGDIR=str(home / "mpl"), OMP_NUM_THREADS="1")
    env.update(extra or {})
    return env


def run_cli(args: list[str], cwd: Path, home: Path, env: dict | None = None, timeout: float = 120) -> Outcome:
    """`python -m shanshui.cli ARGS` in a subprocess with a memory ceiling and a time limit."""
    proc = subprocess.Popen([sys.executable, "-m", "shanshui.cli", *args], cwd=cwd, env=cli_env(home, env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_limits)
    try:
        out, err = proc.communicate(timeout=timeout)
        return Outcome(proc.returncode, out, err)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return Outcome(-9, out, err, timed_out=True)


def snapshot(*roots: Path) -> set[str]:
    """Every path (files and folders, hidden ones too) under `roots`."""
    seen = set()
    for r in roots:
        for dirpath, dirnames, filenames in os.walk(r):
            seen.update(os.path.join(dirpath, n) for n in dirnames + filenames)
    return seen
