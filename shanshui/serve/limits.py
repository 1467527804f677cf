"""Input limits of the server that the CLI has no counterpart for. The CLI's own limits (steps, guidance, number of
images, size multiples, strength) are checked by Pipeline.validate, the same function `shanshui generate` calls."""

MAX_SIDE = 1024  # pixels, width or height (the shipped export's shape profile tops out at 1024)
MAX_PROMPT_CHARS = 2000  # prompt or negative prompt; the tokenizer keeps 64 tokens anyway
MAX_IMAGES = 16  # batch_size × n_iter, the CLI's --num-images ceiling
MAX_SEED = 2**32 - 1  # A1111's seed range; -1 means a random seed
MAX_BODY_BYTES = 8 * 1024 * 1024  # one JSON request, base64 init image included
MAX_UPLOAD_BYTES = 4 * 1024 * 1024  # one decoded init image (PNG/JPEG)
MAX_UPLOAD_PIXELS = 4096 * 4096  # one decoded init image, against decompression bombs
DEFAULT_MAX_QUEUE = 8  # jobs waiting behind the one being painted
DEFAULT_TIMEOUT_S = 600.0  # a request's wall-clock limit, queueing included
