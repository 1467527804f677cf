"""Which rows a machine gets, and why the others do not run (probe results are faked: no GPU here)."""

import pytest

from shanshui.bench.plan import ModelRef, parse_list, parse_sizes, plan_rows, BenchBackend
from shanshui.errors import ShanshuiError

CPU_ONLY = {"providers": ["CPUExecutionProvider"], "torch": True, "torch_cuda": False, "tensorrt": False, "trt_backend": False}
WITH_GPU = {"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"], "torch": True, "torch_cuda": True,
            "tensorrt": False, "trt_backend": True, "gpu_name": "Test GPU"}
NO_OPTIMUM = {"ready": False, "reason": "not requested (--peers optimum builds it)"}
MODEL = ModelRef("tiny", "tiny-1", 256, arch="tiny")
ALL = ["onnxruntime", "torch", "tensorrt"], ["fp32", "fp16", "int8"]


def ids(rows):
    return {r.id: (r.status, r.reason) for r in rows}


def test_cpu_machine_rows_and_reasons():
    rows = ids(plan_rows([MODEL], None, *ALL, "auto", ["diffusers", "optimum"], CPU_ONLY, NO_OPTIMUM))
    planned = sorted(k for k, (st, _) in rows.items() if st == "planned")
    assert planned == ["tiny@256/diffusers-cpu-fp32", "tiny@256/onnxruntime-cpu-fp16", "tiny@256/onnxruntime-cpu-fp32",
                       "tiny@256/onnxruntime-cpu-int8", "tiny@256/torch-cpu-fp32"]
    assert rows["tiny@256/tensorrt-cuda-*"][0] == "skipped" and "CUDA" in rows["tiny@256/tensorrt-cuda-*"][1]
    assert rows["tiny@256/optimum-cpu-fp32"] == ("skipped", NO_OPTIMUM["reason"])


def test_gpu_machine_adds_cuda_rows_and_says_why_tensorrt_is_missing():
    rows = ids(plan_rows([MODEL], [128, 256], *ALL, "auto", ["diffusers"], WITH_GPU, NO_OPTIMUM))
    for size in (128, 256):
        assert rows[f"tiny@{size}/torch-cuda-fp16"][0] == "planned"
        assert rows[f"tiny@{size}/onnxruntime-cuda-int8"][0] == "planned"
        assert rows[f"tiny@{size}/diffusers-cuda-fp16"][0] == "planned"
        assert rows[f"tiny@{size}/tensorrt-cuda-*"] == ("skipped", "the tensorrt package is not importable here")
    assert "tiny@256/torch-cpu-fp16" not in rows  # not a row at all: PyTorch fp16 on CPUs is not a configuration


def test_cuda_asked_for_without_gpu_is_one_skipped_row_per_backend():
    rows = plan_rows([MODEL], None, ["onnxruntime"], ["fp32", "fp16"], "cuda", ["diffusers"], CPU_ONLY, NO_OPTIMUM)
    assert [(r.id, r.status) for r in rows] == [("tiny@256/onnxruntime-cuda-*", "skipped"), ("tiny@256/diffusers-cuda-*", "skipped")]


def test_export_only_model_without_source():
    ref = ModelRef("x", "x-1", 256, exports={"fp32": "/some/export"})
    rows = ids(plan_rows([ref], None, ["onnxruntime", "torch"], ["fp32", "int8"], "cpu", [], CPU_ONLY, NO_OPTIMUM))
    assert rows["x@256/onnxruntime-cpu-fp32"][0] == "planned"
    assert "no int8 export" in rows["x@256/onnxruntime-cpu-int8"][1]
    assert "no diffusers source" in rows["x@256/torch-cpu-fp32"][1]


def test_parsing_lists_and_sizes():
    assert parse_list("torch, onnxruntime,torch", BenchBackend, "backend") == ["torch", "onnxruntime"]
    with pytest.raises(ShanshuiError, match="backend openvino is not one of onnxruntime, torch, tensorrt"):
        parse_list("torch,openvino", BenchBackend, "backend")
    assert parse_sizes("256,512") == [256, 512] and parse_sizes(None) is None
    with pytest.raises(ShanshuiError, match="multiple of 8; try 96"):
        parse_sizes("100")
