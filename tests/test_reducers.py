"""Training-free reducers on the tiny model: budgets, determinism, batch independence, FastV inside the LLM, errors."""

import pytest
import torch
from testers import random_images, tiny_llava

from vistog_bench.errors import UsageError
from vistog_bench.model import VisToGForConditionalGeneration, build_inputs, llava_prompt
from vistog_bench.reducers import (
    METHODS,
    applied_method,
    apply_method,
    pool_layout,
    remove_method,
    tokens_per_image,
)
from vistog_bench.reducers.tome import merge_schedule, merge_weighted_average

VISION_METHODS = ["pool", "random", "tome", "visionzip", "prumerge"]
BUDGETS = [192, 128, 64, 16]
FASTV_LAYER = 1  # the tiny LLM has 2 layers
P = 576


@pytest.fixture(scope="module")
def pixels(processor):
    return processor.image_processor(random_images(3, seed=5), return_tensors="pt")["pixel_values"]


def configure(model, method, budget, **options):
    if method == "fastv":
        options.setdefault("fastv_layer", FASTV_LAYER)
    apply_method(model, method, budget, **options)


def generate(model, processor, questions, images, new_tokens=4):
    inputs = build_inputs(processor, questions, images, tokens_per_image(model))
    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=new_tokens, do_sample=False, output_scores=True, return_dict_in_generate=True
        )
    return out.sequences[:, inputs["input_ids"].shape[1] :], torch.stack(out.scores, dim=1)  # [B, t], [B, t, V]


@pytest.mark.parametrize("method", VISION_METHODS)
def test_budget_tokens_per_image_and_determinism(model, pixels, method):
    for budget in BUDGETS:
        configure(model, method, budget)
        with torch.no_grad():
            first = model.visual_tokens(pixels)
            configure(model, method, budget)
            second = model.visual_tokens(pixels)
        assert first.shape == (3, budget, model.config.text_config.hidden_size)
        assert tokens_per_image(model) == budget
        torch.testing.assert_close(first, second, rtol=0, atol=0)


@pytest.mark.parametrize("method", VISION_METHODS)
def test_each_image_reduced_on_its_own(model, pixels, method):
    """Video frames are images of one batch: each frame's tokens must not depend on the others."""
    configure(model, method, 64)
    with torch.no_grad():
        together = model.visual_tokens(pixels)
        alone = torch.cat([model.visual_tokens(pixels[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", VISION_METHODS + ["fastv"])
def test_batch_of_two_answers_each_as_alone(model, processor, method):
    """Greedy generate: a left-padded batch (one sample with two video frames) gives each sample its own answer."""
    configure(model, method, 64)
    questions = [llava_prompt("what colour is the shape ?"), llava_prompt("which way does the shape move ?", 2)]
    images = [random_images(1, seed=1), random_images(2, seed=2)]
    batch_tokens, batch_scores = generate(model, processor, questions, images)
    for i in range(2):
        tokens, scores = generate(model, processor, questions[i : i + 1], images[i : i + 1])
        assert torch.equal(batch_tokens[i : i + 1], tokens)
        torch.testing.assert_close(batch_scores[i : i + 1], scores, rtol=1e-4, atol=1e-4)


def test_random_is_seeded_and_keeps_spatial_order(model, pixels):
    configure(model, "random", 16, seed=0)
    positions = model.model.token_reducer.positions
    assert torch.equal(positions, positions.sort().values) and positions.unique().numel() == 16
    configure(model, "random", 16, seed=1)
    assert not torch.equal(positions, model.model.token_reducer.positions)
    configure(model, "random", 16, seed=0)
    assert torch.equal(positions, model.model.token_reducer.positions)


def test_pool_layout_rule():
    assert pool_layout(64, 24) == (8, 8)
    assert pool_layout(144, 24) == (12, 12)
    assert pool_layout(192, 24) == (12, 16)
    assert pool_layout(128, 24) == (8, 16)
    assert pool_layout(7, 24) == (1, 7)
    with pytest.raises(UsageError, match="nearest poolable budgets: 28, 30"):
        pool_layout(29, 24)


def test_pool_averages_windows(model, pixels):
    configure(model, "pool", 144)  # 24 / 12: exact 2 x 2 windows
    with torch.no_grad():
        patches, _ = model.vision_states(pixels[:1])
        pooled = model.model.token_reducer(model.model.vision_states(pixels[:1]))
    grid = patches[0].view(24, 24, -1)
    torch.testing.assert_close(pooled[0, 0], grid[:2, :2].mean(dim=(0, 1)))
    torch.testing.assert_close(pooled[0, 13], grid[2:4, 2:4].mean(dim=(0, 1)))


def test_tome_schedule_and_weighted_merge(model, pixels):
    assert sum(merge_schedule(P, 64, 23)) == P - 64 and max(merge_schedule(P, 64, 23)) == 23
    tokens, sizes = torch.randn(2, 9, 4), torch.rand(2, 9) + 0.5
    src, dst = torch.tensor([[2, 4], [6, 8]]), torch.tensor([[1, 1], [3, 5]])
    merged, merged_sizes = merge_weighted_average(tokens, sizes, src, dst)
    assert merged.shape == (2, 7, 4)
    torch.testing.assert_close(merged_sizes.sum(1), sizes.sum(1))
    torch.testing.assert_close((merged * merged_sizes[..., None]).sum(1), (tokens * sizes[..., None]).sum(1))
    # at the full budget nothing merges and proportional attention adds log 1 = 0: stock patch features
    remove_method(model)
    with torch.no_grad():
        stock, _ = model.vision_states(pixels)
        configure(model, "tome", P)
        unmerged, _ = model.vision_states(pixels)
    torch.testing.assert_close(unmerged, stock, rtol=1e-5, atol=1e-5)


def fastv_prompt_and_cache_lengths(model, processor, budget, images_per_sample):
    """Visual tokens the LLM sees at layer K in prefill, and the cache lengths below / from layer K."""
    seen = []
    layer = model.model.language_model.layers[FASTV_LAYER]
    handle = layer.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    inputs = build_inputs(
        processor,
        [llava_prompt("describe the video", images_per_sample)],
        [random_images(images_per_sample)],
        tokens_per_image(model),
    )
    try:
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
    finally:
        handle.remove()
    cache = out.past_key_values
    return inputs["input_ids"].shape[1], seen, [cache.layers[i].keys.shape[-2] for i in range(2)]


@pytest.mark.parametrize("budget", BUDGETS)
def test_fastv_llm_sees_budget_tokens_after_layer_k(model, processor, budget):
    configure(model, "fastv", budget)
    assert tokens_per_image(model) == P
    applied = applied_method(model)
    assert (applied.fastv_layer, applied.budget, applied.tokens_per_image) == (FASTV_LAYER, budget, P)
    for frames in (1, 2):
        length, seen, cache_lengths = fastv_prompt_and_cache_lengths(model, processor, budget, frames)
        pruned = length - frames * (P - budget)
        assert seen == [pruned, 1, 1]  # prefill, then two decoding steps
        assert cache_lengths == [length + 2, pruned + 2]  # layer 0 full, layer K pruned


@pytest.mark.parametrize("samples", [1, 2])
def test_fastv_at_full_budget_equals_stock(model, processor, samples):
    """Keeping every token, the pruning path (gather, masks, positions, cache) must change nothing."""
    questions = [llava_prompt("how many shapes are there ?"), llava_prompt("is the square left ?", 2)][:samples]
    images = [random_images(1, seed=3), random_images(2, seed=4)][:samples]
    apply_method(model, "none", P)
    stock_tokens, stock_scores = generate(model, processor, questions, images, new_tokens=3)
    configure(model, "fastv", P)
    tokens, scores = generate(model, processor, questions, images, new_tokens=3)
    assert torch.equal(tokens, stock_tokens)
    torch.testing.assert_close(scores, stock_scores, rtol=1e-4, atol=1e-4)


def test_fastv_removed_leaves_stock(model, processor):
    configure(model, "fastv", 16)
    apply_method(model, "none", P)
    assert applied_method(model).method == "none" and tokens_per_image(model) == P
    assert all(not layer._forward_pre_hooks for layer in model.model.language_model.layers)
    assert model.model.token_reducer is None and model.model.vision_tower.token_merge is None


def test_methods_listed():
    assert METHODS[:8] == ("none", "vistog", "pool", "random", "tome", "visionzip", "prumerge", "fastv")
    assert set(METHODS[8:]) == {
        "divprune",
        "vispruner",
        "cdpruner",
        "dart",
        "pdrop",
        "sparsevlm",
        "vscan",
        "downsample",
        "holitom",
    }


@pytest.mark.parametrize(
    "method, budget, options, message",
    [
        ("visonzip", 64, {}, "did you mean 'visionzip'"),
        ("pool", 0, {}, r"1\.\.576"),
        ("pool", 577, {}, r"1\.\.576"),
        ("pool", "64", {}, "integer"),
        ("none", 64, {}, "budget must be 576"),
        ("vistog", 64, {}, "needs a VisToG checkpoint"),
        ("tome", 64, {"ratio": 2}, "no option 'ratio'"),
        ("fastv", 64, {"fastv_layer": 2}, r"fastv_layer must be in 1\.\.1"),
        ("visionzip", 64, {"contextual": 64}, r"0\.\.63"),
        ("visionzip", 64, {"with_cls": 2}, "visionzip with_cls must be one of 1, 0"),
        ("tome", 64, {"order": "sorted"}, "tome order must be one of reference, spatial"),
        ("tome", 64, {"matching": "half"}, "tome matching must be one of float32, model"),
        ("prumerge", 64, {"extra_token": 2}, "prumerge extra_token must be one of 1, 0"),
        ("vispruner", 64, {"ties": "random"}, "vispruner ties must be one of reference, stable"),
        ("vispruner", 64, {"precision": "float64"}, "vispruner precision must be one of model, float32"),
        ("divprune", 64, {"precision": "float16"}, "divprune precision must be one of model, float32"),
        ("dart", 300, {"pivot_order": "random"}, "dart pivot_order must be one of set, norm"),
        ("pool", 29, {}, "nearest poolable"),
    ],
)
def test_bad_input(model, method, budget, options, message):
    apply_method(model, "pool", 64)
    with pytest.raises(UsageError, match=message):
        apply_method(model, method, budget, **options)
    assert applied_method(model).method == "pool"  # a refused call changes nothing


def test_reducers_refuse_a_vistog_checkpoint():
    vistog = VisToGForConditionalGeneration.from_llava(tiny_llava(), num_semantic_tokens=64).eval()
    with pytest.raises(UsageError, match="runs on stock LLaVA"):
        apply_method(vistog, "pool", 64)
    with pytest.raises(UsageError, match="gives 64 tokens per image, not budget 32"):
        apply_method(vistog, "vistog", 32)
    apply_method(vistog, "vistog", 64)
    assert tokens_per_image(vistog) == 64


def test_prumerge_merge_matches_the_reference_loop():
    """The vectorised merge equals the reference's per-token loop: x_i + sum of a_j x_j over the k nearest keys."""
    from vistog_bench.reducers.prumerge import merge_neighbours

    generator = torch.Generator().manual_seed(0)
    patches, keys = torch.randn(2, 20, 8, generator=generator), torch.randn(2, 20, 8, generator=generator)
    attention = torch.rand(2, 20, generator=generator)
    kept = attention.topk(5, dim=1).indices
    merged = merge_neighbours(patches, keys, attention, kept, neighbours=4)
    normed = torch.nn.functional.normalize(keys, dim=-1)
    for b in range(2):
        for i, token in enumerate(kept[b].tolist()):
            others = [j for j in range(20) if j != token]
            near = [others[j] for j in (normed[b, others] @ normed[b, token]).topk(4).indices.tolist()]
            expected = patches[b, token] + (attention[b, near, None] * patches[b, near]).sum(0)
            torch.testing.assert_close(merged[b, i], expected)


def test_prumerge_reports_the_reference_outlier_count():
    from vistog_bench.reducers.prumerge import iqr_outlier_count

    attention = torch.cat([torch.full((1, 570), 0.001), torch.full((1, 6), 0.2)], dim=1)
    assert iqr_outlier_count(attention).tolist() == [6]
