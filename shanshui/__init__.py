"""shanshui: text-to-image diffusion of Chinese landscape painting, from training to fast inference."""

__version__ = "0.1.0"

import logging as _logging

# bitsandbytes (imported by diffusers/transformers whenever it is installed) warns on every import on CPUs with
# AVX512-BF16 that an optional 4-bit kernel package is missing; shanshui uses no 4-bit kernels.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
