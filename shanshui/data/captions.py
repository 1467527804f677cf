"""Bilingual captions (Chinese / English) generated from a `Scene`: exact, varied and seeded.

Every phrase carries the attribute facts it states as (attribute, value) keys, so a caption's claims can be
checked against the scene. Phrases exist only when true: "一棵青松" only for a single pine, "夕阳西下" only at
dusk. Template families: comma-separated four-character phrases (「一棵青松，青山环绕，云雾缭绕」), a titled
sentence ("An ink wash landscape: ..."), and a keyword list. Phrase choice, synonyms and order are drawn from the
rng passed in, so captions are reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shanshui.data.scene import Scene

LANGS = ("zh", "en")
Key = tuple[str, str]  # (attribute, value), e.g. ("water", "river"), ("tree", "pine"), ("tree_count", "pine:1")


@dataclass(frozen=True)
class Phrase:
    """Alternative wordings of one fact, in both languages, with the attribute keys they state."""

    group: str  # subject | mountains | water | mist | season | time | style | extra | format
    keys: frozenset[Key]
    zh: tuple[str, ...]
    en: tuple[str, ...]
    tag_zh: str  # short noun for the keyword family
    tag_en: str


def _p(group: str, keys, zh, en, tag_zh: str, tag_en: str) -> Phrase:
    return Phrase(group, frozenset(keys), tuple(zh), tuple(en), tag_zh, tag_en)


TREE_ZH = {"pine": "松树", "leafy": "杂树", "bare": "枯树", "willow": "垂柳"}
TREE_EN = {"pine": "pine trees", "leafy": "leafy trees", "bare": "bare trees", "willow": "willows"}


def _tree_phrases(scene: Scene) -> list[Phrase]:
    out = []
    total = sum(n for _, n in scene.trees)
    for kind, n in scene.trees:
        keys = {("tree", kind), ("tree_count", f"{kind}:{'1' if n == 1 else 'many'}")}
        one = n == 1
        if kind == "pine":
            zh = ["一棵青松", "一株苍松", "青松一棵"] if one else ["青松数株", "苍松几棵", "古松成林"]
            en = ["a lone green pine", "a single pine tree", "one old pine"] if one else ["green pines", "a few old pine trees", "a cluster of pines"]
            if one and total == 1:
                keys |= {("trees_total", "1")}
                zh += ["孤松挺立"]
                en += ["a solitary pine standing tall"]
        elif kind == "leafy":
            zh = ["一株杂树"] if one else ["杂树数株", "树木成丛"]
            en = ["a leafy tree"] if one else ["leafy trees", "a grove of broadleaf trees"]
            season_zh = {"spring": ("桃花盛开", "春树新绿"), "summer": ("绿树成荫", "夏木葱茏"), "autumn": ("红叶似火", "秋林尽染")}
            season_en = {"spring": ("trees in pink blossom", "fresh spring foliage"), "summer": ("lush green trees", "dense summer foliage"),
                         "autumn": ("trees in red and gold", "autumn leaves ablaze")}
            if scene.season in season_zh:
                out.append(_p("subject", {("tree", "leafy"), ("season", scene.season)}, season_zh[scene.season],
                              season_en[scene.season], TREE_ZH[kind], TREE_EN[kind]))
        elif kind == "bare":
            zh = ["一株枯树"] if one else ["枯树寒枝", "老树枯枝"]
            en = ["a bare tree"] if one else ["bare trees", "leafless old trees"]
        else:
            zh = ["一株垂柳"] if one else ["垂柳依依", "杨柳低垂"]
            en = ["a weeping willow"] if one else ["weeping willows", "drooping willows"]
        out.append(_p("subject", keys, zh, en, TREE_ZH[kind], TREE_EN[kind]))
    return out


def phrases(scene: Scene) -> list[Phrase]:
    """Every true phrase for the scene (the pool captions draw from)."""
    return _tree_phrases(scene) + _land_and_water(scene) + _things(scene) + _setting(scene)


def _land_and_water(s: Scene) -> list[Phrase]:
    out = []
    mtn = [("青山环绕", "surrounded by green mountains"), ("翠峰环抱", "embraced by emerald peaks"),
           ("远山连绵", "distant mountains stretching away"), ("群山环抱", "ringed by mountains")]
    out.append(_p("mountains", {("mountains", "yes")}, [a for a, _ in mtn], [b for _, b in mtn], "青山", "mountains"))
    if s.layers >= 3:
        out.append(_p("mountains", {("mountains", "yes"), ("layers", "many")}, ["重峦叠嶂", "层峦叠翠"],
                      ["layer upon layer of peaks", "ranges receding into the distance"], "重峦", "layered ranges"))
    if s.peak_shape == "steep":
        out.append(_p("mountains", {("peak_shape", "steep")}, ["奇峰耸立", "险峰突兀", "高峰入云"],
                      ["towering craggy peaks", "steep peaks rising high", "a soaring peak"], "奇峰", "steep peaks"))
    else:
        out.append(_p("mountains", {("peak_shape", "rounded")}, ["山峦起伏", "远山如黛"],
                      ["rolling rounded hills", "soft rounded mountains"], "山峦", "rolling hills"))
    if s.mist != "none":
        out.append(_p("mist", {("mist", "some")}, ["云雾缭绕", "烟雾缭绕", "云烟袅袅"],
                      ["wreathed in clouds and mist", "mist swirling around", "drifting clouds and mist"], "云雾", "mist"))
        if s.mist == "heavy":
            out.append(_p("mist", {("mist", "heavy")}, ["云雾弥漫", "云海茫茫"],
                          ["shrouded in heavy mist", "a sea of clouds"], "云海", "heavy mist"))
        else:
            out.append(_p("mist", {("mist", "light")}, ["薄雾轻笼", "淡烟轻雾"],
                          ["veiled in light mist", "a thin haze"], "薄雾", "light haze"))
    if s.water == "river":
        zh = ["江水悠悠", "溪流蜿蜒", "一江清水"] + (["一江春水"] if s.season == "spring" else [])
        out.append(_p("water", {("water", "river")}, zh, ["a winding river", "a river flowing below", "by the river"],
                      "江河", "river"))
    elif s.water == "lake":
        out.append(_p("water", {("water", "lake")}, ["湖光山色", "平湖如镜", "湖水平静"],
                      ["a calm lake", "a still lake like a mirror", "lake and mountains"], "湖泊", "lake"))
    return out


def _things(s: Scene) -> list[Phrase]:
    out = []
    if s.boat:
        zh = ["一叶扁舟", "小舟独钓", "孤舟蓑笠"] + (["渔舟唱晚"] if s.time == "dusk" else [])
        out.append(_p("subject", {("boat", "yes")}, zh, ["a small boat with a fisherman", "a lone boat with a figure",
                                                        "a fishing boat"], "小舟", "boat"))
    if s.waterfall:
        out.append(_p("extra", {("waterfall", "yes")}, ["飞瀑直下", "瀑布飞流"], ["a waterfall", "a waterfall plunging down"],
                      "瀑布", "waterfall"))
    bld = {"pavilion": (["山亭独立", "一座小亭", "亭台临水" if s.water != "none" else "亭台静立"],
                        ["a pavilion", "a small pavilion", "an open pavilion"], "亭子", "pavilion"),
           "house": (["茅屋数间", "山居人家", "草堂隐现"], ["a thatched cottage", "a small house", "a hermit's hut"], "茅屋", "house"),
           "pagoda": (["古塔矗立", "宝塔高耸"], ["an old pagoda", "a pagoda on the hill"], "古塔", "pagoda")}
    if s.building in bld:
        zh, en, tz, te = bld[s.building]
        out.append(_p("subject", {("building", s.building)}, zh, en, tz, te))
    if s.rocks:
        out.append(_p("extra", {("rocks", "yes")}, ["怪石嶙峋", "山石错落"], ["rugged rocks", "scattered rocks"], "山石", "rocks"))
    if s.birds:
        out.append(_p("extra", {("birds", "yes")}, ["飞鸟归林", "几只飞鸟"], ["birds in flight", "a few flying birds"], "飞鸟", "birds"))
    return out


def _setting(s: Scene) -> list[Phrase]:
    out = []
    season = {"spring": (["春山如笑", "春意盎然"], ["in spring", "a spring day"], "春"),
              "summer": (["夏山苍翠", "盛夏时节"], ["in summer", "a summer landscape"], "夏"),
              "autumn": (["秋色宜人", "深秋时节"], ["in autumn", "autumn colours"], "秋"),
              "winter": (["白雪皑皑", "雪满山头", "寒冬时节"], ["snowy winter", "snow-covered peaks", "in winter"], "冬雪")}[s.season]
    out.append(_p("season", {("season", s.season)}, season[0], season[1], season[2], s.season))
    time = {"day": (["晴日当空", "天朗气清"], ["on a clear day", "in daylight"], "白昼", "daytime"),
            "dawn": (["晨曦初露", "清晨薄明"], ["at dawn", "early morning light"], "清晨", "dawn"),
            "dusk": (["夕阳西下", "落日余晖"], ["at dusk", "a setting sun", "sunset glow"], "黄昏", "dusk"),
            "night": (["明月当空", "皓月千里", "月夜静谧"], ["under a bright moon", "a moonlit night", "the moon in the night sky"],
                      "月夜", "moonlit night")}[s.time]
    out.append(_p("time", {("time", s.time)}, time[0], time[1], time[2], time[3]))
    style = {"ink": (["水墨山水", "水墨淋漓"], ["ink wash painting", "Chinese ink landscape", "monochrome ink wash"], "水墨", "ink wash"),
             "blue_green": (["青绿山水", "青绿设色"], ["blue-green landscape", "blue and green mineral colours"], "青绿", "blue-green")}[s.style]
    out.append(_p("style", {("style", s.style)}, style[0], style[1], style[2], style[3]))
    fmt = {"square": (["斗方小景"], ["a square album leaf"], "斗方", "square"),
           "tall": (["立轴", "竖幅挂轴"], ["a hanging scroll", "a tall hanging scroll"], "立轴", "hanging scroll"),
           "wide": (["手卷", "横幅长卷"], ["a handscroll", "a long horizontal scroll"], "手卷", "handscroll")}[s.fmt]
    out.append(_p("format", {("format", s.fmt)}, fmt[0], fmt[1], fmt[2], fmt[3]))
    return out


KEEP = {"subject": 0.8, "mountains": 0.6, "water": 0.75, "mist": 0.7, "season": 0.5, "time": 0.45, "style": 0.4,
        "extra": 0.4, "format": 0.15}
SALIENT_ATTRS = ("mountains", "water", "boat", "tree", "building", "mist", "style", "season", "time")


def _choose(rng: np.random.Generator, pool: list[Phrase], full: bool) -> list[Phrase]:
    """Pick a subset of phrases (one per fact), shuffled, subjects usually first."""
    if full:
        picked = [p for p in pool if p.group != "format"]
    else:
        u = rng.random(len(pool))
        picked = [p for p, x in zip(pool, u) if x < KEEP[p.group]]
    seen: set[Key] = set()
    uniq = []  # drop phrases stating nothing new (e.g. two mist phrases)
    for i in rng.permutation(len(picked)):
        p = picked[int(i)]
        if not p.keys <= seen:
            uniq.append(p)
            seen |= p.keys
    if not full:  # short enough for a 77-token text encoder
        uniq = uniq[: int(rng.integers(2, 7))]
    if not any(p.group == "mountains" for p in uniq):
        uniq.append(next(p for p in pool if p.group == "mountains"))
    if len(uniq) < 2:
        rest = [p for p in pool if p not in uniq and p.group != "format"]
        uniq.append(rest[int(rng.integers(len(rest)))])
    if rng.random() < 0.7:  # subject first: 「一棵青松，青山环绕，…」
        uniq.sort(key=lambda p: p.group != "subject")
    return uniq


def _compose(chosen: list[Phrase], family: int, lang: str, rng: np.random.Generator) -> str:
    """Word the chosen phrases in one language and template family."""
    if family == 2:
        words = [p.tag_zh if lang == "zh" else p.tag_en for p in chosen]
        return "、".join(words) if lang == "zh" else ", ".join(words)
    opts = [p.zh if lang == "zh" else p.en for p in chosen]
    words = [o[int(rng.integers(len(o)))] for o in opts]
    if family == 0:
        return "，".join(words) if lang == "zh" else ", ".join(words)
    if lang == "zh":
        return f"{('山水画', '一幅山水画', '中国山水画')[int(rng.integers(3))]}：{'，'.join(words)}。"
    genre = ("A Chinese landscape painting", "A shan shui painting", "A traditional Chinese landscape")[int(rng.integers(3))]
    return f"{genre}: {', '.join(words)}."


def caption_pair(scene: Scene, rng: np.random.Generator, full: bool = False) -> tuple[str, str, frozenset[Key]]:
    """(zh, en, keys): both languages state the same facts in the same order; keys are those facts."""
    chosen = _choose(rng, phrases(scene), full)
    family = 0 if full else int(rng.choice(3, p=[0.5, 0.3, 0.2]))  # four-char / titled sentence / keywords
    keys = frozenset().union(*(p.keys for p in chosen))
    return _compose(chosen, family, "zh", rng), _compose(chosen, family, "en", rng), keys


def caption_with_keys(scene: Scene, lang: str, rng: np.random.Generator, full: bool = False) -> tuple[str, frozenset[Key]]:
    """A caption in `lang` ("zh" or "en") and the (attribute, value) facts it states; full=True states all of them."""
    if lang not in LANGS:
        raise ValueError(f"lang must be one of {LANGS}, not {lang!r}")
    chosen = _choose(rng, phrases(scene), full)
    family = 0 if full else int(rng.choice(3, p=[0.5, 0.3, 0.2]))
    keys = frozenset().union(*(p.keys for p in chosen))
    return _compose(chosen, family, lang, rng), keys


def caption(scene: Scene, lang: str, rng: np.random.Generator) -> str:
    """A caption of the scene in `lang` ("zh" or "en"), drawn with `rng`; every claim is true of the scene."""
    return caption_with_keys(scene, lang, rng)[0]


def captionable(scene: Scene) -> frozenset[Key]:
    """Every (attribute, value) fact some template can state about the scene."""
    return frozenset().union(*(p.keys for p in phrases(scene)))


def salient_keys(scene: Scene) -> frozenset[Key]:
    """The facts a caption must be able to state: mountains, water, boat, trees, building, mist, style, season, time."""
    keys = {("mountains", "yes"), ("style", scene.style), ("season", scene.season), ("time", scene.time)}
    if scene.water != "none":
        keys.add(("water", scene.water))
    if scene.boat:
        keys.add(("boat", "yes"))
    keys |= {("tree", k) for k in scene.tree_kinds}
    if scene.building != "none":
        keys.add(("building", scene.building))
    if scene.mist != "none":
        keys.add(("mist", "some"))
    return frozenset(keys)


def captions_for(scene: Scene, rng: np.random.Generator, p_empty: float = 0.0) -> tuple[str, str, frozenset[Key]]:
    """(text_zh, text_en, keys) for one image; with probability p_empty both are "" (classifier-free guidance)."""
    if p_empty > 0 and rng.random() < p_empty:
        return "", "", frozenset()
    return caption_pair(scene, rng)
