"""Training checkpoints in safetensors + JSON only (never pickles), written atomically, resumable.

    CKPT/step-000500/
        state.json              step, config, optimizer param_groups, rng state
        <model>.safetensors     each trained module
        ema.safetensors         EMA weights (when used)
        optimizer.safetensors   AdamW moments, flattened as "<param index>.<key>"
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from shanshui.errors import ShanshuiError
from shanshui.fsutil import atomic_dir
from shanshui.integrity import remove_stale_temps

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")


def save_checkpoint(root: Path, step: int, modules: dict, optimizer, ema=None, extra: dict | None = None, keep: int = 2) -> Path:
    """Write root/step-NNNNNN atomically and keep only the newest `keep` checkpoints."""
    import torch
    from safetensors.torch import save_file

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(root, ["step-"])  # .step-* folders of a killed run
    final = root / f"step-{step:06d}"
    with atomic_dir(final) as tmp:
        for name, module in modules.items():
            save_file({k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}, str(tmp / f"{name}.safetensors"))
        if ema is not None:
            save_file({k: v.contiguous().cpu() for k, v in ema.state_dict().items()}, str(tmp / "ema.safetensors"))
        opt = optimizer.state_dict()
        flat = {}
        for idx, st in opt["state"].items():
            for key, val in st.items():
                flat[f"{idx}.{key}"] = (val if torch.is_tensor(val) else torch.tensor(val)).detach().contiguous().cpu()
        save_file(flat, str(tmp / "optimizer.safetensors"))
        state = {"step": step, "param_groups": opt["param_groups"], "torch_rng": torch.get_rng_state().tolist(), **(extra or {})}
        (tmp / "state.json").write_text(json.dumps(state), encoding="utf-8")
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    found = sorted(p for p in Path(root).glob("step-*") if p.is_dir()) if Path(root).is_dir() else []
    return found[-1] if found else None


def _load_tensors(path: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ShanshuiError(f"checkpoint file {path} is corrupt ({str(e).splitlines()[0]}); resume from an older one or start over") from None


def load_checkpoint(path: Path, modules: dict, optimizer, ema=None) -> dict:
    """Restore modules, optimizer and EMA from a checkpoint folder; returns state.json's contents."""
    import torch

    path = Path(path)
    if path.suffix in PICKLE_SUFFIXES or path.is_dir() and any(p.suffix in PICKLE_SUFFIXES for p in path.iterdir()):
        raise ShanshuiError(f"{path} holds pickle files; shanshui loads only safetensors checkpoints it wrote itself")
    state_file = path / "state.json"
    if not state_file.is_file():
        raise ShanshuiError(f"{path} is not a shanshui checkpoint (no state.json)")
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
        step = int(state["step"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError):
        raise ShanshuiError(f"{state_file} is corrupt; resume from an older checkpoint or start over") from None
    for name, module in modules.items():
        tensors = _load_tensors(path / f"{name}.safetensors")
        missing, unexpected = module.load_state_dict(tensors, strict=False)
        if missing or unexpected:
            raise ShanshuiError(f"checkpoint {path} does not fit this model ({len(missing)} missing, {len(unexpected)} unexpected tensors in {name})")
    if ema is not None and (path / "ema.safetensors").is_file():
        ema.load_state_dict(_load_tensors(path / "ema.safetensors"))
    flat = _load_tensors(path / "optimizer.safetensors")
    opt_state: dict = {}
    for key, val in flat.items():
        idx, name = key.split(".", 1)
        opt_state.setdefault(int(idx), {})[name] = val
    optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
    torch.set_rng_state(torch.tensor(state["torch_rng"], dtype=torch.uint8))
    state["step"] = step
    return state
