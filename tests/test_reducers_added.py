"""The methods added beside the first six: budgets per layer, batch invariance, attention kernels, and each core
selection against a plain loop written from its paper's pseudo-code. Tiny LLaVA (2 LLM layers, 576 patches)."""

import copy
import itertools

import pytest
import torch
from testers import random_images, tiny_llava
from transformers import CLIPVisionModel

from vistog_bench.errors import UsageError
from vistog_bench.model import build_inputs, llava_prompt
from vistog_bench.reducers import (
    applied_method,
    apply_method,
    config_problem,
    tokens_per_image,
)
from vistog_bench.reducers.cdpruner import greedy_dpp_map
from vistog_bench.reducers.dart import duplication_aware
from vistog_bench.reducers.divprune import max_min_diversity
from vistog_bench.reducers.holitom import inner_merge, static_windows
from vistog_bench.reducers.llm_pruning import attention_rows
from vistog_bench.reducers.schedule import (
    first_stage_tokens,
    mean_schedule,
    scaled_layers,
)
from vistog_bench.reducers.sparsevlm import recycled_count
from vistog_bench.reducers.vispruner import remove_duplicates
from vistog_bench.reducers.vscan import scan, shallow_layer, windows

P = 576
# budget per method on the 2-layer LLM: a layer-mean method keeps P in layer 0, so its mean is at least (P + 1) / 2
BUDGETS = {
    "divprune": 64,
    "vispruner": 64,
    "cdpruner": 64,
    "downsample": 64,
    "holitom": 64,
    "dart": 300,
    "pdrop": 300,
    "sparsevlm": 300,
    "vscan": 64,
}
LAYER_MEAN = ("dart", "pdrop", "sparsevlm", "vscan", "holitom")


def generate(model, processor, questions, images, new_tokens=3):
    inputs = build_inputs(processor, questions, images, tokens_per_image(model))
    with torch.no_grad():
        out = model.generate(
            **inputs, max_new_tokens=new_tokens, do_sample=False, output_scores=True, return_dict_in_generate=True
        )
    return out.sequences[:, inputs["input_ids"].shape[1] :], torch.stack(out.scores, dim=1), inputs


def prefill_lengths(model, processor, frames: int) -> tuple[int, int, list[int]]:
    """Prompt length, its text tokens, and the sequence length each decoder layer's prefill received."""
    seen = []
    handles = [
        layer.register_forward_pre_hook(
            lambda m, args, kwargs: (
                seen.append(kwargs["hidden_states"].shape[1])
                if "hidden_states" in kwargs
                else seen.append(args[0].shape[1])
            ),
            with_kwargs=True,
        )
        for layer in model.model.language_model.layers
    ]
    try:
        _, _, inputs = generate(
            model,
            processor,
            [llava_prompt("describe the video", frames)],
            [random_images(frames, seed=7)],
            new_tokens=1,
        )
    finally:
        for handle in handles:
            handle.remove()
    length = inputs["input_ids"].shape[1]
    return length, length - frames * tokens_per_image(model), seen[: len(handles)]


@pytest.mark.parametrize("method", list(BUDGETS))
def test_each_layer_sees_the_recorded_schedule(model, processor, method):
    budget = BUDGETS[method]
    apply_method(model, method, budget)
    applied = applied_method(model)
    assert applied.tokens_per_image == tokens_per_image(model)
    assert len(applied.layer_tokens) == 2 and applied.llm_input_tokens == applied.layer_tokens[0]
    if method in LAYER_MEAN:
        assert applied.budget_convention == "layer_mean" and abs(applied.mean_layer_tokens - budget) <= 0.5
    else:
        assert applied.budget_convention == "llm_input" and applied.layer_tokens == (budget, budget)
    for frames in (1, 2):
        _, text, seen = prefill_lengths(model, processor, frames)
        assert seen == [text + frames * n for n in applied.layer_tokens]


@pytest.mark.parametrize("method", list(BUDGETS))
def test_batch_of_two_answers_each_as_alone(model, processor, method):
    """Greedy generate: a left-padded batch (one sample with two video frames) gives each sample its own answer."""
    apply_method(model, method, BUDGETS[method])
    questions = [llava_prompt("what colour is the shape ?"), llava_prompt("which way does the shape move ?", 2)]
    images = [random_images(1, seed=1), random_images(2, seed=2)]
    batch_tokens, batch_scores, _ = generate(model, processor, questions, images)
    for i in range(2):
        tokens, scores, _ = generate(model, processor, questions[i : i + 1], images[i : i + 1])
        assert torch.equal(batch_tokens[i : i + 1], tokens)
        torch.testing.assert_close(batch_scores[i : i + 1], scores, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["divprune", "cdpruner", "holitom"])
def test_llm_input_selection_at_full_budget_equals_stock(model, processor, method):
    """Keeping every token at layer 0, the pruning path (gather, masks, merges) changes nothing."""
    questions = [llava_prompt("how many shapes are there ?"), llava_prompt("is the square left ?", 2)]
    images = [random_images(1, seed=3), random_images(2, seed=4)]
    apply_method(model, "none", P)
    stock_tokens, stock_scores, _ = generate(model, processor, questions, images)
    apply_method(model, method, P)
    tokens, scores, _ = generate(model, processor, questions, images)
    assert torch.equal(tokens, stock_tokens)
    torch.testing.assert_close(scores, stock_scores, rtol=1e-4, atol=1e-4)


def test_attention_kernels_are_recorded_and_never_switched(model):
    assert model.config.text_config._attn_implementation == "sdpa"
    apply_method(model, "sparsevlm", 300)
    applied = applied_method(model)
    assert applied.llm_attention == ("sdpa", "sdpa") and applied.scored_llm_layers == (0,)
    assert model.config.text_config._attn_implementation == "sdpa"
    apply_method(model, "vispruner", 64)
    assert (
        applied_method(model).vision_scores.startswith("CLS attention") and not applied_method(model).scored_llm_layers
    )
    apply_method(model, "divprune", 64)
    assert applied_method(model).scored_llm_layers == () and applied_method(model).vision_scores == ""


def test_score_rows_equal_the_eager_attention_weights():
    """The rows the selectors read (from q / k hooks) are what an eager layer returns as its attention weights."""
    llava = tiny_llava()
    llava.config.text_config._attn_implementation = "eager"
    layer = llava.model.language_model.layers[0]
    captured = {}
    layer.self_attn.q_proj.register_forward_hook(lambda m, a, out: captured.setdefault("q", out))
    layer.self_attn.k_proj.register_forward_hook(lambda m, a, out: captured.setdefault("k", out))
    ids = torch.randint(5, 100, (1, 12))
    with torch.no_grad():
        out = llava.model.language_model(input_ids=ids, output_attentions=True)
    eager = out.attentions[0][0].mean(dim=0)  # [T, T]
    rotary = llava.model.language_model.rotary_emb(captured["q"], torch.arange(12)[None])
    attn = layer.self_attn
    positions = torch.tensor([3, 11])
    rows = attention_rows(
        captured["q"][0, positions],
        captured["k"][0],
        rotary,
        torch.ones(12, dtype=torch.bool),
        positions,
        0,
        head_dim=attn.head_dim,
        kv_groups=attn.num_key_value_groups,
        scaling=attn.scaling,
    )
    torch.testing.assert_close(rows, eager[positions].float(), rtol=1e-4, atol=1e-5)


# -- budgets ---------------------------------------------------------------------------------------------------------
def test_layer_mean_schedules():
    assert scaled_layers((8, 16, 24), 32) == (8, 16, 24) and scaled_layers((8, 16, 24), 2) == (1,)
    for budget, layers in [(192, (8, 16, 24)), (128, (2, 6, 12)), (64, (2, 6, 12))]:
        counts = mean_schedule(budget, 32, P, layers, "pdrop")
        spans = [b - a for a, b in zip(layers, (*layers[1:], 32), strict=True)]
        mean = (layers[0] * P + sum(s * n for s, n in zip(spans, counts, strict=True))) / 32
        assert abs(mean - budget) <= spans[-1] / 32 * 0.5 + 1e-9 and list(counts) == sorted(counts, reverse=True)
    assert mean_schedule(64, 32, P, (2,), "dart") == (round((64 * 32 - 2 * P) / 30),)
    # VScan's README: 96 tokens from the encoder, 32 from layer 16, "an average of 64 tokens throughout the 32 layers"
    assert first_stage_tokens(64, 32, 16, P, 1 / 3) == 96 and mean_schedule(64, 32, 96, (16,), "vscan") == (32,)
    with pytest.raises(UsageError, match="layer-mean budget must be in 145..576"):
        mean_schedule(64, 32, P, (8, 16, 24), "pdrop")


def test_config_problem_refuses_unreachable_budgets(model):
    config = model.config
    assert config_problem(config, "dart", budget=300) is None
    assert "must be at least 289, got 16" in config_problem(config, "dart", budget=16)
    assert "layer must be in 1..1" in config_problem(config, "vscan", budget=64, layer=2)
    assert config_problem(config, "divprune", budget=4) is None
    assert "increase within 1..1" in config_problem(config, "pdrop", budget=300, layers="0,1")
    apply_method(model, "pool", 64)
    with pytest.raises(UsageError, match="at least 289"):
        apply_method(model, "pdrop", 64)
    assert applied_method(model).method == "pool"  # a refused call changes nothing


@pytest.mark.parametrize(
    "method, budget, options, message",
    [
        ("vispruner", 64, {"important_ratio": 2.0}, "important_ratio must be in 0..1"),
        ("dart", 300, {"layer": "1"}, "must be int"),
        ("downsample", 29, {}, "nearest poolable"),
        ("holitom", 0, {}, r"1\.\.576"),
    ],
)
def test_bad_input(model, method, budget, options, message):
    with pytest.raises(UsageError, match=message):
        apply_method(model, method, budget, **options)


# -- core selections against plain loops from the papers' pseudo-code --------------------------------------------------
def test_divprune_matches_the_mmdp_loop():
    x = torch.randn(40, 8, generator=torch.Generator().manual_seed(0))
    distance = 1 - torch.nn.functional.cosine_similarity(x[:, None], x[None], dim=-1)
    chosen = [max(range(40), key=lambda i: min(distance[i, j] for j in range(40) if j != i))]
    while len(chosen) < 10:  # argmax over candidates of the minimum distance to the chosen set
        chosen.append(max((i for i in range(40) if i not in chosen), key=lambda i: min(distance[i, j] for j in chosen)))
    assert max_min_diversity(x, 10).tolist() == chosen


def test_cdpruner_greedy_map_matches_log_det_greedy():
    x = torch.randn(30, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    kernel = x @ x.T + 0.1 * torch.eye(30, dtype=torch.float64)
    chosen = []
    for _ in range(6):  # the greedy MAP: add the item that maximises log det L[S + i]
        chosen.append(
            max(
                (i for i in range(30) if i not in chosen),
                key=lambda i: torch.logdet(kernel[chosen + [i]][:, chosen + [i]]),
            )
        )
    assert greedy_dpp_map(kernel, 6).tolist() == chosen


def test_vispruner_duplicate_removal_matches_the_loop():
    normed = torch.nn.functional.normalize(torch.randn(1, 50, 8, generator=torch.Generator().manual_seed(2)), dim=-1)
    residual = torch.randperm(50, generator=torch.Generator().manual_seed(3))[:37]
    kept = residual.tolist()
    while len(kept) > 12:  # each round: A = even slots, B = odd; drop the (up to) 8 A tokens closest to B
        a, b = kept[::2], kept[1::2]
        closest = [max(float(normed[0, i] @ normed[0, j]) for j in b) for i in a]
        order = sorted(range(len(a)), key=lambda k: -closest[k])
        kept = [a[k] for k in order[min(8, len(kept) - 12) :]] + b
    assert remove_duplicates(normed, residual[None], 12)[0].tolist() == kept


@pytest.mark.parametrize("order", ["set", "norm"])
def test_dart_matches_the_reference_loop(order):
    generator = torch.Generator().manual_seed(4)
    states = torch.randn(60, 8, generator=generator)
    key_norm = torch.rand(60, generator=generator)
    block, text_pivots = torch.arange(10, 50), torch.tensor([52, 57])
    kept = duplication_aware(states, key_norm, block, text_pivots, keep=14, pivot_image=4, order=order, offset=3)
    pivots = sorted(block.tolist(), key=lambda i: -key_norm[i])[:4]
    if order == "set":  # the reference: `for item in list(indices_set)`, positions within the sample (from 3 on)
        visits = [i + 3 for i in list(set([i - 3 for i in pivots + text_pivots.tolist()]))]
    else:
        visits = pivots + text_pivots.tolist()
    candidates = [i for i in block.tolist() if i not in pivots]
    expected = list(pivots)
    for n, pivot in enumerate(visits):  # 10 picks over 6 pivots: floor(10 / 6) each, the first 4 one more
        share = 10 // 6 + (n < 10 % 6)
        cosine = [float(torch.nn.functional.cosine_similarity(states[i], states[pivot], dim=0)) for i in candidates]
        picks = [candidates[k] for k in sorted(range(len(candidates)), key=lambda k: cosine[k])[:share]]
        expected += picks
        candidates = [i for i in candidates if i not in picks]
    assert sorted(kept.tolist()) == sorted(expected) and len(kept) == 14


def test_sparsevlm_recycling_sizes_follow_the_reference():
    for tokens, keep in [(576, 300), (300, 200), (576, 66), (200, 110)]:
        recycled = recycled_count(tokens, keep)
        candidates = int((tokens - (keep - recycled)) * 0.3) + 1  # the reference: top 30 % + 1, then n / 10 + 1
        assert recycled == int(candidates / 10) + 1
    assert recycled_count(576, 576) == 0


def test_holitom_windows_match_exhaustive_search():
    similarity = torch.rand(5, 20, generator=torch.Generator().manual_seed(5))
    tau, max_window = 0.3, 3

    def saved(first, last):
        return int((similarity[first:last] > tau).all(dim=0).sum()) * (last - first)

    best = -1
    for cuts in itertools.product([0, 1], repeat=5):  # every split of 6 frames into consecutive windows
        bounds = [0] + [i + 1 for i, c in enumerate(cuts) if c] + [6]
        windows = [(a, b - 1) for a, b in itertools.pairwise(bounds)]
        if all(b - a + 1 <= max_window for a, b in windows):
            best = max(best, sum(saved(a, b) for a, b in windows))
    windows = static_windows(similarity, tau, max_window)
    assert sum(saved(a, b) for a, b in windows) == best
    assert windows[0][0] == 0 and windows[-1][1] == 5  # consecutive windows covering every frame once
    assert all(b + 1 == c for (_, b), (c, _) in itertools.pairwise(windows))


def test_vscan_scans_match_the_reference_loops():
    """The local scan as `window_cls_selection` (6 x 6 windows of the 24 x 24 grid, top k = floor(K0 / 2 / 16) of
    each, windows row-major), then the global scan: the top of the deep attention with the local picks zeroed."""
    generator = torch.Generator().manual_seed(6)
    shallow, deep = torch.rand(2, P, generator=generator), torch.rand(2, P, generator=generator)
    for keep in (96, 64, 20):
        chosen = scan(shallow, deep, 24, keep)
        for b in range(2):
            per_window, local = (keep // 2) // 16, []
            for i in range(4):
                for j in range(4):
                    window = shallow[b].view(24, 24)[i * 6 : (i + 1) * 6, j * 6 : (j + 1) * 6].reshape(-1)
                    for index in window.topk(per_window).indices.tolist():
                        dy, dx = divmod(index, 6)
                        local.append((i * 6 + dy) * 24 + j * 6 + dx)
            masked = deep[b].clone()
            masked[local] = 0
            expected = local + masked.topk(keep - len(local)).indices.tolist()
            assert chosen[b].tolist() == expected and len(set(expected)) == keep


def test_vscan_local_scan_reads_the_shallow_layers_attention(model, processor):
    """The hooked q / k give the CLS row of that layer's eager attention weights; removing the method drops the
    hooks."""
    tower = model.model.vision_tower
    layer = shallow_layer(len(tower.encoder.layers), tower.layers_to_run(model.config.vision_feature_layer))
    assert layer == 0 and shallow_layer(24, 23) == 5  # 5 of CLIP ViT-L's 24; below the tiny tower's feature layer
    apply_method(model, "vscan", 64)
    reducer = model.model.token_reducer
    assert applied_method(model).vision_scores.endswith("and at encoder layer 0")
    pixels = build_inputs(processor, [llava_prompt("what is it ?", 2)], [random_images(2, seed=8)], 1)["pixel_values"]
    with torch.no_grad():
        tower(pixels, feature_layer=model.config.vision_feature_layer, with_cls_attention=True)
        taken = reducer.shallow.take()
        stock = CLIPVisionModel._from_config(copy.deepcopy(tower.config), attn_implementation="eager").eval()
        stock.load_state_dict(tower.state_dict())
        eager = stock(pixel_values=pixels, output_attentions=True).attentions[layer]  # [B, h, I, I]
    torch.testing.assert_close(taken, eager[:, :, 0, 1:].mean(dim=1).float(), rtol=1e-4, atol=1e-6)
    assert tower.config._attn_implementation == "sdpa"
    apply_method(model, "pool", 64)
    attn = tower.encoder.layers[layer].self_attn
    assert not attn.q_proj._forward_hooks and not attn.k_proj._forward_hooks


def test_holitom_inner_merge_matches_the_reference_loop():
    """cokeshao/HoliTom's inner-LLM merge: top (1 - r) by attention stay; each other token, in order, halves into its
    most similar kept token (similarities from the states before merging)."""
    generator = torch.Generator().manual_seed(9)
    states, scores = torch.randn(30, 8, generator=generator, dtype=torch.float64), torch.rand(30, generator=generator)
    kept_order = scores.topk(12).indices
    normed = torch.nn.functional.normalize(states, dim=-1)
    others = [i for i in range(30) if i not in kept_order.tolist()]
    similarity = normed[others] @ normed[kept_order].T
    expected = states.clone()
    for row, index in enumerate(others):
        target = int(kept_order[similarity[row].argmax()])
        expected[target] = (expected[target] + expected[index]) / 2
    kept, merged = inner_merge(states, scores, 12)
    assert kept.tolist() == sorted(kept_order.tolist())
    torch.testing.assert_close(merged, expected[kept].to(merged.dtype), rtol=1e-5, atol=1e-6)


def test_holitom_records_both_stages(model):
    apply_method(model, "holitom", 64)
    applied = applied_method(model)
    assert applied.budget_convention == "layer_mean" and applied.layer_tokens == (85, 43)  # (85 + 43) / 2 = 64
    assert applied.tokens_per_image == P and applied.scored_llm_layers == (0,)  # the inner stage reads layer 0's q / k
    apply_method(model, "holitom", P)  # full budget: nothing merges, no layer is scored
    assert applied_method(model).layer_tokens == (P, P) and applied_method(model).scored_llm_layers == ()


def test_vscan_windows_tile_the_grid():
    for grid, side in ((24, 6), (8, 2)):
        cells = windows(grid, 4, "cpu")
        assert cells.shape == (16, side * side) and sorted(cells.flatten().tolist()) == list(range(grid * grid))
        assert cells[1].tolist()[:2] == [side, side + 1] and cells[4, 0] == side * grid  # row-major windows
