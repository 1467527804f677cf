"""`shanshui serve`: a local web page to paint from and an AUTOMATIC1111-compatible HTTP API (FastAPI + uvicorn).

Layers: limits (numbers) -> a1111 (request/response shapes) -> painter (one worker thread, bounded queue) ->
security (auth, body size) -> app (routes, metrics); the Typer command is shanshui/cli/serve.py. Torch-free.
"""
