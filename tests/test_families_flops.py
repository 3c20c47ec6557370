"""Per-family analytic FLOPs (profiling.flops, FamilyShape) against FlopCounterMode on the tiny hub-layout
checkpoints of LLaVA-NeXT, LLaVA-OneVision and Qwen2.5-VL: whole prefill forward and the vision + projector part, at
the full budget and with a reducer at the LLM input; named 7B shapes; an image's visual tokens from the config equal the
processor's; `profile --shape FAMILY --analytic` prints family_prefill_flops."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vistog_bench.cli import main as cli_main
from vistog_bench.errors import UsageError
from vistog_bench.model import load_checkpoint
from vistog_bench.model.families import find_family, image_token_id
from vistog_bench.model.presets import FAMILY_PRESETS, family_preset_config
from vistog_bench.profiling.counting import flop_counter
from vistog_bench.profiling.flops import (
    FamilyShape,
    family_image_geometry,
    family_prefill_flops,
    qwen_window_sizes,
)
from vistog_bench.reducers.families import apply_family_method
from vistog_bench.testing.hub_checkpoints_families import write_family_layouts

NAMES = {"llava-next": "llava_next", "llava-onevision": "llava_onevision", "qwen2.5-vl": "qwen2_5_vl"}


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    return write_family_layouts(tmp_path_factory.mktemp("families-flops"))


def _inputs(processor, size):
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (*size, 3), dtype=np.uint8))
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}],
        add_generation_prompt=True,
    )
    return processor(images=image, text=prompt, return_tensors="pt")


def _geometry(name, inputs):
    if name == "qwen2.5-vl":
        _, h, w = inputs["image_grid_thw"][0].tolist()
        return {"grid": (h, w)}
    return {"views": inputs["pixel_values"].shape[1]}


def _counted(fn) -> int:
    counter = flop_counter()
    with counter, torch.inference_mode():
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [(300, 400), (336, 700)])
def test_counted_equals_analytic_at_full_budget(layouts, name, size):
    model, processor = load_checkpoint(layouts[name])
    inputs = _inputs(processor, size)
    visual = int((inputs["input_ids"] == image_token_id(model)).sum())
    text = inputs["input_ids"].shape[1] - visual
    analytic = family_prefill_flops(
        FamilyShape.from_config(model.config), visual_tokens=visual, text_tokens=text, **_geometry(name, inputs)
    )
    assert _counted(lambda: model(**inputs, logits_to_keep=1)) == analytic["total"]

    def encode():
        if name == "qwen2.5-vl":
            return model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
        return model.model.get_image_features(
            inputs["pixel_values"],
            inputs["image_sizes"],
            vision_feature_layer=model.config.vision_feature_layer,
            vision_feature_select_strategy=model.config.vision_feature_select_strategy,
        )

    assert _counted(encode) == analytic["vision"] + analytic["projector"]


@pytest.mark.parametrize("name,budget", [("llava-next", 300), ("llava-onevision", 400), ("qwen2.5-vl", 25)])
def test_counted_equals_analytic_with_a_reducer(layouts, name, budget):
    model, processor = load_checkpoint(layouts[name])
    inputs = _inputs(processor, (300, 400))
    visual = int((inputs["input_ids"] == image_token_id(model)).sum())
    text = inputs["input_ids"].shape[1] - visual
    apply_family_method(model, "random", budget)
    kept = find_family(NAMES[name]).kept_tokens(budget, visual)
    shape = FamilyShape.from_config(model.config)
    reduced = family_prefill_flops(shape, visual_tokens=kept, text_tokens=text, **_geometry(name, inputs))
    full = family_prefill_flops(shape, visual_tokens=visual, text_tokens=text, **_geometry(name, inputs))
    assert _counted(lambda: model(**inputs, logits_to_keep=1)) == reduced["total"] < full["total"]


def test_qwen_windows_cover_the_grid():
    # 112 px windows = 4 x 4 merged units = 8 x 8 patches; a 22 x 28 grid: 11 x 14 units -> 3 x 4 windows
    sizes = qwen_window_sizes(22, 28, 4)
    assert len(sizes) == 12 and sum(sizes) == 22 * 28 and max(sizes) == 64 and min(sizes) == 3 * 2 * 4


def test_named_7b_shapes():
    assert set(FAMILY_PRESETS) == {"llava-next-7b", "llava-onevision-7b", "qwen2.5-vl-7b"}
    shapes = {name: FamilyShape.from_config(family_preset_config(name)) for name in FAMILY_PRESETS}
    assert shapes["llava-next-7b"].patches_per_view == 576 and shapes["llava-next-7b"].cls_token
    assert shapes["llava-onevision-7b"].patches_per_view == 729 and shapes["llava-onevision-7b"].vision_layers == 26
    qwen = shapes["qwen2.5-vl-7b"]
    assert qwen.full_attention_layers == (7, 15, 23, 31) and qwen.window_units == 4 and qwen.llm.width == 3584
    with pytest.raises(UsageError, match="did you mean 'qwen2.5-vl-7b'"):
        family_preset_config("qwen2.5-vl-7")


# -- an image's geometry from the config; `profile --shape FAMILY --analytic` -----------------------------------------
GEOMETRY_SIZES = [(300, 400), (336, 336), (200, 500), (1038, 1536), (1000, 90), (50, 60), (2304, 2304)]


@pytest.mark.parametrize("name", NAMES)
def test_image_geometry_equals_the_processors_count(layouts, name):
    model, processor = load_checkpoint(layouts[name])
    for size in GEOMETRY_SIZES:
        inputs = _inputs(processor, size)
        tokens = int((inputs["input_ids"] == image_token_id(model)).sum())
        geometry = family_image_geometry(model.config, *size)
        assert geometry.tokens == tokens, size
        if name == "qwen2.5-vl":
            assert geometry.views == 1 and {"grid": geometry.grid} == _geometry(name, inputs), size
        else:
            assert geometry.grid is None and {"views": geometry.views} == _geometry(name, inputs), size


def test_most_image_tokens_bounds_every_image():
    next_config, onevision = family_preset_config("llava-next-7b"), family_preset_config("llava-onevision-7b")
    # NeXT: 576 base + a 672 x 672 image's 48 x 48 grid + 48 newlines, reached by that image
    most = find_family("llava_next").most_image_tokens(next_config)
    assert most == 576 + 48 * 48 + 48 == family_image_geometry(next_config, 672, 672).tokens
    sizes = [(h, w) for h in range(64, 2600, 97) for w in range(64, 2600, 89)]
    for config in (next_config, onevision):
        most = find_family(config.model_type).most_image_tokens(config)
        assert max(family_image_geometry(config, h, w).tokens for h, w in sizes) <= most


def _profile(capsys, *argv):
    code = cli_main(["profile", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(
    "shape,size,budgets",
    [
        ("llava-next-7b", "672x672", "2928,576"),
        ("llava-onevision-7b", "1008x672", "640"),
        ("qwen2.5-vl-7b", "448", "100,25"),
    ],
)
def test_profile_analytic_family_shape_prints_family_prefill_flops(tmp_path, capsys, shape, size, budgets):
    code, out, err = _profile(
        capsys,
        "--shape",
        shape,
        "--analytic",
        "--budgets",
        budgets,
        "--image-size",
        size,
        "--text-tokens",
        "32",
        "--output",
        str(tmp_path),
    )
    assert code == 0, err
    config = family_preset_config(shape)
    family = find_family(config.model_type)
    height, width = (int(v) for v in (size.split("x") * 2)[:2])
    geometry = family_image_geometry(config, height, width)
    assert f"one {height} x {width} px (H x W) image" in out
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines() if line.startswith("| ")][1:]
    assert [int(r[0]) for r in rows] == [int(b) for b in budgets.split(",")]
    for row in rows:
        kept = family.kept_tokens(int(row[0]), geometry.tokens)
        expected = family_prefill_flops(
            FamilyShape.from_config(config),
            visual_tokens=kept,
            text_tokens=32,
            views=geometry.views,
            grid=geometry.grid,
        )
        assert row[1] == f"{kept} of {geometry.tokens}"
        assert [float(v) for v in row[2:6]] == [
            round(expected[k] / 1e12, 3) for k in ("vision", "projector", "prefill", "total")
        ]
    (run,) = list(tmp_path.iterdir())
    records = [json.loads(line) for line in (run / "profile.jsonl").read_text().splitlines()]
    assert [r["flops"]["prefill"] for r in records] == [
        family_prefill_flops(
            FamilyShape.from_config(config),
            visual_tokens=family.kept_tokens(r["budget"], geometry.tokens),
            text_tokens=32,
            views=geometry.views,
            grid=geometry.grid,
        )["prefill"]
        for r in records
    ]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--shape", "llava-next-8b", "--analytic"], "unknown shape 'llava-next-8b' (did you mean 'llava-next-7b'?)"),
        (
            ["--shape", "qwen2.5-vl-7b", "--analytic", "--budgets", "150"],
            "percentage of each image's own visual tokens",
        ),
        (["--shape", "llava-next-7b"], "family shapes give analytic figures only; add --analytic"),
        (["--shape", "llava-next-7b", "--analytic", "--image-size", "672x"], "--image-size 672x: give height x width"),
        (["--shape", "tiny", "--analytic", "--image-size", "672"], "--image-size applies to the family shapes"),
    ],
)
def test_profile_family_shape_bad_input_is_one_line(tmp_path, capsys, argv, message):
    code, out, err = _profile(capsys, *argv, "--output", str(tmp_path))
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err and not out
    assert not any(tmp_path.iterdir())
