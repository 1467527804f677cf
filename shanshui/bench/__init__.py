"""`shanshui bench`: latency, memory and image quality per backend × precision, beside diffusers, Optimum and
stable-diffusion.cpp.

The parent process only plans, spawns and reports: every measured row runs in a fresh worker process
(`python -m shanshui.bench.worker`, or a peer venv's python for Optimum and stable-diffusion.cpp), so one row's memory arenas, thread
pools and caches never flatter the next. Importing this package imports nothing heavy (no torch, no onnxruntime).

    plan.py     models, sizes and the rows to run (and why a row cannot run here)
    prepare.py  cached model folders and ONNX exports (made in worker processes)
    venv.py     the Optimum and stable-diffusion.cpp peers' own virtual environments, on request
    runner.py   runs the rows in fresh processes, with a progress display
    report.py   environment, ratios, quality, JSON, --compare;  markdown.py  the Markdown table
    chart.py    the PNG chart (Pillow)
    worker.py   the measuring side: load, end-to-end generations, per-stage calls, peak memory
    optimum_worker.py   the same measurements for Optimum's pipeline, standalone (never imports shanshui)
    sdcpp_worker.py     the same for stable-diffusion.cpp (q8_0 / f16), standalone; stages measured in the pipeline
"""
