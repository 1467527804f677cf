"""The VAE decoder of an export cut at its group norms, so it can be decoded in tiles exactly (runtime/vae_segments.py).

A group norm normalises with statistics of the whole image; a tile decoded on its own sees only its own, and the
blend of runtime/vae_tiling.py hides the difference rather than removing it (an int8 decoder amplifies it: SD 1.5
at 512 px in 2 × 2 blended tiles read 31.6 dB against the whole decode). Here every group norm whose input is
finer than the latent becomes `(x - mean) * invstd` with mean and invstd as graph inputs, and the decoder is cut
just before each of them. At run time each segment runs over all tiles in turn, the tensors it hands on are kept
tile by tile, and each group norm is fed the whole image's statistics, summed over the tiles' own regions. Each
tile is run with a border as wide as its segment's convolutions reach (`halo`), so the image is the whole decode's
up to float rounding, at any number of tiles. Segments at the latent's resolution (the mid block, its attention)
are marked to run whole. Graph-only: segment files share the decoder's weights file when it has one. Needs `onnx`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

from shanshui.errors import ShanshuiError
from shanshui.fsutil import link_tree, write_json_atomic
from shanshui.integrity import record_files
from shanshui.spec.manifest import MANIFEST, open_exported

PROBE = 16  # latent side the shapes are inferred at: scales are a tensor's side over this
# ops that mix far-apart pixels: a segment holding one runs whole, never in tiles
GLOBAL_OPS = frozenset({"MatMul", "Gemm", "Softmax", "InstanceNormalization", "LayerNormalization", "GroupNormalization",
                        "MultiHeadAttention", "Attention", "ReduceMean", "ReduceSum", "GlobalAveragePool",
                        "GlobalMaxPool", "Flatten", "Transpose", "MaxPool", "AveragePool", "ConvTranspose"})


def _inferred(model):
    """(ModelProto with shapes inferred at a PROBE × PROBE latent, {tensor: shape list or None per dim})."""
    import onnx

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for inp in probe.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if len(dims) == 4:
            for d, v in zip(dims, (1, None, PROBE, PROBE)):
                if v is not None:
                    d.Clear()
                    d.dim_value = v
    inferred = onnx.shape_inference.infer_shapes(probe, data_prop=True)
    shapes = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        t = v.type.tensor_type
        if t.HasField("shape"):
            shapes[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    return shapes, types


def _scale(shapes, name) -> int | None:
    """A 4-D tensor's side over the latent's (1 at the latent, 8 at the image), None when not spatial or unknown."""
    s = shapes.get(name)
    if not s or len(s) != 4 or not s[3]:
        return None
    return s[3] // PROBE if s[3] % PROBE == 0 else None


def _const_values(graph, name):
    """The value of a constant tensor (initializer or Constant node output) as a NumPy array, else None."""
    from onnx import numpy_helper

    for t in graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t) if t.data_location != 1 else None
    for n in graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            for a in n.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
    return None


def _rewrite_norms(model, shapes, types) -> list[dict]:
    """Group norms (torch's Reshape → InstanceNormalization(ones, zeros) → Reshape) over inputs finer than the latent
    become Sub(mean) → Mul(invstd) with both as new inputs. Returns one entry per rewritten norm, in graph order."""
    import numpy as np
    from onnx import helper

    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    norms, nodes = [], list(graph.node)
    for node in nodes:
        if node.op_type != "InstanceNormalization":
            continue
        reshape = producer.get(node.input[0])
        if reshape is None or reshape.op_type != "Reshape":
            continue
        x = reshape.input[0]
        scale = _scale(shapes, x)
        gamma, beta = _const_values(graph, node.input[1]), _const_values(graph, node.input[2])
        if scale is None or scale < 2 or gamma is None or beta is None:
            continue
        if not (np.all(gamma == 1) and np.all(beta == 0)):
            continue  # an affine inside the instance norm: not torch's group norm; left whole
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        k = len(norms)
        mean, invstd, centred = f"vae_norm{k}_mean", f"vae_norm{k}_invstd", f"vae_norm{k}_centred"
        at = list(graph.node).index(node)
        graph.node.remove(node)
        graph.node.insert(at, helper.make_node("Mul", [centred, invstd], [node.output[0]], name=f"vae_norm{k}/Mul"))
        graph.node.insert(at, helper.make_node("Sub", [node.input[0], mean], [centred], name=f"vae_norm{k}/Sub"))
        norms.append({"input": x, "mean": mean, "invstd": invstd, "groups": int(gamma.size), "eps": float(eps),
                      "anchor": reshape.name, "sub": f"vae_norm{k}/Sub", "dtype": types.get(node.input[0], 1)})
    return norms


def _assign(nodes, norms) -> list[int]:
    """Segment index per node: a new segment starts at each rewritten norm's first Reshape."""
    import bisect

    pos = {n.name: i for i, n in enumerate(nodes)}
    anchors = [pos[m["anchor"]] for m in norms]
    if anchors != sorted(anchors):
        raise ShanshuiError("cannot cut the VAE decoder: its group norms are not in graph order; re-export it")
    seg = [bisect.bisect_right(anchors, i) for i in range(len(nodes))]
    for k, m in enumerate(norms):
        if seg[pos[m["sub"]]] != k + 1:
            raise ShanshuiError("cannot cut the VAE decoder: a group norm's nodes are interleaved with another's")
    return seg


def _members(nodes, seg, count, spatial, outside) -> list[list[int]]:
    """Node indices per segment; a non-spatial tensor (a shape, a constant) read by a later segment is computed
    there again (its producers copied in), so segments hand each other only image-shaped tensors."""
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    members = [set() for _ in range(count)]
    for i, k in enumerate(seg):
        members[k].add(i)
    for k in range(count):
        stack = [t for i in members[k] for t in nodes[i].input]
        while stack:
            t = stack.pop()
            if not t or t in outside or t in spatial or t not in producer:
                continue
            j = producer[t]
            if j not in members[k]:
                members[k].add(j)
                stack.extend(nodes[j].input)
    changed = True
    while changed:  # drop producers of non-spatial tensors no longer read in their own segment (later ones copied them)
        changed = False
        for k in range(count):
            reads = {t for i in members[k] for t in nodes[i].input}
            for i in list(members[k]):
                if not any(o in spatial or o in reads for o in nodes[i].output):
                    members[k].discard(i)
                    changed = True
    return [sorted(m) for m in members]


def _halo(seg_nodes, shapes, in_scale: int, inits) -> tuple[int, bool]:
    """(border in input pixels that covers every convolution's reach in the segment, whether it may run in tiles)."""
    reach: dict[str, float] = {}
    tileable = True
    for n in seg_nodes:
        if n.op_type in GLOBAL_OPS:
            tileable = False
        r = max((reach.get(i, 0.0) for i in n.input if i), default=0.0)
        if n.op_type == "Conv":
            attrs = {a.name: a for a in n.attribute}
            w = shapes.get(n.input[1]) or list(next((t.dims for t in inits if t.name == n.input[1]), []))
            kernel = list(attrs["kernel_shape"].ints) if "kernel_shape" in attrs else list(w[2:])
            dil = list(attrs["dilations"].ints) if "dilations" in attrs else [1] * len(kernel)
            strides = list(attrs["strides"].ints) if "strides" in attrs else [1]
            out_scale = _scale(shapes, n.output[0])
            if not kernel or out_scale is None or any(s != 1 for s in strides):
                tileable = False
            else:
                r += max((k - 1) // 2 * d for k, d in zip(kernel, dil)) * in_scale / out_scale
        for o in n.output:
            reach[o] = r
    return int(math.ceil(max(reach.values(), default=0.0))), tileable


def _symbolic(shapes, name):
    """A tensor's shape for a segment's inputs and outputs: batch and sides symbolic (one name per scale),
    channels as inferred."""
    s = shapes.get(name)
    scale = _scale(shapes, name)
    if scale is not None:
        return ["B", s[1] or f"c_{name}", f"h{scale}", f"w{scale}"]
    if s and len(s) == 3 and name.startswith("vae_norm"):
        return ["B", s[1], 1]
    return None


def segment_decoder(model) -> tuple[list, list[dict]]:
    """(segment ModelProtos, their manifest entries without file names) of a VAE decoder graph (weights stay as they
    are: inline or pointing into the decoder's data file)."""
    from onnx import helper

    shapes, types = _inferred(model)
    graph = model.graph
    norms = _rewrite_norms(model, shapes, types)
    if not norms:
        raise ShanshuiError("cannot cut the VAE decoder: no group norm above the latent's resolution was found")
    nodes = list(graph.node)
    inits = {t.name: t for t in graph.initializer}
    types.update({n: t.data_type for n, t in inits.items()})
    for m in norms:
        for key in ("mean", "invstd"):
            types[m[key]] = m["dtype"]  # the normalised tensor's own type (float16 in an fp16 export)
            shapes[m[key]] = [1, m["groups"], 1]
    spatial = {t for t in shapes if _scale(shapes, t) is not None}
    graph_inputs = {i.name for i in graph.input}
    stat_inputs = {m[key] for m in norms for key in ("mean", "invstd")}
    outside = set(inits) | graph_inputs | stat_inputs
    count = len(norms) + 1
    members = _members(nodes, _assign(nodes, norms), count, spatial, outside)
    graph_outputs = [o.name for o in graph.output]
    reads = [{t for i in mem for t in nodes[i].input if t} for mem in members]
    protos, entries = [], []
    for k, mem in enumerate(members):
        seg_nodes = [nodes[i] for i in mem]
        made = {o for n in seg_nodes for o in n.output}
        later = set(graph_outputs).union(*reads[k + 1:])
        ins = sorted(t for t in reads[k] if t not in made and t not in inits)
        outs = sorted(t for t in made if t in later)
        bad = [t for t in ins if t not in spatial and t not in graph_inputs and t not in stat_inputs]
        if bad:
            raise ShanshuiError(f"cannot cut the VAE decoder: segment {k} needs {bad[0]}, which is not image-shaped")
        scales = {t: _scale(shapes, t) for t in ins if t in spatial or t in graph_inputs}
        in_scale = min((s for s in scales.values() if s), default=1)
        halo, tileable = _halo(seg_nodes, shapes, in_scale, graph.initializer)
        sub = helper.make_graph(seg_nodes, f"{graph.name}_segment{k}",
                                [helper.make_tensor_value_info(t, types[t], _symbolic(shapes, t)) for t in ins],
                                [helper.make_tensor_value_info(t, types[t], _symbolic(shapes, t)) for t in outs],
                                initializer=[inits[u] for u in sorted(reads[k]) if u in inits])
        # the graph's own shape annotations: without them ONNX Runtime reuses fewer buffers (the segment holding the
        # mid block's attention peaked at 2.2 GB at 1024 px, the same nodes with them at 1.3 GB)
        sub.value_info.extend(v for v in graph.value_info if v.name in made and v.name not in outs)
        protos.append(helper.make_model(sub, opset_imports=list(model.opset_import), ir_version=model.ir_version))
        entries.append({
            "inputs": ins, "outputs": outs, "scale": in_scale,
            "in_scales": {t: int(s or 1) for t, s in scales.items()},
            "out_scales": {t: _scale(shapes, t) for t in outs},
            "norms": [{key: m[key] for key in ("input", "mean", "invstd", "groups", "eps")} for m in norms
                      if m["sub"] in {n.name for n in seg_nodes}],
            "halo": halo, "tiled": bool(tileable and in_scale >= 2),
        })
        if any(v is None for v in entries[-1]["out_scales"].values()):
            raise ShanshuiError(f"cannot cut the VAE decoder: segment {k} hands on a tensor of unknown size")
    return protos, entries


def segment_export(src: Path, out: Path) -> dict:
    """A copy of the export `src` at `out` (files hard-linked) with its VAE decoder also cut at its group norms
    (vae_decoder/segment-K.onnx beside the whole graph, listed under components.vae_decoder.segments)."""
    import onnx

    exported = open_exported(Path(src))
    src, out = Path(src), Path(out)
    if out.exists():
        raise ShanshuiError(f"{out} already exists; choose a new folder")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    entry = exported.manifest["components"]["vae_decoder"]
    old = {Path(e["file"]).name for e in entry.get("segments") or ()}
    link_tree(src, tmp, skip=lambda p: p.name == MANIFEST or (p.parent.name == "vae_decoder" and p.name in old))
    model = onnx.load(str(exported.onnx_path("vae_decoder")), load_external_data=False)
    protos, entries = segment_decoder(model)
    for k, (proto, e) in enumerate(zip(protos, entries)):
        name = f"segment-{k}.onnx"
        (tmp / "vae_decoder" / name).unlink(missing_ok=True)  # never write through a hard link
        onnx.save_model(proto, str(tmp / "vae_decoder" / name))
        e["file"] = f"vae_decoder/{name}"
    m = json.loads(json.dumps(exported.manifest))
    dec = m["components"]["vae_decoder"]
    dec["segments"] = entries
    names = [Path(e["file"]).name for e in entries]
    sizes, hashes = record_files(tmp / "vae_decoder", names)
    dec["files"] = {**{k: v for k, v in dec["files"].items() if k not in old}, **sizes}
    dec["sha256"] = {**{k: v for k, v in (dec.get("sha256") or {}).items() if k not in old}, **hashes}
    write_json_atomic(tmp / MANIFEST, m)
    os.replace(tmp, out)
    return m
