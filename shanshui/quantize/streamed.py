"""int8 of a large graph in bounded memory: calibrated and quantized part by part, then joined into one graph.

The fp32 graph is cut into consecutive parts of about equal weight (shanshui/export/split.py, graph-only: the
parts point into the graph's own weight file). Each part in turn is run over the calibration feeds, its layers'
isolated int8 error is measured (sensitivity.py, streaming) and it is quantized (static QDQ, MinMax) on its own
inputs; the tensors it hands to later parts are written to disk, feed by feed, and read back one feed at a time.
Only one part's weights and one feed's activations are resident at once, so an SD 1.5 U-Net (3.4 GB of fp32
weights) is calibrated in a fraction of its size. The parts see exactly the fp32 activations the whole graph would,
so the ranges, the per-layer measurements and the quantized layers are those of the whole-graph path.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from shanshui.errors import ShanshuiError
from shanshui.export.external import read_weights
from shanshui.export.split import _init_bytes, activation_bytes, split_graph

PART_BYTES = 256 * 2**20  # fp32 weight bytes per part: ~4 parts' worth of weights resident at the peak
LARGE_BYTES = 2**30  # graphs with more fp32 weight bytes than this are quantized part by part
# bytes of tensors one feed makes per part: the sensitivity pass holds a part's layer inputs of a feed at once and
# the calibrating session its live tensors (SD 1.5's VAE decoder makes 15.8 GB per 512 px feed; cut by weight into
# 4 parts, its quantization peaked at 8.8 GB)
ACT_PART_BYTES = 2**30
# what one byte of a part's tensors costs at the quantization's peak, against one byte of its fp32 weights (a part's
# weights are held several times over: the loaded graph, the sensitivity pass's copies, ONNX Runtime's sessions, the
# quantizer's model). Fitted on SD 1.5's U-Net at 512 px cut by weights + tensors alike: peak ≈ 0.6 GB + 5 × weights +
# 0.8 × tensors over its 13 parts; its parts of 664-681 MB of weights peaked at 3.8-4.1 GB, one of 750 MB of tensors
# and 26 MB of weights at 1.2 GB. So the cut weighs a tensor byte at a sixth of a weight byte.
ACT_WEIGHT = 1 / 6


def weight_bytes(path: Path) -> int:
    """Bytes of a graph's initializers, from its headers (nothing loaded)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return sum(_init_bytes(t) for t in model.graph.initializer)


def parts_for(path: Path, part_bytes: int = PART_BYTES) -> int:
    """How many parts bound the memory of quantizing the graph at `path` (1: quantize it whole)."""
    total = weight_bytes(path)
    return 1 if total <= LARGE_BYTES else min(64, -(-total // part_bytes))


class _Store:
    """Tensors made by earlier parts, one .npy file per (feed, tensor), read back on demand."""

    def __init__(self, root: Path):
        self.root, self.ids = root, {}
        root.mkdir(parents=True, exist_ok=True)

    def _file(self, i: int, name: str) -> Path:
        key = self.ids.setdefault(name, len(self.ids))  # tensor names hold '/' and ':'
        return self.root / f"{i:05d}-{key:05d}.npy"

    def put(self, i: int, values: dict) -> None:
        for name, v in values.items():
            np.save(self._file(i, name), np.asarray(v), allow_pickle=False)  # keeps rank 0 (ascontiguousarray would not)

    def get(self, i: int, name: str) -> np.ndarray:
        return np.load(self._file(i, name), allow_pickle=False)

    def drop(self, name: str, count: int) -> None:
        for i in range(count):
            self._file(i, name).unlink(missing_ok=True)


class PartFeeds:
    """The feeds of one part: the graph's own inputs from the calibration feeds, the rest from the store; each
    feed is built when it is asked for, so a loop over them holds one at a time."""

    def __init__(self, feeds, store: _Store, inputs: list[str]):
        self.feeds, self.store, self.inputs = feeds, store, inputs

    def __len__(self) -> int:
        return len(self.feeds)

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self.feeds):
            raise IndexError(i)
        own = self.feeds[i]
        return {n: own[n] if n in own else self.store.get(i, n) for n in self.inputs}


def parts_for_activations(model, feed, parts: int, part_bytes: int = ACT_PART_BYTES) -> tuple[int, dict]:
    """(parts, tensor bytes): at least `parts`, and enough that one part's tensors for `feed` stay near part_bytes."""
    made = activation_bytes(model, feed)
    return max(parts, min(64, -(-sum(made.values()) // part_bytes))), made


def quantize_in_parts(src: Path, dst: Path, feeds, parts: int, choose, quantize, on_part=lambda k, n: None) -> list:
    """int8 of the fp32 graph `src` into `dst` (one graph), part by part.

    choose(part_path, part_feeds, also, sink) -> (layer names to quantize, info): measures a part (and hands the
    tensors `also` to `sink` feed by feed); quantize(part_path, out_path, part_feeds, layers, shared): quantizes a
    part (`shared`: weights that other parts hold too). Returns each part's info."""
    import onnx

    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src), load_external_data=False)
    io = (list(model.graph.input), list(model.graph.output))
    parts, made = parts_for_activations(model, feeds[0], parts)  # a large activation volume gets more parts
    pieces = split_graph(model, parts, {n: b * ACT_WEIGHT for n, b in made.items()})  # graph only: weights stay in src
    del model
    seen: dict[str, int] = {}
    for piece in pieces:
        for t in piece.graph.initializer:
            seen[t.name] = seen.get(t.name, 0) + 1
    shared = frozenset(n for n, c in seen.items() if c > 1)
    work = Path(tempfile.mkdtemp(prefix=".int8-parts-", dir=dst.parent))
    try:
        store, infos, outs = _Store(work / "tensors"), [], []
        readers = _last_readers(pieces)
        for k, piece in enumerate(pieces):
            on_part(k, len(pieces))
            path = work / f"part-{k}.onnx"
            part = onnx.ModelProto()
            part.CopyFrom(piece)
            read_weights(part, src.parent)  # this part's weights, written whole: the quantizer loads it
            onnx.save_model(part, str(path))
            del part
            part_feeds = PartFeeds(feeds, store, [i.name for i in piece.graph.input])
            handed = [o.name for o in piece.graph.output if readers.get(o.name, -1) > k]
            layers, info = choose(path, part_feeds, tuple(handed), store.put)
            outs.append(work / f"part-{k}.int8.onnx")
            quantize(path, outs[-1], part_feeds, layers, shared)
            infos.append(info)
            for name in [n for n, last in readers.items() if last == k]:
                store.drop(name, len(feeds))
            path.unlink()
        _save_joined(_join(outs, pieces, io), dst)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return infos


def _last_readers(pieces) -> dict[str, int]:
    """{tensor handed between parts: index of the last part that reads it}."""
    last: dict[str, int] = {}
    for k, piece in enumerate(pieces):
        for i in piece.graph.input:
            last[i.name] = k
    return last


def _prefixed(qmodel, piece, prefix: str):
    """The quantized part with every tensor and node name it added prefixed, so parts joined do not collide (two
    parts that both quantize a tensor handed between them each add a Q/DQ pair of the same name)."""
    g = piece.graph
    own = ({i.name for i in g.input} | {o.name for o in g.output} | {t.name for t in g.initializer}
           | {o for n in g.node for o in n.output})
    rename = lambda name: name if (not name or name in own) else prefix + name  # noqa: E731
    q = qmodel.graph
    own_nodes = {n.name for n in g.node}
    for node in q.node:
        node.name = node.name if node.name in own_nodes else prefix + node.name
        node.input[:] = [rename(i) for i in node.input]
        node.output[:] = [rename(o) for o in node.output]
    for t in q.initializer:
        t.name = rename(t.name)
    for v in q.value_info:
        v.name = rename(v.name)
    return qmodel


def _join(paths: list[Path], pieces, io):
    """One ModelProto running the quantized parts (files, read one at a time and then deleted) in order, with the
    original graph's inputs and outputs; a weight held by two parts is kept once."""
    import hashlib

    import onnx
    from onnx import helper

    model = onnx.ModelProto()
    graph = model.graph
    graph.name = "unet_int8"
    graph.input.extend(io[0])
    graph.output.extend(io[1])
    opsets: dict[str, int] = {}
    digests: dict[str, str] = {}
    for k, path in enumerate(paths):
        part = _prefixed(onnx.load(str(path)), pieces[k], f"part{k}/")
        graph.node.extend(part.graph.node)
        for t in part.graph.initializer:
            digest = hashlib.sha256(t.SerializeToString()).hexdigest()
            if t.name in digests:
                if digests[t.name] != digest:
                    raise ShanshuiError(f"the int8 parts hold two different weights named {t.name}; quantize the graph whole")
                continue
            digests[t.name] = digest
            graph.initializer.append(t)
        for o in part.opset_import:
            opsets[o.domain] = max(opsets.get(o.domain, 0), o.version)
        model.ir_version = max(model.ir_version, part.ir_version)
        del part
        path.unlink()
    model.opset_import.extend(helper.make_opsetid(d, v) for d, v in sorted(opsets.items()))
    return model


def _save_joined(model, dst: Path) -> None:
    """Saved whole when protobuf can hold it, else with one external data file."""
    import onnx

    if model.ByteSize() < 2**31 - 2**26:
        onnx.save_model(model, str(dst))
    else:
        onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=dst.name + ".data")
