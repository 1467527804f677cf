"""ONNX Runtime and heap settings of the low-memory modes (lowmem.py): lean session options, the one CPU arena a
budget's streamed parts share, and glibc's mmap threshold and heap trim. Each measured, numbers beside it."""

from __future__ import annotations

import ctypes
import gc

from shanshui.runtime.backends import SPINNING


def lean_options(opts, prepack: bool = False) -> None:
    """ONNX Runtime settings that trade a little speed for memory (each measured in docs/bench, see README).
    prepack: keep ONNX Runtime's re-laid-out copy of the weights (int8 kernels without it measured 2-3× slower)."""
    opts.enable_cpu_mem_arena = False  # activations go back to the system after each call, not to a growing pool
    opts.enable_mem_pattern = False  # no pre-planned block sized for the largest shapes seen
    if not prepack:
        opts.add_session_config_entry("session.disable_prepacking", "1")  # no second, re-laid-out weight copy
    opts.add_session_config_entry("session.use_device_allocator_for_initializers", "1")  # weights freed with the session


def session_options(comp: str, threads: int | None, lean: bool, basic: bool = False, prepack: bool = False):
    """basic: only ORT's basic graph rewrites, for a graph loaded once per step (a streamed part). The layout
    rewrites of the full level re-lay the convolution weights out at every load: an SD 1.5 fp32 U-Net in 6 parts at
    128 px measured 33.6 s and 1381 MB per call with them, 6.7 s and 670 MB without. Not for int8 parts: ONNX
    Runtime's integer kernels differ with the level (a whole int8 U-Net call at the basic or extended level is
    29-32 dB from the same call at the full level, as far from it as from fp32), and the normal mode runs the full one."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    level = ort.GraphOptimizationLevel
    opts.graph_optimization_level = level.ORT_ENABLE_BASIC if basic else level.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads, opts.inter_op_num_threads = int(threads), 1
    if not SPINNING[comp]:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if lean:
        lean_options(opts, prepack)
    return opts


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 256 * 1024
# the U-Net runs every step: fresh mapped pages for each activation made SD 1.5's int8 U-Net call at 256 px 2.2×
# slower (4.4 vs 2.0 s) for 195 MB less peak; above this size blocks still come from mmap, below it from the heap,
# which release_memory() trims when the stage ends
UNET_MMAP_THRESHOLD = 16 * 2**20


_SHARED_ARENA: list = []  # the process's one ONNX Runtime CPU arena shared by sessions that opt in (shared_arena)
SHRINK = "memory.enable_memory_arena_shrinkage"


def shared_arena(opts) -> None:
    """Let a session draw its activations from one CPU arena the whole process shares (registered on first use,
    growing by what is asked, never by powers of two). A budget's streamed U-Net parts use it: the parts reuse the
    same blocks step after step instead of fresh pages. The arena gives its free blocks back at the end of each U-Net
    call (see LowMemComponents._streamed_unet). SD 1.5 int8 at 512 px, all 16 parts kept, one after the other on a
    busy machine: 17.2 s per call and 1,201 MB peak, against 21.6 s and 1,236 MB with the arena off; normal 17.0 s."""
    import onnxruntime as ort

    if not _SHARED_ARENA:
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        try:
            ort.create_and_register_allocator(info, ort.OrtArenaCfg({"arena_extend_strategy": 1}))
        except Exception:  # noqa: BLE001 - registered already (by an earlier user of this process's ORT env)
            pass
        _SHARED_ARENA.append(info)
    opts.enable_cpu_mem_arena = True
    opts.add_session_config_entry("session.use_env_allocators", "1")


def small_heap(threshold: int = MMAP_THRESHOLD) -> None:
    """Blocks of `threshold` bytes and more straight from mmap, so a freed activation goes back to the system at once
    (glibc otherwise raises this threshold to the largest block freed, up to 32 MiB, and keeps such blocks in its
    heap). Measured on the shipped model at 256 px: 167 → 129 MB peak in the smallest mode. Process-wide; glibc only."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, int(threshold))
    except (OSError, AttributeError):
        pass


def release_memory() -> None:
    """Collect garbage and hand glibc's free heap pages back to the system (where it is glibc)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _field(number: int, payload: bytes | int) -> bytes:
    """One protobuf field: a varint, or length-delimited bytes."""
    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)
    if isinstance(payload, int):
        return varint(number << 3) + varint(payload)
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def _identity_model() -> bytes:
    """An ONNX model y = Identity(x), x a float tensor of shape (1,), serialized by hand (core installs have no onnx)."""
    tensor = _field(1, _field(1, 1) + _field(2, _field(1, _field(1, 1))))  # TypeProto.tensor_type: FLOAT, shape (1,)
    value = lambda name: _field(1, name.encode()) + _field(2, tensor)  # noqa: E731 - ValueInfoProto
    node = _field(1, b"x") + _field(2, b"y") + _field(4, b"Identity")
    graph = _field(1, node) + _field(2, b"shrink") + _field(11, value("x")) + _field(12, value("y"))
    return _field(1, 8) + _field(8, _field(2, 17)) + _field(7, graph)  # ir_version 8, opset 17


def shrink_shared_arena() -> None:
    """Hand the shared arena's free regions back to the system now: sessions that drew weights from it (a budget's
    kept U-Net parts, prepacked) leave them in the arena when they are dropped, and ONNX Runtime shrinks an arena only
    at the end of a run, so one tiny run does it. SD 1.5 int8 at 512 px, 12 parts kept: 909 MB resident after the
    parts were dropped, 92 MB after this; the whole VAE decode after them peaked at 1,727 MB before, 1,333 after."""
    if not _SHARED_ARENA:
        return
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    shared_arena(opts)
    sess = ort.InferenceSession(_identity_model(), opts, providers=["CPUExecutionProvider"])
    run = ort.RunOptions()
    run.add_run_config_entry(SHRINK, "cpu:0")
    sess.run(None, {"x": np.zeros(1, np.float32)}, run)
    del sess
    release_memory()
