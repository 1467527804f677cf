"""PNG text metadata in the form image viewers, galleries and parsers already read: AUTOMATIC1111's `parameters`.

    <prompt>
    Negative prompt: <negative prompt>            (only when there is one)
    Steps: 25, Sampler: DPM++ 2M, CFG scale: 7.5, Seed: 0, Size: 256x256, Model: shanshui-default, ...

A value holding a comma, colon or newline is JSON-quoted, as the web UI itself does. Beside it, a `shanshui` chunk
holds the same request as JSON for programs. Neither holds a path of the user's machine: the model is named by its
folder's name, an init image by its file name. Torch-free (Pillow only).
"""

from __future__ import annotations

import json
from pathlib import Path
from shanshui import __version__, models

SAMPLER_NAMES = {"ddim": "DDIM", "euler": "Euler", "euler_a": "Euler a", "dpmpp_2m": "DPM++ 2M",  # the web UI's names
                 "dpmpp_2m_karras": "DPM++ 2M Karras", "euler_karras": "Euler Karras"}
MACHINE_KEY = "shanshui"


def model_label(root: Path | str | None) -> str:
    """A name for a model folder without the machine's path: the shipped model is `shanshui-<name>`."""
    if root is None:
        return "unknown"
    root = Path(root)

    package_models = Path(models.__file__).resolve().parent
    try:
        rel = root.resolve().relative_to(package_models)
        return "shanshui-" + (rel.parts[0] if rel.parts else "model")
    except ValueError:
        return root.name or "model"


def _quote(value) -> str:
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def a1111_parameters(params: dict) -> str:
    """The `parameters` text of one image from a request's params (see Pipeline's Result.params)."""
    prompt = str(params.get("prompt", "")).strip()
    lines = [prompt]
    negative = str(params.get("negative_prompt", "") or "").strip()
    if negative:
        lines.append(f"Negative prompt: {negative}")
    fields = {
        "Steps": params.get("steps"),
        "Sampler": SAMPLER_NAMES.get(params.get("sampler"), params.get("sampler")),
        "CFG scale": params.get("guidance"),
        "Seed": params.get("seed"),
        "Size": f"{params.get('width')}x{params.get('height')}",
        "Model": params.get("model"),
    }
    if params.get("init_image") is not None:
        fields["Denoising strength"] = params.get("strength")

    fields["Version"] = f"shanshui {__version__}"
    lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in fields.items() if v is not None))
    return "\n".join(lines)


def png_info(params: dict):
    """A PngInfo with the A1111 `parameters` chunk and our JSON chunk (both UTF-8 iTXt)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_itxt("parameters", a1111_parameters(params))
    info.add_itxt(MACHINE_KEY, json.dumps(params, ensure_ascii=False, sort_keys=True))
    return info
