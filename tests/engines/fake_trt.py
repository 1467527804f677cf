"""A stand-in for the tensorrt module and for torch's CUDA parts, so trt.py and TrtComponents run on a CPU.

It follows the TensorRT 10 Python API as shanshui.engines.trt calls it (names, argument order, return values), and
does the bookkeeping TensorRT does: profiles with min/opt/max checks, contexts that need their memory, input shapes
and tensor addresses before a launch, a timing cache. A fake engine runs its ONNX graph in ONNX Runtime on the
tensors found at the addresses it was given, so wrong buffers, shapes or bindings give wrong numbers. CUDA graphs:
a launch during capture is recorded, not run, and replayed later. It proves the plumbing, not TensorRT itself.
"""

from __future__ import annotations

import contextlib
import json
import types
from pathlib import Path

import numpy as np
import torch

CAPTURING: list = []  # the FakeGraph being captured, if any


class FakeCache:
    def __init__(self, data: bytes):
        self.data = bytes(data)

    def serialize(self) -> bytes:
        return self.data + b"+timing"


class FakeProfile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, name, lo, opt, hi):
        if not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
            raise RuntimeError("Shape provided for min is inconsistent with other shapes.")
        self.shapes[name] = [list(lo), list(opt), list(hi)]


class FakeConfig:
    def __init__(self):
        self.flags, self.profiles, self.pools, self.cache = {"TF32"}, [], {}, None  # TF32 is on by default

    def set_memory_pool_limit(self, pool, size):
        self.pools[pool] = size

    def set_flag(self, flag):
        self.flags.add(flag)

    def clear_flag(self, flag):
        self.flags.discard(flag)

    def create_timing_cache(self, data):
        return FakeCache(data)

    def set_timing_cache(self, cache, ignore_mismatch):
        if cache.data.startswith(b"other-gpu"):
            return False
        self.cache = cache
        return True

    def get_timing_cache(self):
        return self.cache

    def add_optimization_profile(self, profile):
        self.profiles.append(profile.shapes)
        return len(self.profiles) - 1


class FakeNetwork:
    def __init__(self, flags):
        self.flags, self.onnx = flags, None


class FakeParser:
    def __init__(self, network, logger):
        self.network, self.errors, self.flags = network, [], set()

    def set_flag(self, flag):
        self.flags.add(flag)

    def parse_from_file(self, path):
        if not Path(path).is_file():
            self.errors = [f"ModelImporter: failed to open {path}"]
            return False
        self.network.onnx = str(path)
        return True

    @property
    def num_errors(self):
        return len(self.errors)

    def get_error(self, i):
        return self.errors[i]


class FakeBuilder:
    fail = False

    def __init__(self, logger):
        self.logger = logger

    def create_network(self, flags=0):
        return FakeNetwork(flags)

    def create_builder_config(self):
        return FakeConfig()

    def create_optimization_profile(self):
        return FakeProfile()

    def build_serialized_network(self, network, config):
        if FakeBuilder.fail or not config.profiles:
            return None
        return json.dumps({"onnx": network.onnx, "network_flags": network.flags, "flags": sorted(config.flags),
                           "pools": config.pools, "profiles": config.profiles}).encode()


class FakeEngine:
    def __init__(self, plan: dict, tensors: dict):
        import onnxruntime as ort

        self.plan, self.tensors = plan, tensors
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(plan["onnx"], opts, providers=["CPUExecutionProvider"])
        self.ins = [i.name for i in self.session.get_inputs()]
        self.outs = [o.name for o in self.session.get_outputs()]
        self.types = {v.name: v.type for v in self.session.get_inputs() + self.session.get_outputs()}
        self.num_io_tensors = len(self.ins) + len(self.outs)
        self.num_optimization_profiles = len(plan["profiles"])
        self.device_memory_size_v2 = 1 << 20
        self.contexts = []

    def get_tensor_name(self, i):
        return (self.ins + self.outs)[i]

    def get_tensor_mode(self, name):
        return "INPUT" if name in self.ins else "OUTPUT"

    def get_tensor_dtype(self, name):
        return {"tensor(float)": "FLOAT", "tensor(int64)": "INT64", "tensor(float16)": "HALF"}[self.types[name]]

    def get_tensor_profile_shape(self, name, index):
        return [tuple(s) for s in self.plan["profiles"][index][name]]

    def create_execution_context(self, strategy="STATIC"):
        ctx = FakeContext(self, strategy)
        self.contexts.append(ctx)
        return ctx


class FakeContext:
    def __init__(self, engine: FakeEngine, strategy):
        self.engine, self.strategy = engine, strategy
        self.memory, self.profile, self.shapes, self.addresses, self.launches = None, 0, {}, {}, 0

    def set_device_memory(self, address, size):
        assert size >= self.engine.device_memory_size_v2
        self.memory = (address, size)

    def set_optimization_profile_async(self, index, stream):
        self.profile = index
        return True

    def set_input_shape(self, name, shape):
        lo, _, hi = self.engine.plan["profiles"][self.profile][name]
        if len(shape) != len(lo) or not all(a <= v <= b for a, v, b in zip(lo, shape, hi)):
            return False
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name):
        if name in self.engine.ins:
            return self.shapes[name]
        feeds = {n: np.zeros(self.shapes[n], np.int64 if self.engine.types[n] == "tensor(int64)" else np.float32)
                 for n in self.engine.ins}
        return self.engine.session.run([name], feeds)[0].shape

    def set_tensor_address(self, name, address):
        self.addresses[name] = address
        return True

    def execute_async_v3(self, stream_handle):
        if self.memory is None and self.strategy == "USER_MANAGED":
            return False  # TensorRT refuses to run a context without its memory
        if CAPTURING:
            CAPTURING[-1].ops.append(self._execute)
        else:
            self._execute()
        return True

    def _execute(self):
        tensors = self.engine.tensors
        feeds = {}
        for n in self.engine.ins:
            t = tensors[self.addresses[n]]
            assert tuple(t.shape) == self.shapes[n], (n, t.shape, self.shapes[n])
            feeds[n] = t.numpy()
        for n, value in zip(self.engine.outs, self.engine.session.run(self.engine.outs, feeds)):
            tensors[self.addresses[n]].copy_(torch.from_numpy(value))
        self.launches += 1


class FakeRuntime:
    tensors: dict = {}

    def __init__(self, logger):
        self.logger = logger

    def deserialize_cuda_engine(self, plan: bytes):
        try:
            return FakeEngine(json.loads(bytes(plan)), FakeRuntime.tensors)
        except (ValueError, KeyError):
            return None  # what TensorRT returns for a plan it cannot read


def make_tensorrt(version: str = "10.3.0", fp16_flag: bool = True):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version

    class Logger:
        ERROR, WARNING = 1, 2

        def __init__(self, severity=2):
            self.severity = severity

    trt.Logger = Logger
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=5)
    trt.BuilderFlag = types.SimpleNamespace(TF32="TF32", **({"FP16": "FP16"} if fp16_flag else {}))
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.OnnxParserFlag = types.SimpleNamespace(NATIVE_INSTANCENORM=0)
    trt.TensorIOMode = types.SimpleNamespace(NONE="NONE", INPUT="INPUT", OUTPUT="OUTPUT")
    trt.DataType = types.SimpleNamespace(FLOAT="FLOAT", HALF="HALF", INT32="INT32", INT8="INT8", BOOL="BOOL", INT64="INT64")
    trt.ExecutionContextAllocationStrategy = types.SimpleNamespace(STATIC="STATIC", USER_MANAGED="USER_MANAGED")
    trt.Builder, trt.OnnxParser, trt.Runtime = FakeBuilder, FakeParser, FakeRuntime
    return trt


class FakeEvent:
    def __init__(self, enable_timing=False):
        self.recorded = 0

    def record(self, stream=None):
        self.recorded += 1

    def elapsed_time(self, other):
        assert self.recorded and other.recorded
        return 1.5


class FakeStream:
    cuda_stream = 1234

    def synchronize(self):
        pass

    def wait_stream(self, other):
        pass


class FakeGraph:
    def __init__(self):
        self.ops, self.replays = [], 0

    def replay(self):
        self.replays += 1
        for op in self.ops:
            op()


class FakeCuda:
    Event, Stream, CUDAGraph = FakeEvent, FakeStream, FakeGraph

    def is_available(self):
        return True

    def current_device(self):
        return 0

    def get_device_capability(self, i=0):
        return (9, 0)

    def get_device_name(self, i=0):
        return "Fake GPU"

    def stream(self, s):
        return contextlib.nullcontext()

    def current_stream(self):
        return FakeStream()

    @contextlib.contextmanager
    def graph(self, graph, stream=None, capture_error_mode="global"):
        CAPTURING.append(graph)
        try:
            yield
        finally:
            CAPTURING.pop()


class FakeCudaTorch:
    """torch, but "CUDA" tensors are CPU tensors that a fake engine finds again by their address."""

    def __init__(self):
        self.cuda = FakeCuda()
        self.tensors = FakeRuntime.tensors

    def __getattr__(self, name):
        return getattr(torch, name)

    def _keep(self, t):
        self.tensors[t.data_ptr()] = t
        return t

    def zeros(self, *shape, dtype=None, device=None):
        return self._keep(torch.zeros(*shape, dtype=dtype))

    def empty(self, *shape, dtype=None, device=None):
        return self._keep(torch.full(*shape, float("nan")) if dtype in (None, torch.float32) else torch.zeros(*shape, dtype=dtype))


def install(monkeypatch, version: str = "10.3.0", fp16_flag: bool = True):
    """Route shanshui.engines.trt to the fakes; returns (fake tensorrt module, fake torch)."""
    from shanshui.engines import trt

    fake, fake_torch = make_tensorrt(version, fp16_flag), FakeCudaTorch()
    FakeRuntime.tensors.clear()
    FakeBuilder.fail = False
    monkeypatch.setattr(trt, "import_tensorrt", lambda: fake)
    monkeypatch.setattr(trt, "cuda_torch", lambda: fake_torch)
    monkeypatch.setattr(trt, "_LOGGER", None)
    return fake, fake_torch
