"""The U-Net of an export cut into consecutive sub-graphs of about equal weight, for streaming: at run time each part
is loaded, run and freed in turn every step (runtime/lowmem.py, the `streamed` strategy), so at most one part's
weights are resident: OnnxStream's idea in ONNX Runtime terms, at the price of reading the weights every step.
The text encoder can be cut the same way (run once per image, part by part): SD 1.5's fp16 encoder loads with a
638 MB peak whole, 214 MB in 4 parts, the same output to the bit.

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


def _units(nodes, inits) -> list[list]:
    """The nodes as units that a cut never splits: each node with the constant-only nodes that feed it (weight
    DequantizeLinear, Constant) just before it. A quantized graph lists all weight DequantizeLinear nodes first;
    cut as listed, the first part would hand every weight to the next ones as a float tensor (an int8 U-Net's
    parts then ran float convolutions on float weights, 30 dB from the whole graph, and passed 4× the bytes)."""
    const_made, consts = set(inits), set()
    for n in nodes:
        if all(not i or i in const_made for i in n.input):
            consts.add(id(n))
            const_made.update(n.output)
    producer = {o: n for n in nodes if id(n) in consts for o in n.output}
    placed, units = set(), []

    def pull(node, unit):  # a constant producer and, first, its own constant producers
        for i in node.input:
            dep = producer.get(i)
            if dep is not None and id(dep) not in placed:
                placed.add(id(dep))
                pull(dep, unit)
                unit.append(dep)

    unit_of = {}  # tensor → the unit that makes it
    for n in nodes:
        if id(n) in consts:
            continue
        unit = []
        pull(n, unit)
        home = unit_of.get(n.input[0]) if n.op_type == "QuantizeLinear" else None
        if home is not None:  # op → QuantizeLinear is one integer kernel: never cut between them
            home.extend(unit + [n])
        else:
            home = unit + [n]
            units.append(home)
        unit_of.update({o: home for o in n.output})
    rest = [n for n in nodes if id(n) in consts and id(n) not in placed]  # constants only the graph's outputs read
    return [rest + units[0]] + units[1:] if units else [rest]


def _cuts(units, sizes: dict[str, int], parts: int, made: dict[str, int] | None = None) -> list[int]:
    """Unit indices where parts begin: cumulative weight bytes (plus, given `made`, the bytes of the tensors each
    unit makes) split into `parts` about equal shares."""
    made = made or {}
    per_unit = [sum(sizes.get(i, 0) for n in u for i in n.input) + sum(made.get(o, 0) for n in u for o in n.output)
                for u in units]
    total = sum(per_unit) or 1
    starts, acc = [0], 0
    for i, b in enumerate(per_unit):
        if acc >= total * len(starts) / parts and len(starts) < parts:
            starts.append(i)
        acc += b
    return starts


def activation_bytes(model, feed: dict) -> dict[str, int]:
    """{tensor: bytes} of the tensors the graph makes for one feed of these shapes (shape inference, nothing run);
    tensors whose size inference cannot tell are left out."""
    import numpy as np
    import onnx
    from onnx import helper

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.initializer[:]  # large weights as headers only; small ones (shapes for Reshape) whole
    whole = {t.name for t in model.graph.initializer if _init_bytes(t) <= SMALL_BYTES and not t.external_data}
    probe.graph.initializer.extend(t if t.name in whole else
                                   onnx.TensorProto(name=t.name, dims=t.dims, data_type=t.data_type)
                                   for t in model.graph.initializer)
    _fold_small_constants(probe.graph, whole)
    for node in probe.graph.node:  # ONNX Runtime's fused attention: its output has its query's shape (Q, K, V of
        if node.domain == "com.microsoft" and node.op_type == "MultiHeadAttention":  # one width, as in SD)
            node.CopyFrom(helper.make_node("Identity", node.input[:1], node.output[:1], name=node.name))
    for inp in probe.graph.input:
        if inp.name in feed:
            shape = inp.type.tensor_type.shape
            shape.Clear()
            for v in np.shape(feed[inp.name]):
                shape.dim.add().dim_value = int(v)
    inferred = onnx.shape_inference.infer_shapes(probe, data_prop=True)
    out = {}
    for v in inferred.graph.value_info:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in t.shape.dim]
        if dims and all(dims):
            out[v.name] = int(np.prod(dims)) * helper.tensor_dtype_to_np_dtype(t.elem_type).itemsize
    return out


SMALL_BYTES = 4096  # constants up to this size are read whole by activation_bytes (shapes, pads, axes)


def _fold_small_constants(graph, whole: set[str]) -> int:
    """Replace the nodes computed from small constants alone (a pad's amounts, a reshape's target) by their values,
    so shape inference can follow them: ONNX's data propagation stops at ops such as ConstantOfShape and Transpose,
    and SD's VAE encoder computes its downsamplers' pads that way (before this, shape inference lost every tensor
    after the first downsampler: 226 of its 492 tensors, the encoder's last part sized as 0.8 GB held 4 GB at
    512 px). `whole`: the initializers that hold their data. Returns the number of nodes folded."""
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.name in whole}
    folded = []
    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or not all(i in values for i in node.input if i):
            continue
        try:
            outs = ReferenceEvaluator(_one_node(node, values)).run(None, {})
        except Exception:  # noqa: BLE001 - an op the reference runtime lacks: left to shape inference as it is
            continue
        if any(getattr(v, "nbytes", SMALL_BYTES + 1) > SMALL_BYTES for v in outs):
            continue
        values.update(zip(node.output, outs))
        folded.append(node)
    for node in folded:
        graph.node.remove(node)
        graph.initializer.extend(numpy_helper.from_array(values[o], o) for o in node.output)
    return len(folded)


def _one_node(node, values: dict):
    """A model computing `node` from its constant inputs (as initializers)."""
    from onnx import helper, numpy_helper

    inits = [numpy_helper.from_array(values[i], i) for i in dict.fromkeys(i for i in node.input if i)]
    outs = [helper.make_empty_tensor_value_info(o) for o in node.output]
    return helper.make_model(helper.make_graph([node], "fold", [], outs, inits))


HANDED = "/float32"  # suffix of an fp16 tensor's float32 copy passed between parts


def split_graph(model, parts: int, made: dict[str, int] | None = None) -> list:
    """`parts` ModelProtos running the graph of `model` in order (their weights still external). made: bytes of
    the tensors the graph makes (activation_bytes), weighed beside the weights when choosing where to cut."""
    import onnx
    from onnx import helper

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    types.update({n: t.data_type for n, t in inits.items()})
    units = _units(list(graph.node), inits)
    bounds = _cuts(units, {n: _init_bytes(t) for n, t in inits.items()}, parts, made) + [len(units)]
    segs = [[n for u in units[a:b] for n in u] for a, b in zip(bounds, bounds[1:])]
    segs = _dequantize_where_read(segs, inits)
    graph_ins, graph_outs = {i.name for i in graph.input}, [o.name for o in graph.output]
    out = []
    for k, seg in enumerate(segs):
        made = {o for n in seg for o in n.output}
        used = {i for n in seg for i in n.input if i}
        later = set().union(*(_reads(s) for s in segs[k + 1:]))
        ins = sorted(u for u in used if u not in made and u not in inits)
        outs = sorted(m for m in made if m in later or m in graph_outs)
        missing = [t for t in ins + outs if t not in types]
        if missing:
            raise ShanshuiError(f"cannot cut the graph {graph.name!r}: no type known for {missing[0]}; re-export it")
        # fp16 tensors between parts pass as float32 (see _float32_handover)
        half = {t for t in ins + outs if types[t] == onnx.TensorProto.FLOAT16 and t not in graph_ins}
        handed = [t for t in outs if t in half and t in later]
        pre, post = _float32_handover([t for t in ins if t in half], handed)
        names = [n for t in outs for n in ([t] if t in graph_outs or t not in half else []) + ([t + HANDED] if t in handed else [])]
        fp32 = {t + HANDED for t in half}

        def value(t: str):
            return helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT if t in fp32 else types[t], None)
        sub = helper.make_graph(pre + seg + post, f"{graph.name}_part{k}",
                                [value(t + HANDED if t in half else t) for t in ins], [value(t) for t in names],
                                initializer=[inits[u] for u in sorted(used) if u in inits])
        out.append(helper.make_model(sub, opset_imports=list(model.opset_import), ir_version=model.ir_version))
    return out


def _float32_handover(ins: list[str], outs: list[str]) -> tuple[list, list]:
    """Casts that pass fp16 tensors between parts as float32. ONNX Runtime's CPU kernels compute an fp16 graph in
    float32 and drop the float32 → fp16 → float32 cast pairs between its ops, so inside the whole graph those tensors
    are never rounded to fp16; handed over as fp16 they were (SD 1.5's fp16 text encoder in 4 parts: 2e-3 from the
    whole graph's output; with these casts, identical)."""
    from onnx import TensorProto, helper

    pre = [helper.make_node("Cast", [t + HANDED], [t], to=TensorProto.FLOAT16, name=t + HANDED + "/in") for t in ins]
    post = [helper.make_node("Cast", [t], [t + HANDED], to=TensorProto.FLOAT, name=t + HANDED + "/out") for t in outs]
    return pre, post


def _dequantize_where_read(segs: list[list], inits) -> list[list]:
    """An activation's DequantizeLinear copied into each later part that reads its output, so parts hand each other
    the 8-bit tensor (4× fewer bytes) and every DequantizeLinear → op → QuantizeLinear stays in one part, where ONNX
    Runtime makes it one integer kernel; a copy no reader in its own part needs any more is dropped."""
    dq = {n.output[0]: n for seg in segs for n in seg
          if n.op_type == "DequantizeLinear" and n.input[0] not in inits}
    new = []
    for seg in segs:
        made = {o for n in seg for o in n.output}
        wanted = sorted({i for n in seg for i in n.input if i in dq and i not in made})
        new.append([dq[t] for t in wanted] + seg)
    for k, seg in enumerate(new):
        read = {i for n in seg for i in n.input}.union(*(_reads(s) for s in new[k + 1:]))
        new[k] = [n for n in seg if n.op_type != "DequantizeLinear" or n.output[0] not in dq or n.output[0] in read]
    return new


def _reads(seg) -> set[str]:
    """Tensors a part reads from outside itself."""
    made = {o for n in seg for o in n.output}
    return {i for n in seg for i in n.input if i and i not in made}


def split_export(src: Path, out: Path, parts: int = 4, text_parts: int | None = 0) -> dict:
    """A copy of the export `src` at `out` (files hard-linked) with its U-Net also cut into `parts` (unet/part-K.onnx
    beside the whole graph, listed in the manifest under components.unet.parts), and its text encoder into
    `text_parts` (0 or 1: whole; None: auto_text_parts). Returns the new manifest."""
    import onnx

    if not 2 <= parts <= 64:
        raise ShanshuiError(f"parts must be between 2 and 64, got {parts}")
    if text_parts is not None and not 0 <= text_parts <= 64:
        raise ShanshuiError(f"text encoder parts must be between 0 (whole) and 64, got {text_parts}")
    exported = open_exported(Path(src))
    src, out = Path(src), Path(out)
    if out.exists():
        raise ShanshuiError(f"{out} already exists; choose a new folder for the split export")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    old = {(c, Path(e["file"]).name) for c, entry in exported.manifest["components"].items()
           for e in entry.get("parts") or ()}
    # an earlier cut's parts are not carried over: new ones are written where they were, never through their links
    link_tree(src, tmp, skip=lambda p: p.name == MANIFEST or (p.parent.name, p.name) in old)
    m = json.loads(json.dumps(exported.manifest))
    for comp, entry in m["components"].items():  # drop the earlier cut's parts from every listing
        entry.pop("parts", None)
        entry["files"] = {k: v for k, v in entry["files"].items() if (comp, k) not in old}
        entry["sha256"] = {k: v for k, v in (entry.get("sha256") or {}).items() if (comp, k) not in old}
    _cut(onnx.load(str(exported.onnx_path("unet")), load_external_data=False), parts, tmp, m["components"]["unet"], "unet")
    if text_parts is None:
        text_parts = auto_text_parts(m)
    if text_parts >= 2:
        te = onnx.load(str(exported.onnx_path("text_encoder")), load_external_data=False)
        _cut(te, text_parts, tmp, m["components"]["text_encoder"], "text_encoder")
    write_json_atomic(tmp / MANIFEST, m)
    os.replace(tmp, out)
    return m


def _cut(model, parts: int, tmp: Path, entry: dict, comp: str) -> None:
    """Write `model` cut into `parts` as COMP/part-K.onnx in `tmp`, and list them (with sizes and hashes) in `entry`."""
    import onnx

    entries = []
    for k, sub in enumerate(split_graph(model, parts)):
        name = f"part-{k}.onnx"
        (tmp / comp / name).unlink(missing_ok=True)  # a hard link must not be written through
        onnx.save_model(sub, str(tmp / comp / name))
        entries.append({"file": f"{comp}/{name}", "inputs": [i.name for i in sub.graph.input],
                        "outputs": [o.name for o in sub.graph.output],
                        "weight_bytes": sum(_init_bytes(t) for t in sub.graph.initializer)})
    entry["parts"] = entries
    sizes, hashes = record_files(tmp / comp, [Path(e["file"]).name for e in entries])  # checked on load, as the rest
    entry["files"], entry["sha256"] = {**entry["files"], **sizes}, {**(entry.get("sha256") or {}), **hashes}


def auto_text_parts(manifest: dict) -> int:
    """As many text encoder parts as keep each about as heavy in memory as the heaviest U-Net part: weights as the
    CPU computes with them (an fp16 graph's as float32 copies, an int8 U-Net's with their prepacked copy); 1 = whole."""
    comps = manifest["components"]
    quant = manifest.get("quantization", {})

    def precision(comp: str) -> str:
        return quant.get(comp, {}).get("precision", manifest.get("precision"))
    unet = max(p["weight_bytes"] for p in comps["unet"]["parts"]) * (2 if precision("unet") == "int8" else 1)
    te = sum(v for k, v in comps["text_encoder"]["files"].items() if k.startswith("model.onnx"))
    te *= 2 if precision("text_encoder") == "fp16" else 1
    return max(1, round(te / max(unet, 1)))
