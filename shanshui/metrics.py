"""Image and tensor quality metrics in NumPy (torch-free): PSNR, SSIM, SNR and float->uint8 pixels, shared by training reports, eval, gates and bench."""

from __future__ import annotations

import numpy as np


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB between two images of the same shape (inf when identical)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(peak**2 / mse)


def _gauss_blur(x: np.ndarray, sigma: float = 1.5, radius: int = 5) -> np.ndarray:
    """Separable Gaussian blur over the first two axes of x (H, W, ...), 'valid' region only."""
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    h = sum(k[i] * x[i : x.shape[0] - 2 * radius + i] for i in range(2 * radius + 1))
    return sum(k[i] * h[:, i : x.shape[1] - 2 * radius + i] for i in range(2 * radius + 1))


def ssim(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """Structural similarity (Wang et al. 2004), Gaussian window σ = 1.5, averaged over pixels and channels."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    mu_a, mu_b = _gauss_blur(a), _gauss_blur(b)
    var_a = _gauss_blur(a * a) - mu_a**2
    var_b = _gauss_blur(b * b) - mu_b**2
    cov = _gauss_blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


def snr_db(ref: np.ndarray, got: np.ndarray) -> float:
    """Signal-to-noise ratio of `got` against `ref` in dB: 10·log10(mean ref² / mean (ref − got)²) (inf when equal)."""
    err = float(np.mean((ref.astype(np.float64) - got.astype(np.float64)) ** 2))
    return float("inf") if err == 0 else 10 * np.log10(float(np.mean(ref.astype(np.float64) ** 2)) / err)


def to_uint8(chw: np.ndarray) -> np.ndarray:
    """Images in [-1, 1], channels first (..., 3, H, W) -> uint8 pixels, channels last (..., H, W, 3)."""
    return np.round((np.clip(np.moveaxis(chw, -3, -1), -1, 1) + 1) * 127.5).astype(np.uint8)
