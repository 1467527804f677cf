"""Shape buckets, optimisation profiles from the contract, precision modes and cache keys: pure Python, no GPU."""

import re

import pytest

from shanshui.engines.plan import (
    Bucket, choose_profile, describe_change, engine_key, is_static, key_id, network_mode, parse_buckets, profiles,
    shapes_label,
)
from shanshui.errors import ShanshuiError
from shanshui.spec.contract import ModelDims, ShapeSettings, components

DIMS = ModelDims(text_len=64, text_dim=256, vocab_size=4096, latent_channels=4, vae_scale=8, size_multiple=32)
SHAPES = ShapeSettings(height=256, width=256, min_size=128, max_size=1024, max_batch=2)
SPECS = components(DIMS)
ENV = {"tensorrt": "10.3.0", "gpu": {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}}


def test_default_bucket_is_one_image_at_the_export_size():
    assert parse_buckets(None, DIMS, SHAPES) == [Bucket(1, 256, 256)]
    assert parse_buckets("  ", DIMS, SHAPES) == [Bucket(1, 256, 256)]
    assert parse_buckets(None, DIMS, ShapeSettings(height=512, width=384)) == [Bucket(1, 512, 384)]


def test_buckets_parse_in_order_without_duplicates():
    got = parse_buckets("2x256x256, 1x512X384,2x256x256", DIMS, SHAPES)
    assert got == [Bucket(2, 256, 256), Bucket(1, 512, 384)]
    assert [str(b) for b in got] == ["2x256x256", "1x512x384"]
    assert shapes_label(got, dynamic=False) == "1x512x384,2x256x256"  # static: one canonical order
    assert shapes_label(got, dynamic=True) == "dynamic (opt 2x256x256)"  # dynamic: the first is the optimum
    assert profiles(SPECS["unet"], DIMS, SHAPES, got, False) == profiles(SPECS["unet"], DIMS, SHAPES, got[::-1], False)


@pytest.mark.parametrize("text,fragment", [
    ("256x256", "is not NxHxW"),
    ("1x256x256,", "is not NxHxW"),
    ("axbxc", "is not NxHxW"),
    ("0x256x256", "images per call must be 1..2"),
    ("3x256x256", "re-export with a larger --max-batch"),
    ("1x250x256", "height 250 must be a multiple of 32"),
    ("1x256x200", "width 200 must be a multiple of 32"),
    ("1x96x256", "outside the exported range 128..1024"),
    ("1x256x2048", "outside the exported range 128..1024"),
])
def test_bad_buckets_are_refused(text, fragment):
    with pytest.raises(ShanshuiError, match=re.escape(fragment)):
        parse_buckets(text, DIMS, SHAPES)


def test_static_profiles_follow_the_contract_per_bucket():
    buckets = [Bucket(1, 256, 256), Bucket(1, 512, 384), Bucket(2, 256, 256)]
    te = profiles(SPECS["text_encoder"], DIMS, SHAPES, buckets, dynamic=False)
    assert te == [{"input_ids": [[2, 64]] * 3}, {"input_ids": [[4, 64]] * 3}]  # the text encoder sees only the batch
    unet = profiles(SPECS["unet"], DIMS, SHAPES, buckets, dynamic=False)
    assert len(unet) == 3 and all(is_static(p) for p in unet)
    assert unet[1] == {"sample": [[2, 4, 64, 48]] * 3, "timestep": [[2]] * 3, "encoder_hidden_states": [[2, 64, 256]] * 3}
    assert unet[2]["sample"][0] == [4, 4, 32, 32]
    vae = profiles(SPECS["vae_decoder"], DIMS, SHAPES, buckets, dynamic=False)
    assert [p["latent_sample"][0] for p in vae] == [[1, 4, 32, 32], [1, 4, 64, 48], [2, 4, 32, 32]]


def test_dynamic_profile_spans_the_contract_ranges():
    for name, spec in SPECS.items():
        contract = spec.profile(DIMS, SHAPES)
        (dyn,) = profiles(spec, DIMS, SHAPES, [Bucket(1, 256, 256)], dynamic=True)
        assert not is_static(dyn)
        for inp, (lo, opt, hi) in dyn.items():
            assert (tuple(lo), tuple(opt), tuple(hi)) == contract[inp], (name, inp)
    (dyn,) = profiles(SPECS["unet"], DIMS, SHAPES, [Bucket(2, 512, 384)], dynamic=True)
    assert dyn["sample"] == [[1, 4, 16, 16], [4, 4, 64, 48], [4, 4, 128, 128]]  # opt at the first bucket


def test_choose_profile_exact_then_padded_batch():
    profs = profiles(SPECS["unet"], DIMS, SHAPES, [Bucket(2, 256, 256), Bucket(1, 256, 256), Bucket(1, 512, 512)], False)
    shapes = lambda b, h: {"sample": (b, 4, h, h), "timestep": (b,), "encoder_hidden_states": (b, 64, 256)}  # noqa: E731
    # profiles in canonical order: 1x256x256 (B2 = 2), 1x512x512, 2x256x256 (B2 = 4)
    assert choose_profile(profs, shapes(2, 32)) == (0, shapes(2, 32))  # exact fit
    assert choose_profile(profs, shapes(1, 32)) == (0, shapes(2, 32))  # guidance 1: padded to the smallest larger batch
    assert choose_profile(profs, shapes(3, 32)) == (2, shapes(4, 32))
    assert choose_profile(profs, shapes(4, 32)) == (2, shapes(4, 32))
    assert choose_profile(profs, shapes(1, 64)) == (1, shapes(2, 64))
    assert choose_profile(profs, shapes(2, 48)) is None  # a size no bucket has
    assert choose_profile(profs, shapes(8, 32)) is None  # a batch larger than any bucket's


def test_choose_profile_dynamic_range():
    profs = profiles(SPECS["vae_decoder"], DIMS, SHAPES, [Bucket(1, 256, 256)], dynamic=True)
    assert choose_profile(profs, {"latent_sample": (2, 4, 40, 24)}) == (0, {"latent_sample": (2, 4, 40, 24)})
    assert choose_profile(profs, {"latent_sample": (3, 4, 32, 32)}) is None
    assert choose_profile(profs, {"latent_sample": (1, 4, 8, 32)}) is None


@pytest.mark.parametrize("engine,export,graph,major,expect", [
    ("fp32", "fp32", "fp32", 10, {"graph": "fp32", "strongly_typed": True, "fp16_flag": False, "tf32": False}),
    ("fp16", "fp32", "fp32", 10, {"graph": "fp32", "strongly_typed": False, "fp16_flag": True, "tf32": True}),
    ("fp16", "fp16", "fp16", 10, {"graph": "fp16", "strongly_typed": True, "fp16_flag": False, "tf32": True}),
    ("fp16", "fp16", "fp16", 11, {"graph": "fp16", "strongly_typed": True, "fp16_flag": False, "tf32": True}),
    ("fp16", "fp16", "fp32", 11, {"graph": "fp32", "strongly_typed": True, "fp16_flag": False, "tf32": True}),
    ("int8", "int8", "int8", 10, {"graph": "int8", "strongly_typed": True, "fp16_flag": False, "tf32": True}),
    ("int8", "int8", "fp32", 10, {"graph": "fp32", "strongly_typed": False, "fp16_flag": True, "tf32": True}),
    ("int8", "int8", "fp32", 11, {"graph": "fp32", "strongly_typed": True, "fp16_flag": False, "tf32": True}),
])
def test_network_modes(engine, export, graph, major, expect):
    assert network_mode(engine, export, graph, major) == expect


@pytest.mark.parametrize("engine,export,major,fragment", [
    ("fp16", "fp32", 11, "TensorRT 11 builds fp16 engines only from an fp16 export"),
    ("int8", "fp32", 10, "int8 engines are built from an int8 (QDQ) export"),
    ("int8", "fp16", 10, "int8 engines are built from an int8 (QDQ) export"),
    ("fp16", "int8", 10, "this is an int8 export"),
    ("fp32", "fp16", 10, "this is an fp16 export"),
    ("bf16", "fp32", 10, "not available"),
])
def test_impossible_precisions_are_refused(engine, export, major, fragment):
    with pytest.raises(ShanshuiError, match=re.escape(fragment)):
        network_mode(engine, export, export, major)


def _key(**change):
    args = dict(component="unet", onnx_sha256="a" * 64, precision="fp16",
                mode=network_mode("fp16", "fp32", "fp32", 10), buckets=[Bucket(1, 256, 256)], env=ENV)
    args.update(change)
    profs = profiles(SPECS["unet"], DIMS, SHAPES, args["buckets"], False)
    return engine_key(args["component"], args["onnx_sha256"], args["precision"], args["mode"], profs, args["env"])


@pytest.mark.parametrize("change,reason", [
    ({"onnx_sha256": "b" * 64}, "the ONNX model changed"),
    ({"precision": "fp32", "mode": network_mode("fp32", "fp32", "fp32", 10)}, "precision fp16 → fp32"),
    ({"buckets": [Bucket(1, 256, 256), Bucket(2, 256, 256)]}, "shape profiles changed"),
    ({"env": {**ENV, "tensorrt": "10.4.0"}}, "TensorRT 10.3.0 → 10.4.0"),
    ({"env": {**ENV, "gpu": {"name": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"}}},
     "GPU NVIDIA H100 80GB HBM3 (sm_90) → NVIDIA A100-SXM4-80GB (sm_80)"),
    ({"env": {**ENV, "gpu": {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.1"}}}, "(sm_90) → NVIDIA H100 80GB HBM3 (sm_91)"),
])
def test_cache_key_changes_with_each_ingredient(change, reason):
    base, other = _key(), _key(**change)
    assert key_id(base) == key_id(_key())  # deterministic
    assert key_id(other) != key_id(base)
    assert reason in describe_change(base, other)
    assert describe_change(None, base) == "not built yet"
    if "buckets" in change:
        assert "shapes 1x256x256 → 1x256x256,2x256x256" in describe_change(base, other, "1x256x256", "1x256x256,2x256x256")
