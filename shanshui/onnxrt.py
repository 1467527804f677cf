"""The one place ONNX Runtime sessions are set up (quiet logs; optional thread count, spinning, optimisation level).

onnxruntime is imported inside the functions: importing this module costs nothing.
"""

from __future__ import annotations

CPU = ("CPUExecutionProvider",)


def session_options(threads: int | None = None, spinning: bool = True, optimize: bool = True):
    """Options every shanshui session shares; `optimize=False` keeps every tensor addressable (no graph fusion)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    if not spinning:  # pool threads sleep between calls (components called once per image)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def ort_session(model, providers=CPU, threads: int | None = None, spinning: bool = True, optimize: bool = True,
                small: bool = False):
    """An InferenceSession over a path or serialized model bytes. small: no CPU arena or pre-planned memory pattern,
    so a large graph's activations go back to the system after each run (same kernels, same results)."""
    import onnxruntime as ort

    model = model if isinstance(model, bytes) else str(model)
    opts = session_options(threads, spinning, optimize)
    if small:
        opts.enable_cpu_mem_arena = False
        opts.enable_mem_pattern = False
    return ort.InferenceSession(model, opts, providers=list(providers))
