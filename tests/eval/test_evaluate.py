"""Eval plumbing: which attributes a caption states, held-out prompts, the classifier, the report."""

import numpy as np

from shanshui.data.scene import sample_scene
from shanshui.eval import evaluate as ev


def test_targets_follow_the_caption_facts():
    classes = ev.attribute_classes()
    scene = sample_scene(5)
    keys = {("style", "ink"), ("mist", "some"), ("tree", "pine"), ("season", "winter"), ("format", "square")}
    t = ev.targets_of(keys, scene)
    assert t["style"] == {classes["style"].index("ink")}
    assert t["mist"] == {classes["mist"].index("light"), classes["mist"].index("heavy")}
    assert t["pine"] == {1} and t["season"] == {classes["season"].index("winter")}
    assert t["format"] == {classes["format"].index("square")}
    assert "water" not in t and "boat" not in t  # unstated


def test_held_out_prompts_are_true_to_their_scenes_and_bilingual():
    cases = ev.held_out_prompts(10)
    assert [lang for lang, _, _ in cases] == ["zh", "en"] * 5
    assert cases == ev.held_out_prompts(10)  # deterministic
    from shanshui.data.scene import scene_seed

    for i, (_, text, targets) in enumerate(cases):
        labels = ev.labels_of(sample_scene(scene_seed(ev.PROMPT_BASE, i)))
        assert text and all(labels[k] in allowed for k, allowed in targets.items())


def test_small_evaluation_report(tiny_model, tmp_path):
    report = ev.evaluate_model(tiny_model, prompts=4, steps=2, grid=tmp_path / "grid.png", vae_images=8, swap_seeds=0,
                               classifier={"n_train": 64, "n_test": 16, "epochs": 1, "cache": tmp_path / "cache"})
    assert set(report["attribute_accuracy"]) <= set(ev.attribute_classes())
    assert all(0 <= v <= 1 for v in report["attribute_accuracy"].values())
    assert all(0 <= v <= 1 for v in report["classifier_ceiling"].values())
    vae = report["vae"]
    assert vae["images"] == 8 and np.isfinite(vae["psnr_db"]) and len(vae["colour_shift_rgb"]) == 3
    assert set(vae["read_renders"]) == set(vae["read_reconstructions"]) == set(ev.attribute_classes())
    assert all(0 <= v <= 1 for v in vae["read_reconstructions"].values())
    assert "prompt_swap" not in report  # swap_seeds=0: the swap is its own test below
    assert (tmp_path / "grid.png").is_file() and len(report["grid_prompts"]) == 4
    assert list((tmp_path / "cache").glob("attribute-classifier-*/model.safetensors"))  # cached for the next run


def test_swap_prompts_differ_in_one_attribute_and_state_it():
    from shanshui.data.captions import phrases

    cases = ev.swap_prompts()
    classes = ev.attribute_classes()
    assert {a for a, *_ in cases} == set(ev.SWAP_VALUES) and all(v in classes[a] for a, v, *_ in cases)
    for attr, value, lang, text in cases:
        assert text.endswith(ev.SWAP_BASE[lang]) and text != ev.SWAP_BASE[lang]
    assert len({t for *_, t in cases}) == len(cases)  # no two values share a prompt
    assert any("夕阳西下" in t for *_, t in cases) and any("blue-green" in t for *_, t in cases)


class _TextCut:
    """The tiny model's components with the text path cut: every prompt encodes to the same zeros."""

    def __init__(self, parts):
        self.parts, self.unet, self.vae_decoder = parts, parts.unet, parts.vae_decoder

    def text_encoder(self, ids):
        return np.zeros_like(self.parts.text_encoder(ids))


def _swap(pipe, tmp_path):
    net = ev.build_classifier()  # untrained: the numbers' plumbing, not their values, is under test here
    ceiling = {k: 1.0 for k in ev.attribute_classes()}
    return ev.prompt_swap(pipe, net, ceiling, seeds=2, steps=2, langs=("zh",), grid=tmp_path / "swap.png")


def test_prompt_swap_reads_a_model_with_the_text_path_cut_as_insensitive(tiny_model, tmp_path):
    from shanshui.runtime.pipeline import open_pipeline

    pipe = open_pipeline(tiny_model, backend="torch", device="cpu")
    live = _swap(pipe, tmp_path)
    assert all(v > 1e-3 for v in live["effect_size"].values()), live["effect_size"]  # a random text path still moves ε
    pipe.components = _TextCut(pipe.components)
    cut = _swap(pipe, tmp_path)
    assert all(v == 0 for v in cut["effect_size"].values()), cut["effect_size"]
    # the same seed paints the same picture whatever the prompt: no contrast can hold, every attribute reads one class
    assert all(c["holds"] == 0 for c in cut["contrasts"].values()), cut["contrasts"]
    for attr, n in (("time", 4), ("season", 4), ("format", 3)):
        assert cut["accuracy"][attr] <= 1 / n + 1e-9, (attr, cut["accuracy"])
    assert (tmp_path / "swap.png").is_file() and len(cut["grid_rows"]) == 9
    assert 0 <= cut["mean_of_ceiling"] <= 1
