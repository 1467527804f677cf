"""Text-encoder pre-training on the scene attributes captions are written from (issue 12).

A text encoder learned from scratch through the diffusion loss alone hears almost nothing in a few thousand CPU
steps: its output for "a lake under the moon" stayed 11% away from the empty prompt's. The renderer knows exactly
which facts each caption states, so before the U-Net trains, the encoder learns to predict them: a masked mean of
its token states feeds one linear head per attribute, and the loss is the negative log of the probability given to
the classes the caption allows (a caption that says "mist" allows light or heavy; attributes it does not state
add nothing). Captions are drawn from scenes directly (no rendering), in both languages, so this costs minutes.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from shanshui.data.captions import caption_with_keys
from shanshui.data.scene import sample_scene, scene_seed
from shanshui.eval.evaluate import attribute_classes, targets_of

PRETRAIN_BASE = 940_004  # scene seeds for pre-training captions (no data set or eval range uses them)


def caption_targets(n: int, base: int = PRETRAIN_BASE) -> tuple[list[str], dict[str, np.ndarray]]:
    """n captions (alternating zh/en) and, per attribute, a (n, classes) bool mask of the classes each allows."""

    classes = attribute_classes()
    texts: list[str] = []
    masks = {k: np.zeros((n, len(v)), bool) for k, v in classes.items()}
    for i in range(n):
        scene = sample_scene(scene_seed(base, i))
        text, keys = caption_with_keys(scene, ("zh", "en")[i % 2], np.random.default_rng([base, i]))
        texts.append(text)
        for attr, allowed in targets_of(keys, scene).items():
            masks[attr][i, sorted(allowed)] = True
    return texts, masks


def trim_padding(ids, pad_id: int = 0):
    """Drop the pad columns after the longest caption: CLIP's text model is causal, so real tokens' states are unchanged
    and a batch of 20-token captions costs a third of its 64-token padded length."""
    longest = int((ids != pad_id).sum(1).max())
    return ids[:, : max(longest, 1)]


def pooled(hidden, ids, pad_id: int = 0):
    """Mean of the token states (B, L, D) over non-pad tokens → (B, D)."""
    keep = (ids != pad_id).unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
    return (hidden * keep).sum(1) / keep.sum(1).clamp(min=1)


def allowed_nll(logits, allowed):
    """Mean over rows with a target of −log Σ_{allowed} softmax(logits); None when no row has one."""
    import torch

    rows = allowed.any(1)
    if not bool(rows.any()):
        return None
    logits, allowed = logits[rows].float(), allowed[rows]
    masked = logits.masked_fill(~allowed, float("-inf"))
    return (torch.logsumexp(logits, 1) - torch.logsumexp(masked, 1)).mean()


def pretrain_text_encoder(text_encoder, tokenizer, steps: int, batch: int = 64, lr: float = 5e-4, seed: int = 0,
                          device="cpu", progress: Callable[[int, int, float], None] | None = None) -> dict:
    """Train `text_encoder` in place to state its caption's attributes; returns held-out accuracy per attribute."""
    import torch
    from torch import nn

    classes_n = {k: v.shape[1] for k, v in caption_targets(1)[1].items()}
    texts, masks = caption_targets(min(40_000, max(4 * batch, steps * batch // 4)))
    held_texts, held_masks = caption_targets(1000, base=PRETRAIN_BASE + 1)
    dim = text_encoder.config.hidden_size
    torch.manual_seed(seed)
    heads = nn.ModuleDict({k: nn.Linear(dim, n) for k, n in classes_n.items()}).to(device)
    params = list(text_encoder.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    ids_all = torch.from_numpy(tokenizer(texts)[0])  # (N, L)
    mask_all = {k: torch.from_numpy(v) for k, v in masks.items()}
    rng = np.random.default_rng(seed)
    text_encoder.train()
    loss_value = float("nan")
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * step / steps)))
        idx = torch.from_numpy(rng.integers(0, len(texts), batch))
        ids = trim_padding(ids_all[idx]).to(device)
        feats = pooled(text_encoder(ids).last_hidden_state, ids)  # (B, D)
        losses = [loss for k, head in heads.items() if (loss := allowed_nll(head(feats), mask_all[k][idx].to(device))) is not None]
        loss = torch.stack(losses).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        loss_value = float(loss.item())
        if progress:
            progress(step + 1, steps, loss_value)
    text_encoder.eval()
    return {"steps": steps, "batch": batch, "final_loss": round(loss_value, 4),
            "held_out_accuracy": held_out_accuracy(text_encoder, heads, tokenizer, held_texts, held_masks, device)}


def held_out_accuracy(text_encoder, heads, tokenizer, texts: list[str], masks: dict[str, np.ndarray], device) -> dict:
    """Per attribute: how often the arg-max class is one the caption allows, over captions that state it."""
    import torch

    with torch.no_grad():
        ids = trim_padding(torch.from_numpy(tokenizer(texts)[0])).to(device)
        feats = pooled(text_encoder(ids).last_hidden_state, ids)
        out = {}
        for k, head in heads.items():
            rows = masks[k].any(1)
            if rows.any():
                pred = head(feats).argmax(1).cpu().numpy()
                out[k] = round(float(np.mean(masks[k][np.arange(len(texts)), pred][rows])), 3)
    return out
