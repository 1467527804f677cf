"""The only module that imports tensorrt: building an engine from ONNX, and running one (TensorRT ≥ 10 Python API).

PyTorch provides CUDA memory, streams, events and graphs here (it is installed wherever a GPU is used), so no
CUDA binding of our own is needed. Everything heavy is imported when first used.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shanshui.engines.plan import TRT_ALTERNATIVE, EngineBuild, choose_profile, is_static
from shanshui.errors import ShanshuiError
from shanshui.fsutil import write_bytes_atomic

NO_TENSORRT = ("TensorRT is not installed: pip install 'shanshui[tensorrt]' (NVIDIA's wheels, on PyPI and "
               "https://pypi.nvidia.com), " + TRT_ALTERNATIVE)
NO_GPU = ("no CUDA GPU is visible here, and TensorRT runs on NVIDIA GPUs only: build and run engines on a GPU machine, "
          "or use --backend onnxruntime --device cpu")
_LOGGER = None


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError:
        raise ShanshuiError(NO_TENSORRT) from None
    except OSError as e:  # the wheel is there but its libraries (libnvinfer, CUDA) do not load
        raise ShanshuiError(f"TensorRT is installed but does not load ({str(e).splitlines()[0]}): reinstall "
                            f"'shanshui[tensorrt]' for this CUDA driver, {TRT_ALTERNATIVE}") from None
    if int(trt.__version__.split(".")[0]) < 10:
        raise ShanshuiError(f"TensorRT {trt.__version__} is too old, shanshui needs 10 or later: "
                            f"pip install -U 'shanshui[tensorrt]', {TRT_ALTERNATIVE}")
    return trt


def cuda_torch():
    """torch, with a CUDA GPU visible to it."""
    try:
        import torch
    except ImportError:
        raise ShanshuiError("TensorRT engines use PyTorch for CUDA memory and streams: pip install 'shanshui[tensorrt]'") from None
    if not torch.cuda.is_available():
        raise ShanshuiError(NO_GPU)
    return torch


def environment() -> dict:
    """What an engine is tied to: the TensorRT version and the GPU (name, compute capability)."""
    trt = import_tensorrt()
    torch = cuda_torch()
    i = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(i)
    return {"tensorrt": trt.__version__, "gpu": {"name": torch.cuda.get_device_name(i), "compute_capability": f"{major}.{minor}"}}


def _logger(trt):
    global _LOGGER
    if _LOGGER is None:  # one logger per process: TensorRT warns when builders and runtimes get different ones
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    return _LOGGER


def build_engine(onnx_path: Path, spec: EngineBuild, timing_cache: Path) -> bytes:
    """A serialized engine for one ONNX graph (external data is found beside it); updates the timing cache file."""
    trt = import_tensorrt()
    cuda_torch()
    logger = _logger(trt)
    builder = trt.Builder(logger)
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)  # TensorRT 11: always
    if spec.mode["strongly_typed"] and strongly_typed is not None:
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    native_norm = getattr(getattr(trt, "OnnxParserFlag", None), "NATIVE_INSTANCENORM", None)
    if native_norm is not None:  # GroupNorm exports as InstanceNormalization: TensorRT's own layer, not the plugin
        parser.set_flag(native_norm)
    if not parser.parse_from_file(str(onnx_path)):
        first = str(parser.get_error(0)).splitlines()[0] if parser.num_errors else "unknown error"
        raise ShanshuiError(f"TensorRT cannot parse {onnx_path}: {first}; re-export it, {TRT_ALTERNATIVE}")
    config = builder.create_builder_config()
    if spec.workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(spec.workspace_bytes))
    if spec.mode["fp16_flag"]:
        fp16 = getattr(trt.BuilderFlag, "FP16", None)
        if fp16 is None:
            raise ShanshuiError(f"TensorRT {trt.__version__} has no fp16 builder flag: build from an fp16 export "
                                f"(`shanshui export MODEL OUT --precision fp16`)")
        config.set_flag(fp16)
    tf32 = getattr(trt.BuilderFlag, "TF32", None)
    if tf32 is not None and not spec.mode["tf32"]:
        config.clear_flag(tf32)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):  # another TensorRT's or GPU's: afresh
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
    for prof in spec.profiles:
        p = builder.create_optimization_profile()
        for name, (lo, opt, hi) in prof.items():
            p.set_shape(name, tuple(lo), tuple(opt), tuple(hi))
        config.add_optimization_profile(p)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ShanshuiError(f"TensorRT could not build the {spec.component} engine (its messages are above): "
                            f"try fewer --shapes or --precision fp32, {TRT_ALTERNATIVE}")
    write_bytes_atomic(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(serialized))


def _set_memory(ctx, address: int, size: int) -> None:
    if hasattr(ctx, "set_device_memory"):  # TensorRT ≥ 10.1
        ctx.set_device_memory(address, size)
    else:
        ctx.device_memory = address


def _torch_dtype(trt, torch, dt):
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.INT32: torch.int32,
             trt.DataType.INT8: torch.int8, trt.DataType.BOOL: torch.bool}
    for name, t in (("INT64", torch.int64), ("BF16", torch.bfloat16), ("UINT8", torch.uint8)):
        if hasattr(trt.DataType, name):
            table[getattr(trt.DataType, name)] = t
    if dt not in table:
        raise ShanshuiError(f"engine I/O type {dt} is not supported by shanshui; rebuild with `shanshui engine build`")
    return table[dt]


@dataclass
class _Slot:
    """Fixed device buffers for one run shape of one profile, and its CUDA graph once captured."""

    index: int  # optimisation profile
    inputs: dict  # name -> CUDA tensor at the run shape (padded batch)
    outputs: dict
    start: object  # torch.cuda.Event
    end: object
    graph: object = None  # torch.cuda.CUDAGraph
    launches: int = field(default=0)


class TrtRunner:
    """One engine: an execution context per optimisation profile, device buffers allocated once per shape, a CUDA
    graph per static shape. Contexts get no memory of their own: attach() points them at activation memory shared by
    all engines, which is safe because every engine runs on the same stream, one after another."""

    def __init__(self, plan: bytes, name: str, stream, cuda_graphs: bool = True):
        trt, torch = import_tensorrt(), cuda_torch()
        self.trt, self.torch, self.name, self.stream, self.cuda_graphs = trt, torch, name, stream, cuda_graphs
        self.runtime = trt.Runtime(_logger(trt))
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise ShanshuiError(f"TensorRT {trt.__version__} cannot load the {name} engine (built by another TensorRT or "
                                f"for another GPU?): rebuild with `shanshui engine build`, {TRT_ALTERNATIVE}")
        e = self.engine
        names = [e.get_tensor_name(i) for i in range(e.num_io_tensors)]
        self.inputs = [n for n in names if e.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {n: _torch_dtype(trt, torch, e.get_tensor_dtype(n)) for n in names}
        self.profiles = [{n: [list(s) for s in e.get_tensor_profile_shape(n, i)] for n in self.inputs}
                         for i in range(e.num_optimization_profiles)]
        self.memory_bytes = int(e.device_memory_size_v2 if hasattr(e, "device_memory_size_v2") else e.device_memory_size)
        self._memory: tuple[int, int] | None = None
        self._contexts: dict[int, object] = {}
        self._bound: dict[int, _Slot] = {}  # profile -> slot whose shapes and addresses its context holds
        self._routes: dict = {}  # call shapes -> (profile, run shapes)
        self._slots: dict = {}

    def attach(self, address: int, size: int) -> None:
        """Activation memory (≥ memory_bytes) for every context of this engine."""
        self._memory = (address, size)
        for ctx in self._contexts.values():
            _set_memory(ctx, address, size)

    def _context(self, index: int):
        if index not in self._contexts:
            if self._memory is None:
                raise RuntimeError("TrtRunner.attach() must be called before running")
            strategy = getattr(self.trt, "ExecutionContextAllocationStrategy", None)
            ctx = (self.engine.create_execution_context(strategy.USER_MANAGED) if strategy is not None
                   else self.engine.create_execution_context_without_device_memory())
            if ctx is None:
                raise ShanshuiError(f"TensorRT could not create a context for the {self.name} engine (out of GPU memory?)")
            _set_memory(ctx, *self._memory)
            if index:
                ctx.set_optimization_profile_async(index, self.stream.cuda_stream)
            self._contexts[index] = ctx
        return self._contexts[index]

    def _slot(self, shapes: dict[str, tuple[int, ...]]) -> _Slot:
        key = tuple(sorted(shapes.items()))
        if key not in self._routes:
            route = choose_profile(self.profiles, shapes)
            if route is None:
                raise ShanshuiError(f"the {self.name} engine has no profile for inputs {shapes}: rebuild with "
                                    f"`shanshui engine build EXPORT --shapes NxHxW` for this size, or --dynamic")
            self._routes[key] = route
        index, run = self._routes[key]
        skey = (index, tuple(sorted(run.items())))
        if skey not in self._slots:
            self._slots[skey] = self._make_slot(index, run)
        return self._slots[skey]

    def _make_slot(self, index: int, run: dict[str, tuple[int, ...]]) -> _Slot:
        torch = self.torch
        ctx = self._context(index)
        for n, s in run.items():
            if not ctx.set_input_shape(n, s):
                raise ShanshuiError(f"the {self.name} engine refused shape {s} for {n}; rebuild the engines")
        inputs = {n: torch.zeros(s, dtype=self.dtypes[n], device="cuda") for n, s in run.items()}  # padded rows stay 0
        outputs = {}
        for n in self.outputs:
            shape = tuple(ctx.get_tensor_shape(n))
            if any(d < 0 for d in shape):
                raise ShanshuiError(f"the {self.name} engine left output {n} unresolved at {run}; rebuild the engines")
            outputs[n] = torch.empty(shape, dtype=self.dtypes[n], device="cuda")
        self.stream.wait_stream(torch.cuda.current_stream())  # the zero fills above ran on the current stream
        slot = _Slot(index, inputs, outputs, torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        if self.cuda_graphs and is_static(self.profiles[index]):
            slot.graph = self._capture(slot)
        return slot

    def _launch(self, slot: _Slot) -> None:
        ctx = self._contexts[slot.index]
        if self._bound.get(slot.index) is not slot:  # a dynamic profile's context serves several shapes
            for n, t in slot.inputs.items():
                ctx.set_input_shape(n, tuple(t.shape))  # accepted before, in _make_slot
                ctx.set_tensor_address(n, t.data_ptr())
            for n, t in slot.outputs.items():
                ctx.set_tensor_address(n, t.data_ptr())
            self._bound[slot.index] = slot
        if not ctx.execute_async_v3(self.stream.cuda_stream):
            raise ShanshuiError(f"TensorRT failed to run the {self.name} engine (its messages are above)")

    def _capture(self, slot: _Slot):
        """A CUDA graph of one launch, after a warm-up launch (TensorRT finishes its lazy set-up outside the capture)."""
        torch = self.torch
        with torch.cuda.stream(self.stream):
            self._launch(slot)
        self.stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):  # as trtexec does
                self._launch(slot)
        except RuntimeError as e:
            print(f"note: no CUDA graph for the {self.name} engine ({str(e).splitlines()[0]}); running it directly", file=sys.stderr)
            return None
        return graph

    def run(self, feeds: dict[str, np.ndarray], want: tuple[str, ...] | None = None) -> tuple[dict[str, np.ndarray], float]:
        """NumPy in, NumPy out (float outputs as float32), and the GPU milliseconds of the launch (CUDA events)."""
        torch = self.torch
        shapes = {n: tuple(a.shape) for n, a in feeds.items()}
        slot = self._slot(shapes)
        rows = next(iter(shapes.values()))[0]  # batch of this call; the slot's may be larger (padded)
        with torch.cuda.stream(self.stream):
            for n, a in feeds.items():
                slot.inputs[n][:rows].copy_(torch.from_numpy(np.ascontiguousarray(a)))
            slot.start.record(self.stream)
            if slot.graph is not None:
                slot.graph.replay()
            else:
                self._launch(slot)
            slot.end.record(self.stream)
            outs = {}
            for n in want or self.outputs:
                t = slot.outputs[n][:rows]
                outs[n] = (t.float() if t.is_floating_point() else t).cpu().numpy()
        self.stream.synchronize()
        slot.launches += 1
        return outs, slot.start.elapsed_time(slot.end)
