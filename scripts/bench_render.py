"""Measure the procedural renderer: images/s at one size for 1 process and for N processes (default 2).

    python scripts/bench_render.py [--count 400] [--size 256] [--procs 2]

Renders scenes 0..count-1 (mixed formats) without writing files; each process warms its caches first.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time

from shanshui.data.render import render
from shanshui.data.scene import sample_scene


def _warm(size: int) -> None:
    for s in range(3):
        render(sample_scene(10**9 + s), size)


def _one(args: tuple[int, int]) -> int:
    seed, size = args
    return int(render(sample_scene(seed), size)[0, 0, 0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=400)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--procs", type=int, default=2)
    a = ap.parse_args()
    jobs = [(s, a.size) for s in range(a.count)]

    _warm(a.size)
    t = time.perf_counter()
    for j in jobs:
        _one(j)
    one = a.count / (time.perf_counter() - t)
    print(f"1 process : {one:7.1f} images/s  ({1000 / one:.1f} ms/image, {a.size}x{a.size}, {a.count} images)")

    with multiprocessing.Pool(a.procs, initializer=_warm, initargs=(a.size,)) as pool:
        pool.map(_one, jobs[: a.procs * 2], chunksize=1)  # make sure every worker is up and warm
        t = time.perf_counter()
        pool.map(_one, jobs, chunksize=8)
        many = a.count / (time.perf_counter() - t)
    print(f"{a.procs} processes: {many:7.1f} images/s  ({a.size}x{a.size}, {a.count} images)")


if __name__ == "__main__":
    main()
