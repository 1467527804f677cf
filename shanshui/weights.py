"""Loading and saving component weights so that every supported transformers/diffusers version reads them alike.

Text encoder key names: transformers 4.x names a CLIPTextModel's weights `text_model.embeddings…`; transformers 5
drops the `text_model.` prefix when it saves, and still reads the prefixed names. A 5-style file loaded by 4.x gets
every text-encoder weight "newly initialized" (random) with only a log warning. So shanshui writes the prefixed
layout, which both read identically, and loads every component strictly: a missing, unexpected or mis-shaped
tensor is an error, never a silently random component.
"""

from __future__ import annotations

from pathlib import Path

from shanshui.errors import ShanshuiError

TEXT_PREFIX = "text_model."
WEIGHTS_NAME = "model.safetensors"  # transformers' file name


def portable_key(key: str) -> str:
    """A CLIPTextModel key in the layout transformers 4.x and 5.x both load (`text_model.` prefixed)."""
    return key if key.startswith(TEXT_PREFIX) else TEXT_PREFIX + key


def keys_for(module, state: dict) -> dict:
    """`state` with its text-encoder keys in the layout `module.state_dict()` uses (prefixed or not)."""
    own = set(module.state_dict())
    if any(k.startswith(TEXT_PREFIX) for k in own):
        return {portable_key(k): v for k, v in state.items()}
    return {k.removeprefix(TEXT_PREFIX): v for k, v in state.items()}


def save_text_encoder(model, folder: Path) -> None:
    """config.json + model.safetensors of a CLIPTextModel, keys in the portable layout (whatever transformers runs)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    prefixed = type(model).__name__ == "CLIPTextModel"
    tensors = {(portable_key(k) if prefixed else k): v.detach().to("cpu").contiguous().clone()
               for k, v in model.state_dict().items()}
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})


def _example(keys) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def load_strict(cls, folder: Path, what: str, **kwargs):
    """`cls.from_pretrained(folder, **kwargs)` (transformers or diffusers), refusing any missing/unexpected weight."""
    folder = Path(folder)
    try:
        model, info = cls.from_pretrained(folder, output_loading_info=True, **kwargs)
    except (OSError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ShanshuiError(f"cannot load the {what} from {folder.parent.name}/{folder.name}: {first}") from None
    problems = []
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        keys = [k if isinstance(k, str) else str(k[0]) for k in (info.get(kind) or ())]
        if keys:
            problems.append(f"{len(keys)} {kind.replace('_keys', '')} ({_example(keys)})")
    if problems:
        raise ShanshuiError(
            f"the {what} weights in {folder.parent.name}/{folder.name} do not fit {cls.__name__}: {'; '.join(problems)}. "
            "Loading them would leave those weights random; re-save the model with this shanshui (its files load under "
            "transformers 4.x and 5.x alike) or use the transformers/diffusers versions that wrote it")
    return model
