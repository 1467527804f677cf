"""The renderer: right shape for every format, byte-identical across runs and processes, seeds differ."""

import hashlib
import multiprocessing

import numpy as np
import pytest

from shanshui.data.render import painting_box, render
from shanshui.data.scene import FORMATS, sample_scene


def _digest(seed: int) -> str:
    return hashlib.sha256(render(sample_scene(seed), 128).tobytes()).hexdigest()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("size", [64, 256])
def test_shape_and_dtype(fmt, size):
    img = render(sample_scene(3, fmt), size)
    assert img.shape == (size, size, 3) and img.dtype == np.uint8
    assert 40 < img.mean() < 245  # neither blank nor black


def test_scroll_proportions():
    x0, y0, w, h = painting_box("tall", 256)
    assert h == 2 * w and x0 > 0
    x0, y0, w, h = painting_box("wide", 256)
    assert w == 2 * h and y0 > 0
    assert painting_box("square", 256) == (0, 0, 256, 256)


def test_same_seed_same_bytes_across_runs():
    for seed in (0, 1, 12345):
        assert render(sample_scene(seed), 128).tobytes() == render(sample_scene(seed), 128).tobytes()


def test_same_bytes_in_a_fresh_process():
    seeds = [0, 7, 99, 2**40 + 5]
    here = [_digest(s) for s in seeds]
    with multiprocessing.get_context("spawn").Pool(2) as pool:  # fresh interpreters: no shared caches
        there = pool.map(_digest, seeds)
    assert here == there


def test_different_seeds_differ():
    imgs = [render(sample_scene(s, "square"), 64) for s in range(6)]
    assert len({i.tobytes() for i in imgs}) == 6
