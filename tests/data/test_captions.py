"""Captions: every stated fact is true of the scene, every salient element can be stated, both languages."""

import numpy as np

from shanshui.data.captions import caption, caption_pair, caption_with_keys, captionable, captions_for, phrases, salient_keys
from shanshui.data.scene import Scene, sample_scene

SEEDS = range(300)


def is_true(scene: Scene, key: tuple[str, str]) -> bool:
    """Check a stated fact against the scene's attributes, independently of the captioner."""
    attr, value = key
    a = scene.attributes()
    trees = a["trees"]
    if attr == "mountains":
        return a["layers"] >= 1
    if attr == "layers":
        return value == "many" and a["layers"] >= 3
    if attr == "mist":
        return a["mist"] != "none" if value == "some" else a["mist"] == value
    if attr in ("boat", "waterfall"):
        return a[attr] is True and value == "yes"
    if attr in ("rocks", "birds"):
        return a[attr] > 0 and value == "yes"
    if attr == "tree":
        return value in trees
    if attr == "tree_count":
        kind, n = value.split(":")
        return kind in trees and (trees[kind] == 1 if n == "1" else trees[kind] >= 2)
    if attr == "trees_total":
        return sum(trees.values()) == int(value)
    if attr == "format":
        return a["fmt"] == value
    return a[attr] == value  # style, season, time, water, building, peak_shape


def test_every_stated_fact_is_true():
    for seed in SEEDS:
        scene = sample_scene(seed)
        rng = np.random.default_rng(seed)
        for _ in range(4):
            zh, en, keys = caption_pair(scene, rng)
            assert zh and en
            bad = [k for k in keys if not is_true(scene, k)]
            assert not bad, (seed, zh, bad)
        for p in phrases(scene):
            assert all(is_true(scene, k) for k in p.keys), (seed, p)


def test_every_salient_element_is_captionable():
    for seed in SEEDS:
        scene = sample_scene(seed)
        must = salient_keys(scene)
        assert must <= captionable(scene), (seed, must - captionable(scene))
        _, keys = caption_with_keys(scene, "zh", np.random.default_rng(0), full=True)
        assert must <= keys, (seed, must - keys)
        for key in must:  # and plain sampling reaches each of them
            rng = np.random.default_rng(seed)
            assert any(key in caption_with_keys(scene, "en", rng)[1] for _ in range(60)), (seed, key)


def test_both_languages_and_empty_share():
    rng = np.random.default_rng(1)
    texts = [captions_for(sample_scene(s), rng, p_empty=0.1)[:2] for s in range(1000)]
    empty = sum(1 for zh, en in texts if zh == "" and en == "")
    assert all((zh == "") == (en == "") for zh, en in texts)  # empty together, never one side only
    assert 60 <= empty <= 140
    full = [(zh, en) for zh, en in texts if zh]
    assert all(any("\u4e00" <= c <= "\u9fff" for c in zh) for zh, _ in full)
    assert all(en.isascii() for _, en in full)


def test_seeded_and_varied():
    scene = sample_scene(11)
    a = [caption(scene, "zh", np.random.default_rng(5)) for _ in range(2)]
    assert a[0] == a[1]
    assert len({caption(scene, "zh", np.random.default_rng(i)) for i in range(40)}) > 20


def test_the_readme_prompt_is_sayable():
    base = sample_scene(0)
    scene = Scene(**{**base.__dict__, "trees": (("pine", 1),), "mist": "heavy"})
    pool = {zh for p in phrases(scene) for zh in p.zh}
    assert {"一棵青松", "青山环绕", "云雾缭绕"} <= pool
    en_pool = {en for p in phrases(scene) for en in p.en}
    assert {"a lone green pine", "surrounded by green mountains", "wreathed in clouds and mist"} <= en_pool
    seen = [caption(scene, "zh", np.random.default_rng(i)) for i in range(400)]
    assert any(s.startswith("一棵青松，") and "，" in s for s in seen)
