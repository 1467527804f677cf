"""The U-Net of an export cut into consecutive sub-graphs of about equal weight, for streaming: at run time each part
is loaded, run and freed in turn every step (runtime/lowmem.py, the `streamed` strategy), so at most one part's
weights are resident: OnnxStream's idea in ONNX Runtime terms, at the price of reading the weights every step.

Graph-only: the parts point into the U-Net's existing external data file (hard-linked), nothing is loaded, so an
SD 1.5 U-Net is cut in seconds. A tensor made in one part and read in a later one is an output of the first and an
input of the later (the skip connections of the U-Net are such tensors). Needs the `onnx` package.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from shanshui.errors import ShanshuiError
from shanshui.spec.manifest import MANIFEST, open_exported
from shanshui.fsutil import link_tree, write_json_atomic
from shanshui.integrity import record_files


def _init_bytes(init) -> int:
    length = next((int(e.value) for e in init.external_data if e.key == "length"), None)
    return length if length is not None else len(init.raw_data) or init.ByteSize()


def _cuts(nodes, sizes: dict[str, int], parts: int) -> list[int]:
    """Node indices where parts begin: cumulative weight bytes split into `parts` about equal shares."""
    per_node = [sum(sizes.get(i, 0) for i in n.input) for n in nodes]
    total = sum(per_node) or 1
    starts, acc = [0], 0
    for i, b in enumerate(per_node):
        if acc >= total * len(starts) / parts and len(starts) < parts:
            starts.append(i)
        acc += b
    return starts


def split_graph(model, parts: int) -> list:
    """`parts` ModelProtos running the graph of `model` in order (their weights still external)."""
    import onnx
    from onnx import helper

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    types.update({n: t.data_type for n, t in inits.items()})
    nodes = list(graph.node)
    starts = _cuts(nodes, {n: _init_bytes(t) for n, t in inits.items()}, parts) + [len(nodes)]
    graph_outputs = [o.name for o in graph.output]
    out = []
    for k in range(len(starts) - 1):
        seg = nodes[starts[k]:starts[k + 1]]
        made = {o for n in seg for o in n.output}
        used = {i for n in seg for i in n.input if i}
        later = {i for n in nodes[starts[k + 1]:] for i in n.input} | set(graph_outputs)
        ins = sorted(u for u in used if u not in made and u not in inits)
        outs = sorted(m for m in made if m in later)
        missing = [t for t in ins + outs if t not in types]
        if missing:
            raise ShanshuiError(f"cannot cut the U-Net: no type known for {missing[0]}; re-export it")
        sub = helper.make_graph(seg, f"{graph.name}_part{k}",
                                [helper.make_tensor_value_info(t, types[t], None) for t in ins],
                                [helper.make_tensor_value_info(t, types[t], None) for t in outs],
                                initializer=[inits[u] for u in sorted(used) if u in inits])
        out.append(helper.make_model(sub, opset_imports=list(model.opset_import), ir_version=model.ir_version))
    return out


def split_export(src: Path, out: Path, parts: int = 4) -> dict:
    """A copy of the export `src` at `out` (files hard-linked) with its U-Net also cut into `parts` (unet/part-K.onnx
    beside the whole graph, listed in the manifest under components.unet.parts). Returns the new manifest."""
    import onnx

    if not 2 <= parts <= 64:
        raise ShanshuiError(f"parts must be between 2 and 64, got {parts}")
    exported = open_exported(Path(src))
    src, out = Path(src), Path(out)
    if out.exists():
        raise ShanshuiError(f"{out} already exists; choose a new folder for the split export")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    link_tree(src, tmp, skip=lambda p: p.name == MANIFEST)
    unet = onnx.load(str(exported.onnx_path("unet")), load_external_data=False)  # inline weights come along
    entries = []
    for k, sub in enumerate(split_graph(unet, parts)):
        name = f"part-{k}.onnx"
        onnx.save_model(sub, str(tmp / "unet" / name))
        entries.append({"file": f"unet/{name}", "inputs": [i.name for i in sub.graph.input],
                        "outputs": [o.name for o in sub.graph.output],
                        "weight_bytes": sum(_init_bytes(t) for t in sub.graph.initializer)})
    m = json.loads(json.dumps(exported.manifest))
    unet = m["components"]["unet"]
    unet["parts"] = entries
    sizes, hashes = record_files(tmp / "unet", [Path(e["file"]).name for e in entries])  # checked on load, as the rest
    unet["files"], unet["sha256"] = {**unet["files"], **sizes}, {**(unet.get("sha256") or {}), **hashes}
    write_json_atomic(tmp / MANIFEST, m)
    os.replace(tmp, out)
    return m
