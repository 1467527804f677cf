"""fp16 ONNX: weights and most arithmetic in half precision, float32 inputs/outputs, sensitive ops kept in fp32.

Normalisations (mean/variance reductions), softmax and the exp/pow/sqrt they are built from overflow or lose
precision in fp16, so they stay fp32 with casts around them. A component whose fp16 outputs are not finite on the
contract's sample inputs (the VAE decoder is the usual suspect) falls back to fp32, and the manifest says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shanshui.errors import ShanshuiError
from shanshui.export.external import read_weights
from shanshui.export.graph_check import topological_sort
from shanshui.onnxrt import ort_session

# Ops computed in fp32 inside the fp16 graph: normalisations, softmax, and the pieces of decomposed norms.
FP16_BLOCK_OPS = (
    "LayerNormalization", "InstanceNormalization", "GroupNormalization", "Softmax",
    "ReduceMean", "ReduceSum", "Pow", "Sqrt", "Reciprocal", "Exp", "Erf", "CumSum", "ArgMax", "Range",
)


PROTOBUF_LIMIT = 2**31 - 2**26  # protobuf's 2 GB limit, with room for the graph


def tensor_bytes(model) -> int:
    """Bytes of the model's initializers and constant tensors (ByteSize() itself fails past protobuf's 2 GB)."""
    from onnx import numpy_helper

    def size(t) -> int:
        return len(t.raw_data) if t.raw_data else numpy_helper.to_array(t).nbytes

    consts = [a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"]
    return sum(size(t) for t in list(model.graph.initializer) + consts)


def save_onnx(model, path: Path) -> list[str]:
    """Save a ModelProto as path (+ path.data when over 2 GB); returns the file names written."""
    import onnx

    path = Path(path)
    if tensor_bytes(model) < PROTOBUF_LIMIT:
        onnx.save(model, str(path))
        return [path.name]
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=path.name + ".data")
    return [path.name, path.name + ".data"]


def convert_fp16(src: Path, dst: Path, block_ops: tuple[str, ...] = FP16_BLOCK_OPS) -> list[str]:
    """Convert one ONNX file to fp16 (float32 I/O) at dst; returns the file names written."""
    try:
        import onnx
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    except ImportError as e:
        raise ShanshuiError(f"fp16 conversion needs the torch extra ({e.name} is missing): pip install 'shanshui[torch]'") from None
    # The converter needs every value's type to place casts; it infers them itself only for models protobuf can
    # serialise, so infer them here on the graph alone (weights still on disk), then load the weights.
    model = onnx.shape_inference.infer_shapes(onnx.load(str(src), load_external_data=False))
    read_weights(model, Path(src).parent)
    fp16 = convert_float_to_float16(model, keep_io_types=True, op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(block_ops),
                                    disable_shape_infer=True)

    topological_sort(fp16.graph)  # the converter appends its input casts last; other consumers need producers first
    return save_onnx(fp16, dst)


def outputs_finite(path: Path, feeds: dict[str, np.ndarray]) -> bool:
    """Whether every output of the model at `path` is finite on `feeds`."""
    sess = ort_session(path)
    return all(np.isfinite(o).all() for o in sess.run(None, feeds))
