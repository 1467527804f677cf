"""Training on CPU with tiny configs: losses fall on a fixed batch, runs resume, checkpoints are safetensors only."""

import json

import numpy as np
import pytest

from shanshui.errors import ShanshuiError


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """12 small paintings-like images (smooth gradients with blobs) in the imagefolder convention."""
    from PIL import Image

    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64] / 63.0
    with open(root / "metadata.jsonl", "w", encoding="utf-8") as f:
        for i in range(12):
            base = 200 - 80 * yy[..., None] * rng.uniform(0.5, 1.0, 3)
            cy, cx = rng.uniform(0.2, 0.8, 2)
            blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.02)[..., None] * rng.uniform(-120, -40, 3)
            Image.fromarray(np.clip(base + blob, 0, 255).astype(np.uint8)).save(root / f"{i:04d}.png")
            f.write(json.dumps({"file_name": f"{i:04d}.png", "text_zh": "青山" if i % 2 else "松树", "text_en": "mountain"}) + "\n")
    return root


def _optimise(loss_fn, params, steps: int = 8, lr: float = 1e-3) -> list[float]:
    """AdamW steps on a fixed batch; the loss before each step."""
    import torch

    opt = torch.optim.AdamW(params, lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_vae_loss_falls_on_a_fixed_batch():
    import torch

    from shanshui.train.arch import build_components
    from shanshui.train.vae import vae_loss

    _, _, vae, _ = build_components("tiny", seed=0)
    torch.manual_seed(0)
    batch = torch.rand(2, 3, 32, 32) * 2 - 1
    def step():
        torch.manual_seed(1)  # the same posterior sample every step
        return vae_loss(vae, batch, 1e-6, colour_weight=2.0, edge_weight=0.5)[0]

    losses = _optimise(step, vae.parameters(), steps=9, lr=3e-4)
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.9 * losses[0], losses
    assert np.mean(losses[-3:]) < np.mean(losses[3:6]) < np.mean(losses[:3]), losses  # falling, third by third


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_diffusion_loss_falls_on_a_fixed_batch(prediction_type):
    """The shipped recipe (v-prediction, zero terminal SNR, t = 999 included) and plain ε both learn a fixed batch."""
    import torch

    from shanshui.train.arch import build_components
    from shanshui.train.unet import diffusion_loss

    te, unet, _, sched = build_components("tiny", seed=0)
    assert sched.config.prediction_type == "v_prediction" and sched.config.rescale_betas_zero_snr
    te.train(), unet.train()
    torch.manual_seed(0)
    lat = torch.randn(2, 4, 8, 8)
    noise = torch.randn(2, 4, 8, 8)
    ids = torch.randint(0, 600, (2, 64))
    t = torch.tensor([100, 700]) if prediction_type == "epsilon" else torch.tensor([100, 999])
    ac = torch.tensor(np.cumprod(1 - sched.betas.numpy()), dtype=torch.float32)
    assert ac[-1] == 0  # zero terminal SNR: the last step is pure noise
    loss = lambda: diffusion_loss(te, unet, lat, ids, noise, t, ac, prediction_type=prediction_type)  # noqa: E731
    losses = _optimise(loss, list(te.parameters()) + list(unet.parameters()))
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0], losses


def test_text_pretraining_learns_caption_attributes():
    """A few steps of attribute pre-training lift the text encoder's held-out accuracy above an untrained one's."""
    import torch

    from shanshui.train import text_pretrain as tp
    from shanshui.train.arch import build_components
    from shanshui.train.tokenizer import build_tokenizer

    texts, masks = tp.caption_targets(50)
    assert len(texts) == 50 and all(m.shape[0] == 50 for m in masks.values())
    assert masks["time"].any(1).sum() > 5 and (masks["time"].sum(1) <= 1).all()  # a time phrase names one time
    te, *_ = build_components("tiny", seed=0)
    tok_json = build_tokenizer(64, 4096, texts + tp.caption_targets(400, base=5)[0])
    torch.manual_seed(0)
    report = tp.pretrain_text_encoder(te, _Tok(tok_json), steps=60, batch=32, lr=1e-3)
    acc = report["held_out_accuracy"]
    assert np.isfinite(report["final_loss"])
    assert acc["time"] > 0.5 and acc["style"] > 0.7, acc  # chance: 0.25 and 0.5


class _Tok:
    """A `tokenizers` object called like the runtime's PromptTokenizer: texts → (ids (N, L) int64, truncated)."""

    def __init__(self, tok):
        self.tok = tok

    def __call__(self, texts):
        enc = self.tok.encode_batch(texts)
        return np.array([e.ids for e in enc], np.int64), [False] * len(texts)


def test_vae_training_runs_and_resumes(image_folder, tmp_path):
    from shanshui.train.vae import VaeConfig, train_vae

    out = tmp_path / "vae"
    cfg = VaeConfig(size=64, crop=32, batch=2, steps=4, warmup=1, held_out=4, checkpoint_every=2)
    train_vae(image_folder, out, cfg)
    assert (out / "checkpoints" / "step-000004" / "vae.safetensors").is_file()
    cfg.steps = 6
    report = train_vae(image_folder, out, cfg)
    steps = [json.loads(line)["step"] for line in (out / "loss.jsonl").read_text().splitlines()]
    assert steps == [0, 3, 4, 5], steps  # the second run started at step 4
    assert json.loads((out / "config.json").read_text())["scaling_factor"] == report["scaling_factor"]
    assert np.isfinite(report["held_out_psnr_db"]) and 0 < report["held_out_ssim"] <= 1


def test_unet_training_writes_a_pipeline(image_folder, tmp_path):
    from shanshui.runtime.pipeline import Request, open_pipeline
    from shanshui.train.unet import UnetConfig, train_unet
    from shanshui.train.vae import VaeConfig, train_vae

    vae_dir = tmp_path / "vae"
    train_vae(image_folder, vae_dir, VaeConfig(size=64, crop=32, batch=2, steps=2, warmup=1, held_out=4))
    out = tmp_path / "model"
    cfg = UnetConfig(size=64, batch=2, steps=3, warmup=1, checkpoint_every=2, sample_every=3, sample_steps=2)
    summary = train_unet(image_folder, out, vae_dir, cfg)
    assert summary["steps"] == 3 and (out / "samples" / "step-000003.png").is_file()
    assert (out / "checkpoints" / "step-000003" / "ema.safetensors").is_file()
    losses = [json.loads(line)["loss"] for line in (out / "loss.jsonl").read_text().splitlines()]
    assert all(np.isfinite(losses))
    result = open_pipeline(out, backend="torch", device="cpu")(Request("青山", steps=2, height=64, width=64))
    assert result.images[0].shape == (64, 64, 3)
    tok = json.loads((out / "tokenizer" / "tokenizer.json").read_text())
    assert "青" in tok["model"]["vocab"] and "松" in tok["model"]["vocab"]  # the vocabulary of the captions

    # fine-tuning starts from the saved pipeline (its text encoder is stored in the prefixed key layout)
    from safetensors.numpy import load_file

    tuned = tmp_path / "tuned"
    train_unet(image_folder, tuned, vae_dir, UnetConfig(size=64, batch=2, steps=1, warmup=1, lr=1e-12, sample_every=0,
                                                         text_pretrain_steps=0, init_from=str(out)))
    for part, name in (("text_encoder", "model.safetensors"), ("unet", "diffusion_pytorch_model.safetensors")):
        before, after = load_file(out / part / name), load_file(tuned / part / name)
        assert before.keys() == after.keys()
        assert max(float(np.abs(before[k] - after[k]).max()) for k in before) < 1e-6, part
    for written in (tuned / "shanshui.json", tuned / "checkpoints" / "step-000001" / "state.json"):
        assert str(tmp_path) not in written.read_text(), written  # no absolute path of this machine


def test_resume_refuses_corrupt_and_pickle_checkpoints(tmp_path):
    import torch

    from shanshui.train.checkpoint import load_checkpoint, save_checkpoint

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    ckpt = save_checkpoint(tmp_path / "ck", 7, {"m": model}, opt)
    fresh = torch.nn.Linear(3, 2)
    fresh_opt = torch.optim.AdamW(fresh.parameters())
    assert load_checkpoint(ckpt, {"m": fresh}, fresh_opt)["step"] == 7
    assert torch.equal(fresh.weight, model.weight)
    assert torch.equal(fresh_opt.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])

    (ckpt / "m.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ShanshuiError, match="corrupt"):
        load_checkpoint(ckpt, {"m": fresh}, fresh_opt)
    (ckpt / "m.safetensors").unlink()
    (ckpt / "m.pt").write_bytes(b"\x80\x04pickle")
    with pytest.raises(ShanshuiError, match="pickle"):
        load_checkpoint(ckpt, {"m": fresh}, fresh_opt)
    with pytest.raises(ShanshuiError, match="pickle"):
        load_checkpoint(ckpt / "m.pt", {"m": fresh}, fresh_opt)


def test_fresh_captions_are_true_of_the_rendered_scene(tmp_path):
    """Rendered data: each visit draws a new caption from the painting's scene; other folders keep their own."""
    from shanshui.data.captions import captionable
    from shanshui.data.dataset import render_dataset
    from shanshui.eval.evaluate import targets_of, labels_of
    from shanshui.train.common import draw_caption, read_examples

    render_dataset(tmp_path / "data", count=3, size=64, seed=0, workers=1)
    examples = read_examples(tmp_path / "data")
    assert all(e.scene is not None for e in examples)
    rng = np.random.default_rng(0)
    for e in examples:
        fresh = {draw_caption(e, rng, True) for _ in range(30)}
        assert len(fresh) > 10 and any(c and "\u4e00" <= c[0] <= "\u9fff" for c in fresh)  # varied, both languages
        assert {draw_caption(e, rng, False) for _ in range(30)} <= set(e.captions)
    # every fact a fresh caption can state is one the scene's own phrases state
    from shanshui.data.captions import caption_with_keys

    scene = examples[0].scene
    for i in range(30):
        _, keys = caption_with_keys(scene, "en", np.random.default_rng(i))
        assert keys <= captionable(scene)
        labels = labels_of(scene)
        assert all(labels[k] in allowed for k, allowed in targets_of(keys, scene).items())


def test_vae_colour_term_sees_tint_and_edge_term_sees_lines():
    """A uniform tint is all colour and no edge; fine checkerboard noise is edge and (pooled away) no colour."""
    import torch

    from shanshui.train.vae import reconstruction_terms

    target = torch.zeros(2, 3, 32, 32)
    tint = reconstruction_terms(target + 0.1, target)
    assert abs(tint["colour"].item() - 0.01) < 1e-6 and tint["edge"].item() < 1e-7
    checker = (torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2 * 0.2 - 0.1  # (32, 32), zero mean per 8×8
    fine = reconstruction_terms(target + checker, target)
    assert fine["colour"].item() < 1e-9 and abs(fine["edge"].item() - 0.2) < 1e-6
    assert abs(fine["mse"].item() - tint["mse"].item()) < 1e-6  # same pixel error, told apart only by the new terms
