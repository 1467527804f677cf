"""The VAE encoder as an exported component (image-to-image): Optimum's `vae_encoder/` contract.

    sample (B, 3, H, W) in [-1, 1]  ->  latent_parameters (B, 2C, h, w): the latent distribution's mean, then its
    log-variance, as diffusers' `DiagonalGaussianDistribution.parameters` holds them. Optimum's img2img and inpainting
    pipelines read this output; shanshui takes the mean (the distribution's mode) times the VAE's scaling_factor.
"""

from __future__ import annotations

import torch


class VaeEncoder(torch.nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.m = vae

    def forward(self, sample):  # (B, 3, H, W)
        return self.m.encode(sample, return_dict=False)[0].parameters  # (B, 2C, h, w)
