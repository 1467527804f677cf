"""Memory-efficient attention for an exported U-Net: each decomposed scaled-dot-product attention (as torch.onnx
writes it: MatMul → Softmax → MatMul over (B, heads, S, L) scores) becomes one com.microsoft MultiHeadAttention,
which ONNX Runtime's CPU kernel computes in blocks (flash attention) without the (heads, S, L) score tensor.

SD 1.5 at 512 px: the first self-attention's scores and softmax are 2 × 8 × 4096² floats = 1 GiB per image; one
such block on its own measured 621 MB → 114 MB peak and 2.5× faster fused. The pattern matched:

    q3 (B,S,HD) → Reshape (B,S,H,D) → Transpose(0,2,1,3) → Mul(c) ─┐
    k3 (B,L,HD) → Reshape (B,L,H,D) → Transpose(0,2,3,1) → Mul(c) ─┴ MatMul → Softmax → MatMul ─ Transpose(0,2,1,3)
    v3 (B,L,HD) → Reshape (B,L,H,D) → Transpose(0,2,1,3) ───────────────────────────────┘      → Reshape (B,S,HD)

with c·c = 1/√D (the kernel's default scale). Anything else is left as it is. Needs the `onnx` package.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from shanshui.errors import ShanshuiError
from shanshui.spec.manifest import MANIFEST, open_exported
from shanshui.fsutil import link_tree, write_json_atomic
from shanshui.integrity import record_files


def _const(graph, name: str, producers: dict):
    from onnx import numpy_helper

    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    node = producers.get(name)
    if node is not None and node.op_type == "Constant":
        return numpy_helper.to_array(node.attribute[0].t)
    return None


def _perm(node) -> list[int] | None:
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), None)


def _heads(graph, reshape, producers: dict) -> int | None:
    """H of a Reshape to (B, S, H, D): from its shape input, an initializer or a Concat of pieces."""
    shape = _const(graph, reshape.input[1], producers)
    if shape is not None and shape.size == 4:
        return int(shape[2])
    concat = producers.get(reshape.input[1])
    if concat is None or concat.op_type != "Concat" or len(concat.input) != 4:
        return None
    piece = _const(graph, concat.input[2], producers)
    return int(np.asarray(piece).reshape(-1)[0]) if piece is not None and np.asarray(piece).size == 1 else None


def _head_input(node_name: str, perm: list[int], producers: dict, graph):
    """(3-D input, heads) behind Mul? ← Transpose(perm) ← Reshape, or None."""
    node = producers.get(node_name)
    if node is not None and node.op_type == "Mul":
        node = next((producers[i] for i in node.input if i in producers and producers[i].op_type == "Transpose"), None)
    if node is None or node.op_type != "Transpose" or _perm(node) != perm:
        return None
    reshape = producers.get(node.input[0])
    if reshape is None or reshape.op_type != "Reshape":
        return None
    heads = _heads(graph, reshape, producers)
    return (reshape.input[0], heads) if heads else None


def fuse_attention(model) -> int:
    """Rewrite `model` (an onnx.ModelProto) in place; returns how many attentions were fused."""
    from onnx import helper

    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    fused, drop = 0, set()
    for soft in [n for n in graph.node if n.op_type == "Softmax"]:
        scores = producers.get(soft.input[0])
        after = consumers.get(soft.output[0], [])
        if scores is None or scores.op_type != "MatMul" or len(after) != 1 or after[0].op_type != "MatMul":
            continue
        out_mm = after[0]
        q = _head_input(scores.input[0], [0, 2, 1, 3], producers, graph)
        k = _head_input(scores.input[1], [0, 2, 3, 1], producers, graph)
        v = _head_input(out_mm.input[1], [0, 2, 1, 3], producers, graph)
        tail = consumers.get(out_mm.output[0], [])
        if not (q and k and v) or q[1] != k[1] or len(tail) != 1 or tail[0].op_type != "Transpose" \
                or _perm(tail[0]) != [0, 2, 1, 3]:
            continue
        reshape_out = consumers.get(tail[0].output[0], [])
        if len(reshape_out) != 1 or reshape_out[0].op_type != "Reshape":
            continue
        mha = helper.make_node("MultiHeadAttention", [q[0], k[0], v[0]], [reshape_out[0].output[0]],
                               name=soft.name.replace("Softmax", "MultiHeadAttention"), domain="com.microsoft",
                               num_heads=int(q[1]))
        graph.node.insert(list(graph.node).index(reshape_out[0]), mha)
        drop.update(id(n) for n in (scores, soft, out_mm, tail[0], reshape_out[0]))
        fused += 1
    keep = [n for n in graph.node if id(n) not in drop]
    del graph.node[:]
    graph.node.extend(_without_dead(keep, {o.name for o in graph.output}))
    if fused and not any(op.domain == "com.microsoft" for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return fused


def _without_dead(nodes: list, outputs: set[str]) -> list:
    """Nodes whose outputs nothing reads any more (the Reshape/Transpose/Mul feeding removed MatMuls) dropped."""
    while True:
        used = {i for n in nodes for i in n.input} | outputs
        alive = [n for n in nodes if any(o in used for o in n.output)]
        if len(alive) == len(nodes):
            return nodes
        nodes = alive


def fuse_file(src: Path, dst: Path) -> int:
    """Fuse the attention of the ONNX file `src` into `dst`; returns the count. Weights stored outside the graph are
    not loaded: `dst` points at the same data file, hard-linked (else copied) beside it, so an SD 1.5 U-Net is
    rewritten in seconds and a few MB of memory. Weights of removed nodes stay in the file, unused."""
    import os
    import shutil

    import onnx

    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src), load_external_data=False)
    count = fuse_attention(model)
    dst.parent.mkdir(parents=True, exist_ok=True)
    locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    for loc in locations:
        target = dst.parent / loc
        if target.resolve() == (src.parent / loc).resolve():
            continue
        target.unlink(missing_ok=True)
        try:
            os.link(src.parent / loc, target)
        except OSError:
            shutil.copyfile(src.parent / loc, target)
    onnx.save_model(model, str(dst))
    return count


def fuse_export(src: Path, out: Path, check_size: int | None = 32) -> dict:
    """A copy of the export `src` at `out` (files hard-linked where possible) whose U-Net has fused attention,
    checked against the original on one random input (latent `check_size`², guidance batch; None skips it, e.g.
    where two U-Nets do not fit in memory at once): the largest absolute difference is recorded in the manifest
    beside the count. Returns the new manifest."""
    import json
    import os
    import shutil

    exported = open_exported(Path(src))
    src, out = Path(src), Path(out)
    if out.exists():
        raise ShanshuiError(f"{out} already exists; choose a new folder for the fused export")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    link_tree(src, tmp, skip=lambda p: p.name == MANIFEST or p.is_relative_to(src / "unet"))
    unet_src = exported.onnx_path("unet")
    count = fuse_file(unet_src, tmp / "unet" / unet_src.name)
    shutil.copyfile(src / "unet" / "config.json", tmp / "unet" / "config.json")
    diff = _check(unet_src, tmp / "unet" / unet_src.name, exported.manifest, check_size) if check_size else None
    m = json.loads(json.dumps(exported.manifest))
    entry = m["components"]["unet"]
    entry["files"], entry["sha256"] = record_files(tmp / "unet", sorted(p.name for p in (tmp / "unet").glob("model.onnx*")))
    entry["attention"] = {"fused": count, "op": "com.microsoft.MultiHeadAttention", "check_max_abs_diff": diff}
    write_json_atomic(tmp / MANIFEST, m)
    os.replace(tmp, out)
    return m


def _check(ref: Path, got: Path, manifest: dict, size: int) -> float:
    """Largest |fused - original| of the U-Net output on one seeded random input."""
    import onnxruntime as ort

    dims = manifest["dims"]
    rng = np.random.default_rng(0)
    feed = {"sample": rng.standard_normal((2, dims["latent_channels"], size, size)).astype(np.float32),
            "timestep": np.array([500.0, 500.0], np.float32),
            "encoder_hidden_states": rng.standard_normal((2, dims["text_len"], dims["text_dim"])).astype(np.float32)}
    outs = []
    for path in (ref, got):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        outs.append(sess.run(None, feed)[0])
        del sess
    return float(np.abs(outs[0] - outs[1]).max())
