"""Eval plumbing: which attributes a caption states, held-out prompts, the classifier, the report."""

import numpy as np

from shanshui.data.scene import sample_scene
from shanshui.train import evaluate as ev


def test_targets_follow_the_caption_facts():
    classes = ev.attribute_classes()
    scene = sample_scene(5)
    keys = {("style", "ink"), ("mist", "some"), ("tree", "pine"), ("season", "winter"), ("format", "square")}
    t = ev.targets_of(keys, scene)
    assert t["style"] == {classes["style"].index("ink")}
    assert t["mist"] == {classes["mist"].index("light"), classes["mist"].index("heavy")}
    assert t["pine"] == {1} and t["season"] == {classes["season"].index("winter")}
    assert "format" not in t and "water" not in t  # unstated or not classified


def test_held_out_prompts_are_true_to_their_scenes_and_bilingual():
    cases = ev.held_out_prompts(10)
    assert [lang for lang, _, _ in cases] == ["zh", "en"] * 5
    assert cases == ev.held_out_prompts(10)  # deterministic
    from shanshui.data.scene import scene_seed

    for i, (_, text, targets) in enumerate(cases):
        labels = ev.labels_of(sample_scene(scene_seed(ev.PROMPT_BASE, i), fmt="square"))
        assert text and all(labels[k] in allowed for k, allowed in targets.items())


def test_small_evaluation_report(tiny_model, tmp_path):
    report = ev.evaluate_model(tiny_model, prompts=4, steps=2, grid=tmp_path / "grid.png",
                               classifier={"n_train": 64, "n_test": 16, "epochs": 1, "cache": tmp_path / "cache"})
    assert set(report["attribute_accuracy"]) <= set(ev.attribute_classes())
    assert all(0 <= v <= 1 for v in report["attribute_accuracy"].values())
    assert all(0 <= v <= 1 for v in report["classifier_ceiling"].values())
    assert report["vae"]["images"] == 32 and np.isfinite(report["vae"]["psnr_db"])
    assert (tmp_path / "grid.png").is_file() and len(report["grid_prompts"]) == 4
    assert list((tmp_path / "cache").glob("attribute-classifier-*/model.safetensors"))  # cached for the next run
