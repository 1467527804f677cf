"""int8 weights for the PyTorch backend through bitsandbytes (LLM.int8: `Linear8bitLt`).

Every `nn.Linear` of the text encoder and the U-Net (attention projections, feed-forward, time embedding) is swapped
for a Linear8bitLt holding int8 row-wise quantized weights; activation outliers above `threshold` run in 16 bit
(mixed-precision decomposition). Convolutions have no bitsandbytes kernel and stay in their dtype, as does the
VAE. This halves (vs fp16) or quarters (vs fp32) the memory of the swapped layers; it is not a speed optimisation.
"""

from __future__ import annotations

from shanshui.errors import ShanshuiError

INT8_MODULES = ("text_encoder", "unet")
BNB_ALTERNATIVE = "or use the int8 ONNX export with ONNX Runtime: `shanshui export --precision int8`, then `shanshui generate -m EXPORT`"


def _import_bnb():
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise ShanshuiError(f"--precision int8 on the torch backend needs bitsandbytes: pip install 'shanshui[bnb]'; {BNB_ALTERNATIVE}") from None
    except Exception as e:  # bitsandbytes raises RuntimeError/OSError when it finds no usable native library
        raise ShanshuiError(f"bitsandbytes cannot run here ({str(e).splitlines()[0] if str(e) else type(e).__name__}); {BNB_ALTERNATIVE}") from None
    return bnb


def swap_linear(module, bnb, threshold: float) -> int:
    """Replace the nn.Linear layers under `module` (in place) with int8 Linear8bitLt; returns how many."""
    import torch

    count = 0
    for name, child in list(module.named_children()):
        if type(child) is torch.nn.Linear:
            q = bnb.nn.Linear8bitLt(child.in_features, child.out_features, bias=child.bias is not None,
                                    has_fp16_weights=False, threshold=threshold)
            q.weight = bnb.nn.Int8Params(child.weight.data.clone(), requires_grad=False, has_fp16_weights=False)
            if child.bias is not None:
                q.bias = torch.nn.Parameter(child.bias.data.clone(), requires_grad=False)
            setattr(module, name, q)
            count += 1
        else:
            count += swap_linear(child, bnb, threshold)
    return count


def to_int8(modules: dict, device: str, threshold: float = 6.0) -> dict:
    """Swap the Linear layers of modules['text_encoder'] and modules['unet'] to int8 on `device` (weights are quantized
    when moved there). Returns {module name: layers swapped}; raises ShanshuiError where bitsandbytes cannot run."""
    bnb = _import_bnb()
    swapped = {}
    for name in INT8_MODULES:
        if name not in modules:
            continue
        n = swap_linear(modules[name], bnb, threshold)
        try:
            modules[name].to(device)
        except Exception as e:  # e.g. no kernel for this device in this bitsandbytes build
            raise ShanshuiError(f"bitsandbytes cannot quantize on {device} ({str(e).splitlines()[0]}); {BNB_ALTERNATIVE}") from None
        swapped[name] = n
    return swapped
