"""Training: the architectures (arch.py), the VAE (vae.py), text encoder + U-Net (unet.py, text_pretrain.py), the\ncaption tokenizer, checkpoints and the shared training pieces (common.py)."""
