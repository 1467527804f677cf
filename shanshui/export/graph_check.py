"""Graph hygiene every written ONNX file must pass: nodes in topological order, and `onnx.checker` (full check).

ONNX Runtime sorts a graph itself when it loads one, so an out-of-order graph runs there and fails elsewhere
(`onnx.checker`, ONNX's reference runtime, converters). onnxruntime's fp16 converter appends its input casts at the
end of the node list; `topological_sort` puts every node after its producers, keeping the original order otherwise.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from pathlib import Path

from shanshui.errors import ShanshuiError


def topological_sort(graph) -> bool:
    """Reorder `graph.node` in place (stable Kahn's algorithm); returns whether the order changed.

    A name no node produces (graph inputs, initializers, optional empty inputs, outer-scope values) counts as ready.
    """
    nodes = list(graph.node)
    producer = {out: i for i, n in enumerate(nodes) for out in n.output if out}
    waiting_on = [0] * len(nodes)
    consumers = defaultdict(list)
    for i, n in enumerate(nodes):
        deps = {producer[name] for name in n.input if name in producer and producer[name] != i}
        waiting_on[i] = len(deps)
        for d in deps:
            consumers[d].append(i)
    ready = [i for i, w in enumerate(waiting_on) if w == 0]
    heapq.heapify(ready)  # the smallest original index first: stable
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for c in consumers[i]:
            waiting_on[c] -= 1
            if waiting_on[c] == 0:
                heapq.heappush(ready, c)
    if len(order) != len(nodes):
        raise ShanshuiError("the ONNX graph has a cycle; it cannot be sorted (re-export the model)")
    if order == list(range(len(nodes))):
        return False
    del graph.node[:]
    graph.node.extend(nodes[i] for i in order)
    return True


def check_onnx(path: Path) -> None:
    """`onnx.checker.check_model(full_check=True)` on a written file (by path, so > 2 GB models work too)."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ShanshuiError(f"{Path(path).parent.name}/{Path(path).name} fails onnx.checker ({first}); "
                            "this is a shanshui bug, please report it") from None

