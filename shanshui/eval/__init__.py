"""Evaluation: does a model paint what its prompt says (an attribute classifier trained on renders), VAE\nreconstruction, the prompt swap. Used by `shanshui eval` and by the quantization gate."""
