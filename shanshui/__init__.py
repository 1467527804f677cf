"""shanshui: text-to-image diffusion of Chinese landscape painting, from training to fast inference."""

__version__ = "0.1.0"
