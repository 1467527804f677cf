"""Model architectures and `shanshui init`: random-weight diffusers pipelines.

tiny  the shanshui default: ~24.9 M parameters, 256×256 images, 32×32×4 latents, bilingual WordPiece tokenizer.
sd15  Stable Diffusion 1.5 shapes (860 M U-Net, CLIP-L-sized text encoder, SD VAE) to measure at real scale.
"""

from __future__ import annotations

import enum
import json
from pathlib import Path

from shanshui.errors import ShanshuiError
from shanshui.fsutil import atomic_dir
from shanshui.hf import quiet_hf
from shanshui.train.tokenizer import build_tokenizer, save_tokenizer
from shanshui.weights import save_text_encoder


class Arch(str, enum.Enum):
    tiny = "tiny"
    sd15 = "sd15"


ARCHS: dict[str, dict] = {
    "tiny": {
        "resolution": 256,
        "text_len": 64,
        "text_encoder": dict(
            vocab_size=4096, hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
            max_position_embeddings=64, projection_dim=256, hidden_act="gelu", pad_token_id=0, bos_token_id=2, eos_token_id=3,
        ),
        "unet": dict(
            sample_size=32, in_channels=4, out_channels=4, block_out_channels=(64, 128, 192), layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=256, attention_head_dim=(2, 4, 6), norm_num_groups=32,
            # an attention-pooled text embedding added to the time embedding: every ResNet block hears the prompt,
            # not only the cross-attention layers (issue 12's ablation); the U-Net keeps its three inputs
            addition_embed_type="text", addition_embed_type_num_heads=64,
        ),
        "vae": dict(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64, 128, 128), layers_per_block=1,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            # one group: the norms keep the channels' relative levels, so a painting's tint survives (issue 12's VAE
            # ablation: time of day read right in 0.83 of reconstructions with 1 group, 0.74 with 8, 0.69 with 32)
            norm_num_groups=1, sample_size=256, scaling_factor=0.18215,
        ),
        # zero terminal SNR + v-prediction (Lin et al. 2024): at t = 999 the model sees pure noise, so the colour and
        # light of the painting must come from the prompt, not from the starting noise; trailing spacing starts there
        # (steps_offset only shifts `leading` timesteps; 1 is what diffusers' pipelines expect, 0 makes them warn)
        "scheduler": dict(timestep_spacing="trailing", steps_offset=1, prediction_type="v_prediction", rescale_betas_zero_snr=True),
    },
    "sd15": {
        "resolution": 512,
        "text_len": 77,
        "text_encoder": dict(
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu", pad_token_id=0, bos_token_id=2, eos_token_id=3,
        ),
        "unet": dict(
            sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
        ),
        "vae": dict(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            norm_num_groups=32, sample_size=512, scaling_factor=0.18215,
        ),
        "scheduler": dict(timestep_spacing="leading", steps_offset=1, prediction_type="epsilon"),  # as SD 1.5 ships it
    },
}

MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "feature_extractor": [None, None],
    "image_encoder": [None, None],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "DDIMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def write_model_index(folder: Path) -> None:
    """model_index.json of a StableDiffusionPipeline with our component classes."""
    import diffusers

    index = {"_class_name": MODEL_INDEX["_class_name"], "_diffusers_version": diffusers.__version__}
    index.update({k: v for k, v in MODEL_INDEX.items() if k != "_class_name"})
    (Path(folder) / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def build_components(arch: str, seed: int = 0, unet_overrides: dict | None = None, scheduler_overrides: dict | None = None,
                     vae_overrides: dict | None = None):
    """(text_encoder, unet, vae, scheduler) with random weights for `arch`, in fp32 (overrides: for ablations)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    spec = ARCHS[arch]
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**spec["text_encoder"])).eval()
    unet = UNet2DConditionModel(**{**spec["unet"], **(unet_overrides or {})}).eval()
    vae = AutoencoderKL(**{**spec["vae"], **(vae_overrides or {})}).eval()
    scheduler = DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, **{**spec["scheduler"], **(scheduler_overrides or {})},
    )
    return text_encoder, unet, vae, scheduler


def count_parameters(*modules) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def init_model(arch: str, out: Path, seed: int = 0) -> dict:
    """Write a random-weight diffusers pipeline folder for `arch` at `out` (atomically). Returns a summary."""
    if arch not in ARCHS:
        raise ShanshuiError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ShanshuiError(f"{out} already exists and is not empty; choose a new folder")
    try:
        import diffusers  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        raise ShanshuiError("`shanshui init` needs the torch extra: pip install 'shanshui[torch]'") from None

    quiet_hf()
    spec = ARCHS[arch]
    text_encoder, unet, vae, scheduler = build_components(arch, seed)
    with atomic_dir(out) as tmp:
        save_text_encoder(text_encoder, tmp / "text_encoder")  # key names transformers 4.x and 5.x both read
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        vae.save_pretrained(tmp / "vae", safe_serialization=True)
        scheduler.save_pretrained(tmp / "scheduler")
        save_tokenizer(build_tokenizer(spec["text_len"]), tmp / "tokenizer", spec["text_len"])
        write_model_index(tmp)
        summary = {
            "arch": arch,
            "seed": seed,
            "resolution": spec["resolution"],
            "parameters": {
                "text_encoder": count_parameters(text_encoder),
                "unet": count_parameters(unet),
                "vae": count_parameters(vae),
            },
        }
        summary["parameters"]["total"] = sum(summary["parameters"].values())
        (tmp / "shanshui.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
