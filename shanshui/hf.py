"""The PyTorch side of a diffusers folder: quiet Hugging Face libraries, load a component as the contract's module,
images to tensors and a VAE round trip.

Imported by export, the torch backend, training and bench; torch, diffusers and transformers are imported inside the
functions so that importing this module stays cheap (and the torch-free core never pays for it).
"""

from __future__ import annotations

import numpy as np

from shanshui.errors import ShanshuiError
from shanshui.fsutil import read_json
from shanshui.spec.contract import SOURCE_FOLDER
from shanshui.spec.source import SourceModel
from shanshui.weights import load_strict


def require_torch(what: str = "export") -> None:
    try:
        import diffusers  # noqa: F401
        import onnx  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        raise ShanshuiError(f"{what} needs the torch extra ({e.name} is missing): pip install 'shanshui[torch]'") from None
    quiet_hf()


def quiet_hf() -> None:
    """No per-file progress bars or info logs from transformers/diffusers in our output."""
    import diffusers
    import transformers

    for lib in (diffusers, transformers):
        lib.utils.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()


def load_component(source: SourceModel, name: str):
    """The PyTorch module for a component, wrapped so that it returns exactly the contract's outputs."""
    import diffusers
    import torch
    import transformers

    index = read_json(source.root / "model_index.json")
    folder = source.root / SOURCE_FOLDER[name]
    if name == "text_encoder":
        cls = getattr(transformers, index.get("text_encoder", [None, "CLIPTextModel"])[1] or "CLIPTextModel")
        model = load_strict(cls, folder, "text encoder", use_safetensors=True, torch_dtype=torch.float32)

        class TextEncoder(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids):  # (B2, L) int64
                out = self.m(input_ids, return_dict=True)
                return out.last_hidden_state, out.pooler_output  # (B2, L, D), (B2, D)

        return TextEncoder(model).eval()
    if name == "unet":
        model = load_strict(diffusers.UNet2DConditionModel, folder, "U-Net", use_safetensors=True, torch_dtype=torch.float32)

        class UNet(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, sample, timestep, encoder_hidden_states):  # (B2, C, h, w), (B2,), (B2, L, D)
                return self.m(sample, timestep, encoder_hidden_states, return_dict=False)[0]  # (B2, C, h, w)

        return UNet(model).eval()
    model = load_strict(diffusers.AutoencoderKL, folder, "VAE", use_safetensors=True, torch_dtype=torch.float32)
    if name == "vae_encoder":
        return _vae_encoder(model).eval()

    class VaeDecoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, latent_sample):  # (B, C, h, w), already divided by scaling_factor
            return self.m.decode(latent_sample, return_dict=False)[0]  # (B, 3, H, W) in [-1, 1]

    return VaeDecoder(model).eval()


def _vae_encoder(vae):
    """The VAE encoder as an exported component (image-to-image): Optimum's `vae_encoder/` contract.

        sample (B, 3, H, W) in [-1, 1]  ->  latent_parameters (B, 2C, h, w): the latent distribution's mean, then its
        log-variance, as diffusers' `DiagonalGaussianDistribution.parameters` holds them. Optimum's img2img and inpainting
        pipelines read this output; shanshui takes the mean (the distribution's mode) times the VAE's scaling_factor.
    """
    import torch

    class VaeEncoder(torch.nn.Module):
        def __init__(self, vae):
            super().__init__()
            self.m = vae

        def forward(self, sample):  # (B, 3, H, W)
            return self.m.encode(sample, return_dict=False)[0].parameters  # (B, 2C, h, w)

    return VaeEncoder(vae)


def to_tensor(images: np.ndarray):
    """(B, H, W, 3) uint8 → (B, 3, H, W) float32 in [-1, 1]."""
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def reconstruct(vae, images: np.ndarray, device, batch: int = 16) -> np.ndarray:
    """Encode (posterior mean) and decode (N, H, W, 3) uint8 images; returns uint8."""
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = to_tensor(images[i : i + batch]).to(device)
            rec = vae.decode(vae.encode(x).latent_dist.mean).sample
            out.append(((rec.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(out)
