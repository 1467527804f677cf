"""Load test of `shanshui serve`: N concurrent clients × M txt2img requests against a server on 127.0.0.1.

Starts the server as a subprocess (the real command, one model loaded once), fires the clients (threads, each with
its own connection), then checks: every accepted request (200) returned valid PNGs of the asked size with A1111
metadata, every rejected one was a 429 with Retry-After, nothing answered 5xx, and the server's resident memory
stayed within --max-rss-growth-mb of what it was after a warm-up request. Loops are bounded in count and time.

    python scripts/loadtest_serve.py                      # 32 clients x 4 requests, 64 px, 2 steps
    python scripts/loadtest_serve.py --clients 8 --requests 2 --max-queue 2 --json out.json   # the CI size
Exit status 0 when every check holds. Needs httpx (the [dev] extra).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from PIL import Image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class RssWatch(threading.Thread):
    """Samples a process's resident memory every `every` seconds; keeps the peak."""

    def __init__(self, pid: int, every: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.every, self.peak, self.stop = pid, every, 0.0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                self.peak = max(self.peak, rss_mb(self.pid))
            except (FileNotFoundError, ProcessLookupError):
                return
            self.stop.wait(self.every)


def start_server(args, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "shanshui.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--max-queue", str(args.max_queue), "--timeout", str(args.deadline_s)]
    if args.model:
        cmd += ["--model", args.model]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    log = tempfile.TemporaryFile(mode="w+")  # the server's stderr, read back only if it dies
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise SystemExit(f"error: the server exited: {log.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("error: the server did not answer /health within 120 s")


def check_png(b64: str, size: int) -> str | None:
    try:
        im = Image.open(io.BytesIO(base64.b64decode(b64, validate=True)))
        im.load()
    except Exception as e:  # noqa: BLE001 — any failure is a finding
        return f"not a PNG: {e}"
    if im.format != "PNG" or im.size != (size, size):
        return f"{im.format} {im.size}, expected PNG {size}x{size}"
    if "Steps:" not in im.info.get("parameters", ""):
        return "no A1111 parameters text"
    return None


def client(url: str, k: int, args, results: list, stop_at: float) -> None:
    with httpx.Client(timeout=args.deadline_s) as http:
        for i in range(args.requests):
            if time.monotonic() > stop_at:
                results.append({"client": k, "status": "skipped (time bound)"})
                return
            body = {"prompt": args.prompt, "steps": args.steps, "width": args.size, "height": args.size,
                    "seed": k * 1000 + i, "sampler_name": "DPM++ 2M"}
            t0 = time.perf_counter()
            try:
                r = http.post(f"{url}/sdapi/v1/txt2img", json=body)
            except httpx.HTTPError as e:
                results.append({"client": k, "status": f"transport error {type(e).__name__}"})
                continue
            row = {"client": k, "status": r.status_code, "seconds": time.perf_counter() - t0}
            if r.status_code == 200:
                images = r.json().get("images", [])
                row["problems"] = [p for p in (check_png(b, args.size) for b in images) if p] or (
                    [] if len(images) == 1 else [f"{len(images)} images"])
            elif r.status_code == 429:
                row["retry_after"] = r.headers.get("Retry-After")
                time.sleep(min(float(row["retry_after"] or 1), args.backoff_s))
            results.append(row)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, round(q * (len(v) - 1)))]


def run(args) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(args, port)
    watch = RssWatch(server.pid)
    try:
        warm = httpx.post(f"{url}/sdapi/v1/txt2img", timeout=120,
                          json={"prompt": args.prompt, "steps": args.steps, "width": args.size, "height": args.size})
        assert warm.status_code == 200, warm.text
        rss_warm = rss_mb(server.pid)
        watch.start()
        results: list[dict] = []
        stop_at = time.monotonic() + args.deadline_s
        threads = [threading.Thread(target=client, args=(url, k, args, results, stop_at)) for k in range(args.clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(args.deadline_s + 30)
        wall = time.perf_counter() - t0
        watch.stop.set()
        metrics = httpx.get(f"{url}/metrics").text
        rss_end = rss_mb(server.pid)
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
    ok = [r for r in results if r["status"] == 200]
    latencies = [r["seconds"] for r in ok]
    report = {
        "clients": args.clients, "requests_per_client": args.requests, "size": args.size, "steps": args.steps,
        "max_queue": args.max_queue, "sent": len(results), "accepted": len(ok),
        "rejected_429": sum(r["status"] == 429 for r in results),
        "rejected_without_retry_after": sum(r["status"] == 429 and not r.get("retry_after") for r in results),
        "server_errors_5xx": sum(isinstance(r["status"], int) and r["status"] >= 500 for r in results),
        "other": sorted({str(r["status"]) for r in results if r["status"] not in (200, 429)}),
        "bad_images": [p for r in ok for p in r["problems"]],
        "latency_p50_s": _round(percentile(latencies, 0.5)), "latency_p95_s": _round(percentile(latencies, 0.95)),
        "wall_s": round(wall, 2), "throughput_images_per_s": round(len(ok) / wall, 3) if wall else None,
        "rss_after_warmup_mb": round(rss_warm, 1), "rss_peak_mb": round(max(watch.peak, rss_end), 1),
        "rss_end_mb": round(rss_end, 1), "server_images_total": _metric(metrics, "shanshui_serve_images_total"),
        "machine": f"{os.cpu_count()} CPUs, {os.uname().sysname} {os.uname().machine}",
    }
    growth = report["rss_peak_mb"] - rss_warm
    report["checks"] = {
        "every accepted request returned valid PNGs": not report["bad_images"],
        "every rejection is a 429 with Retry-After": not report["rejected_without_retry_after"] and not report["other"],
        "no 5xx": report["server_errors_5xx"] == 0,
        f"server memory grew < {args.max_rss_growth_mb} MB over warm-up": growth < args.max_rss_growth_mb,
        "some requests were accepted": report["accepted"] > 0,
    }
    return report


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def _metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="model folder (default: the shipped model)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests", type=int, default=4, help="requests per client")
    ap.add_argument("--size", type=int, default=64, help="square image side in pixels")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--max-queue", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None, help="the server's CPU threads")
    ap.add_argument("--prompt", default="一棵青松，青山环绕，云雾缭绕")
    ap.add_argument("--backoff-s", type=float, default=0.5, help="a client's longest pause after a 429")
    ap.add_argument("--deadline-s", type=float, default=300, help="bound on the whole run (and each request)")
    ap.add_argument("--max-rss-growth-mb", type=float, default=300)
    ap.add_argument("--json", type=Path, help="write the report here")
    args = ap.parse_args(argv)
    if not (1 <= args.clients <= 256 and 1 <= args.requests <= 100):
        ap.error("--clients must be 1..256 and --requests 1..100")
    report = run(args)
    text = json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False)
    print(text)
    if args.json:
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp.write_text(text + "\n", encoding="utf-8")
        tmp.replace(args.json)
    failed = [name for name, ok in report["checks"].items() if not ok]
    for name in failed:
        print(f"FAILED: {name}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
