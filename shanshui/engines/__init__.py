"""TensorRT engines for NVIDIA GPUs, built from an export folder.

plan.py   shape buckets, optimisation profiles, precision modes and cache keys (pure Python)
build.py  the engine folder: build or reuse engines, detect stale ones (pure Python around an injected builder)
trt.py    the only module that imports tensorrt: build_engine() and TrtRunner
"""
