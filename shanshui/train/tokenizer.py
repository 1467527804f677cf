"""The shanshui tokenizer: WordPiece over lower-cased English words and single Chinese characters.

Built with the `tokenizers` library only, so the torch-free runtime loads it from tokenizer.json. `train unet` learns
the vocabulary from its data set's captions; `shanshui init` (no data) from a seed corpus of landscape-painting phrases.
"""

from __future__ import annotations

from pathlib import Path

SPECIALS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]  # ids 0..3, in this order
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)

# Provisional seed corpus: the words captions of shan shui paintings use, in both languages.
SEED_ZH = """
一棵青松，青山环绕，云雾缭绕。 远山如黛，近水含烟。 水墨山水，青绿山水，浅绛山水。 春夏秋冬，春山，夏山，秋山，冬山，雪景。
清晨，黄昏，夜晚，月夜，夕阳，朝霞，晚霞。 松树，柳树，枫树，竹林，梅花，桃花，枯树，杂树，古木，树林。
高山，峻岭，峭壁，悬崖，山峰，群峰，远峰，丘陵，岩石，怪石，奇石，巨石。 江河，湖泊，溪流，瀑布，小溪，池塘，湖面，水面，涟漪，波纹。
渔舟，小船，扁舟，一叶扁舟，渔夫，船夫，行人，隐士，高士，樵夫，童子。 亭子，凉亭，草堂，茅屋，房屋，村舍，楼阁，宝塔，寺庙，桥，石桥，小桥。
云雾，薄雾，烟雨，山岚，白云，飞鸟，大雁，远帆。 竖幅立轴，横幅长卷，方形小品，纸本，绢本，淡墨，浓墨，皴法，留白。
一座，两座，三座，一只，一艘，几棵，数株，许多，连绵，起伏，环绕，缭绕，倒映，笼罩，掩映，隐现，坐落，静谧，幽深，苍翠，葱郁，萧瑟，宁静。
"""
SEED_EN = """
a lone green pine, surrounded by blue mountains, wreathed in clouds and mist. distant mountains like ink, near water veiled in haze.
ink wash landscape, blue-green landscape, light crimson landscape. spring summer autumn winter, snowy landscape, snow scene.
dawn, dusk, night, moonlit night, sunset, morning glow, evening glow. pine tree, willow, maple, bamboo grove, plum blossom, peach blossom,
bare tree, withered tree, old trees, forest. high mountains, steep ridges, cliffs, peaks, distant peaks, hills, rocks, strange rocks, boulders.
river, lake, stream, waterfall, creek, pond, lake surface, ripples, waves. fishing boat, small boat, skiff, fisherman, boatman, traveler,
hermit, scholar, woodcutter, servant boy. pavilion, thatched cottage, hut, houses, village, tower, pagoda, temple, bridge, stone bridge.
clouds, mist, fog, misty rain, white clouds, flying birds, wild geese, distant sails. hanging scroll, handscroll, square album leaf,
paper, silk, light ink, dark ink, texture strokes, empty space. one, two, three, a, an, the, several, many, with, and, in, on, under,
over, beside, among, behind, between, of, by, at, across, rolling, winding, reflected, shrouded, hidden, quiet, serene, deep, lush, misty,
tall, small, large, ancient, green, blue, red, white, black, gray, gold, golden, autumn colors, in the style of a chinese painting.
"""


def build_tokenizer(max_length: int, vocab_size: int = 4096, corpus: list[str] | None = None):
    """Train a WordPiece tokenizer; encodings are [BOS] tokens [EOS] padded with [PAD] to max_length."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=64))
    # handle_chinese_chars puts spaces around every CJK character, so each one becomes its own token
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=True, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, min_frequency=1, show_progress=False)
    lines = corpus if corpus is not None else [s for s in (SEED_ZH + SEED_EN).split("\n") if s.strip()]
    tok.train_from_iterator(lines, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A [EOS]", special_tokens=[("[BOS]", BOS_ID), ("[EOS]", EOS_ID)]
    )
    tok.enable_truncation(max_length=max_length)
    tok.enable_padding(length=max_length, pad_id=PAD_ID, pad_token="[PAD]")
    return tok


def save_tokenizer(tok, folder: Path, max_length: int) -> None:
    """tokenizer.json plus the transformers config, so PreTrainedTokenizerFast (and diffusers) load it too."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_length,
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
        "bos_token": "[BOS]",
        "eos_token": "[EOS]",
        "padding_side": "right",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    special = {"pad_token": "[PAD]", "unk_token": "[UNK]", "bos_token": "[BOS]", "eos_token": "[EOS]"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")
