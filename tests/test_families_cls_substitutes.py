"""visionzip and vispruner on LLaVA-NeXT (each view's CLS attention), LLaVA-OneVision and Qwen2.5-VL (mean received
attention, per 2 x 2 PatchMerger group on Qwen), on the tiny hub-layout checkpoints (vistog_bench.
hub_checkpoints_families): the hooked scores equal an eager forward of the scored layer, each score lands on its
LLM-input token, layer 0 receives the family's budget-rule count, the selection equals a plain loop written from the
papers' pseudo-code, batched answers equal batch-1 answers, and what still cannot apply is refused in one line."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from test_families import answers, images, layer0_states

from vistog_bench.adapter import VisToGChatLMM
from vistog_bench.errors import UsageError
from vistog_bench.model import load_checkpoint
from vistog_bench.model.families import family_inputs, find_family, image_runs, image_token_id
from vistog_bench.model.loading import load_config
from vistog_bench.reducers import config_problem
from vistog_bench.reducers.families import apply_family_method, family_vision_scores
from vistog_bench.reducers.family_attention import ImageScores
from vistog_bench.testing.hub_checkpoints_families import write_family_layouts

NAMES = {"llava-next": "llava_next", "llava-onevision": "llava_onevision", "qwen2.5-vl": "qwen2_5_vl"}
BUDGETS = {"llava-next": 300, "llava-onevision": 500, "qwen2.5-vl": 25}  # each below every test image's count


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    return write_family_layouts(tmp_path_factory.mktemp("families"))


def inputs_for(processor, count: int = 1):
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q"}]}], add_generation_prompt=True
    )
    return family_inputs(processor, [prompt] * count, [[image] for image in images()[:count]])


def encoder_scores(model):
    """The EncoderScores the installed method reads (the family pruner's selector holds it)."""
    return model.__dict__["_vistog_family_method"][2].selector.scores


# -- scores ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["llava-next", "llava-onevision"])
def test_hooked_scores_equal_an_eager_forward_of_the_scored_layer(layouts, name):
    model, processor = load_checkpoint(layouts[name])
    eager, _ = load_checkpoint(layouts[name], attn_implementation="eager")
    views = []
    model.model.vision_tower.register_forward_pre_hook(
        lambda m, a, k: views.append(k["pixel_values"] if "pixel_values" in k else a[0]), with_kwargs=True
    )
    layer0_states(model, "visionzip", BUDGETS[name], inputs_for(processor, 3))
    scores = encoder_scores(model)
    assert model.config.vision_config._attn_implementation == "sdpa"  # the scored encoder is not switched
    assert "sdpa" in family_vision_scores(model) and f"layer {scores.layer}" in family_vision_scores(model)
    with torch.no_grad():
        out = eager.model.vision_tower(views[0], output_attentions=True, output_hidden_states=True)
    weights = out.attentions[scores.layer]  # [N, h, S, S] eager softmax weights
    layer = eager.model.vision_tower.encoder.layers[scores.layer]
    keys = layer.self_attn.k_proj(layer.layer_norm1(out.hidden_states[scores.layer]))  # [N, S, Dv]
    keys = keys.view(*keys.shape[:2], -1, layer.self_attn.head_dim).mean(dim=2)  # [N, S, dh]
    if name == "llava-next":  # CLS row, CLS column dropped, head mean
        expected, keys = weights[:, :, 0, 1:].mean(dim=1), keys[:, 1:]
    else:  # received attention: mean over queries, then heads (VisPruner's SigLIP port)
        expected = weights.mean(dim=2).mean(dim=1)
    assert scores._layer.score.shape == expected.shape and expected.shape[0] > 3  # several views per image
    torch.testing.assert_close(scores._layer.score, expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(scores._layer.keys, keys, rtol=1e-5, atol=1e-6)


def test_qwen_scores_equal_eager_weights_that_reproduce_the_block_output(layouts):
    """Qwen2.5-VL's vision attention returns no weights in any kernel: transformers' eager_attention_forward on the
    block's own q / k / v (rotary applied) reproduces the module's output, and its weights give our scores."""
    model, processor = load_checkpoint(layouts["qwen2.5-vl"])
    apply_family_method(model, "vispruner", 25)
    scores = encoder_scores(model)
    attn = model.model.visual.blocks[scores.layer].attn
    seen = {}
    attn.register_forward_pre_hook(lambda m, a, k: seen.update(hidden=a[0], kwargs=k), with_kwargs=True)
    attn.register_forward_hook(lambda m, a, k, out: seen.update(out=out), with_kwargs=True)
    with torch.inference_mode():
        model(**inputs_for(processor, 3))
    received = eager_received_attention(attn, seen["hidden"], seen["kwargs"], seen["out"])
    torch.testing.assert_close(scores._layer.score, received, rtol=1e-5, atol=1e-7)


@torch.no_grad()
def eager_received_attention(attn, hidden, kwargs, output) -> torch.Tensor:
    """Per-segment eager weights of the block's q / k (checked to reproduce its `output`), mean over heads and
    queries: [S]."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
        apply_rotary_pos_emb_vision,
        eager_attention_forward,
    )

    length = hidden.shape[0]
    query, key, value = attn.qkv(hidden).reshape(length, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    query, key = apply_rotary_pos_emb_vision(query, key, *kwargs["position_embeddings"])
    query, key, value = (x.transpose(0, 1)[None] for x in (query, key, value))  # [1, h, S, dh]
    bounds = kwargs["cu_seqlens"].tolist()
    assert len(bounds) == 4  # a full-attention block: one segment per image
    outputs, received = [], []
    for a, b in itertools.pairwise(bounds):
        out, weights = eager_attention_forward(
            attn, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None, scaling=attn.scaling
        )
        outputs.append(out)
        received.append(weights[0].mean(dim=(0, 1)))  # [s]
    torch.testing.assert_close(attn.proj(torch.cat(outputs, dim=1).reshape(length, -1)), output)
    return torch.cat(received)


def test_qwen_group_scores_follow_the_llm_token_order(layouts):
    """Token j of the LLM's order is the window-order group g with window_index[g] == j: a plain loop over it."""
    from transformers.vision_utils import get_vision_window_index

    model, processor = load_checkpoint(layouts["qwen2.5-vl"])
    inputs = inputs_for(processor, 3)
    layer0_states(model, "visionzip", 25, inputs)
    scores, vision = encoder_scores(model), model.config.vision_config
    window_index, _ = get_vision_window_index(
        inputs["image_grid_thw"], spatial_merge_size=2, window_size=vision.window_size, patch_size=vision.patch_size
    )
    patch_scores = scores._layer.score.tolist()
    offset = 0
    for image, (t, h, w) in enumerate(inputs["image_grid_thw"].tolist()):
        got = scores.image(image).score
        assert got.numel() == t * h * w // 4
        for j in range(got.numel()):
            g = window_index.tolist().index(offset + j)
            assert math.isclose(float(got[j]), sum(patch_scores[4 * g : 4 * g + 4]) / 4, rel_tol=1e-5)
        offset += got.numel()


@pytest.mark.parametrize("name", ["llava-next", "llava-onevision"])
def test_packed_scores_mark_the_base_view_tiles_and_newline_tokens(layouts, name):
    model, processor = load_checkpoint(layouts[name])
    inputs = inputs_for(processor, 3)
    before, _ = layer0_states(model, "vispruner", BUDGETS[name], inputs)
    scores = encoder_scores(model)
    patches = (model.config.vision_config.image_size // model.config.vision_config.patch_size) ** 2
    newline = model.model.image_newline
    for b in range(3):
        (run,) = image_runs(inputs["input_ids"][b], image_token_id(model))
        image = scores.image(b)
        assert image.view.numel() == run.numel()
        assert torch.equal(image.view[:patches], torch.zeros(patches, dtype=torch.long))  # the base view first
        is_newline = (before[b, run] == newline).all(dim=-1)  # the model's newline embedding at the LLM input
        assert is_newline.any() and torch.equal(image.view == -1, is_newline)
        assert bool((image.view[patches:][~is_newline[patches:]] > 0).all())  # tile tokens
        assert bool((image.score[~is_newline] > 0).all()) and bool((image.score[is_newline] == 0).all())


def test_onevision_pooled_tile_grid_is_one_view(layouts):
    """A large image's tile grid exceeds anyres_max_9: the model pools it (bilinear), and its tokens form one view."""
    import numpy as np
    from PIL import Image

    model, processor = load_checkpoint(layouts["llava-onevision"])
    big = Image.fromarray(np.random.default_rng(1).integers(0, 256, (1536, 1152, 3), dtype=np.uint8))
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q"}]}], add_generation_prompt=True
    )
    inputs = family_inputs(processor, [prompt], [[big]])
    before, after = layer0_states(model, "visionzip", 500, inputs)
    image = encoder_scores(model).image(0)
    assert encoder_scores(model)._layer.score.shape[0] > 10  # base view + more than 9 tiles
    assert sorted(set(image.view.tolist())) == [-1, 0, 1]
    (run,) = image_runs(inputs["input_ids"][0], image_token_id(model))
    is_newline = (before[0, run] == model.model.image_newline).all(dim=-1)
    assert torch.equal(image.view == -1, is_newline)
    assert after.shape[1] == before.shape[1] - run.numel() + 500


# -- budget rule and selection ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["visionzip", "vispruner"])
@pytest.mark.parametrize("name", NAMES)
def test_layer_0_receives_the_budget_rules_count(layouts, name, method):
    model, processor = load_checkpoint(layouts[name])
    inputs = inputs_for(processor, 2)
    _, after = layer0_states(model, method, BUDGETS[name], inputs)
    prompt = model.__dict__["_vistog_family_method"][2]._prompt  # the pruned prompt's masks
    ids, mask, token = inputs["input_ids"], inputs["attention_mask"], image_token_id(model)
    unreduced = (ids == token).sum(dim=1)  # [B] one image each, sizes differ
    keep = torch.tensor([find_family(NAMES[name]).kept_tokens(BUDGETS[name], int(v)) for v in unreduced])
    assert bool((keep < unreduced).all()) and unreduced[0] != unreduced[1]
    assert torch.equal(prompt.image_mask.sum(dim=1), keep)  # visual tokens layer 0 receives per sample
    assert torch.equal(prompt.kept_masks[0].sum(dim=1), mask.sum(dim=1) - unreduced + keep)  # with all the text
    assert after.shape[1] == int((ids.shape[1] - unreduced + keep).max())


def reference_shares(counts: list[int], keep: int) -> list[int]:
    """Largest remainder, ties to the earlier view."""
    exact = [c * keep / sum(counts) for c in counts]
    shares = [math.floor(x) for x in exact]
    for i in sorted(range(len(counts)), key=lambda i: (-(exact[i] - shares[i]), i))[: keep - sum(shares)]:
        shares[i] += 1
    return shares


def reference_visionzip(members, score, keys, states, keep) -> dict[int, torch.Tensor]:
    """VisionZip (arXiv 2412.04467, Alg. 1) on one view: dominant by score, then every step-th remaining token a
    target, each other joins its most key-similar target; contextual = target + mean of those joined."""
    contextual = 0 if keep in (1, len(members)) else max(1, round(keep * 10 / 64))
    dominant = sorted(members, key=lambda t: -float(score[t]))[: keep - contextual]
    out = {t: states[t] for t in dominant}
    rest = [t for t in members if t not in dominant]
    if not contextual:
        return out
    targets = rest[:: max(1, len(rest) // contextual)][:contextual]
    joined = {g: [] for g in targets}
    for t in rest:
        if t not in joined:
            best = max(targets, key=lambda g: float(F.cosine_similarity(keys[t], keys[g], dim=0)))
            joined[best].append(t)
    for g, group in joined.items():
        out[g] = states[g] + (torch.stack([states[t] for t in group]).mean(dim=0) if group else 0)
    return out


def reference_vispruner(members, score, states, keep) -> dict[int, torch.Tensor]:
    """VisPruner (arXiv 2412.01818, Alg. 1) on one view: important by score, then rounds of dropping the r <= 8 tokens
    of A (alternate split) most similar to B, until the diverse count remains."""
    important = int(keep * 0.5)
    order = sorted(members, key=lambda t: -float(score[t]))
    residual = order[important:]
    normed = F.normalize(states.float(), dim=-1)  # cosine similarity as the reference computes it: unit rows, dot
    while (drop := min(8, len(residual) - (keep - important))) > 0:
        a, b = residual[::2], residual[1::2]
        closest = (normed[a] @ normed[b].T).max(dim=1).values.tolist()  # each A token's most similar B token
        distinct = sorted(range(len(a)), key=lambda i: -closest[i])[drop:]
        residual = [a[i] for i in distinct] + b
    return {t: states[t] for t in order[:important] + residual}


@pytest.mark.parametrize("method", ["visionzip", "vispruner"])
@pytest.mark.parametrize("name", NAMES)
def test_selection_equals_a_plain_loop_of_the_papers_pseudo_code(layouts, name, method):
    model, processor = load_checkpoint(layouts[name])
    inputs = inputs_for(processor, 1)
    before, after = layer0_states(model, method, BUDGETS[name], inputs)
    (run,) = image_runs(inputs["input_ids"][0], image_token_id(model))
    image: ImageScores = encoder_scores(model).image(0)
    states = before[0, run]
    keep = find_family(NAMES[name]).kept_tokens(BUDGETS[name], run.numel())
    views = sorted({int(v) for v in image.view if v >= 0})
    members = [[t for t in range(run.numel()) if int(image.view[t]) == v] for v in views]
    kept: dict[int, torch.Tensor] = {}
    for group, share in zip(members, reference_shares([len(m) for m in members], keep), strict=True):
        if share:
            kept.update(
                reference_visionzip(group, image.score, image.keys, states, share)
                if method == "visionzip"
                else reference_vispruner(group, image.score, states, share)
            )
    assert len(kept) == keep
    text = torch.ones(before.shape[1], dtype=torch.bool)
    text[run] = False
    expected = before[0].clone()
    for t, state in kept.items():
        expected[run[t]] = state
    is_kept = text.clone()
    is_kept[run[sorted(kept)]] = True
    torch.testing.assert_close(after[0], expected[is_kept])


# -- served through the adapter ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,method", [("llava-next", "visionzip"), ("llava-onevision", "vispruner"), ("qwen2.5-vl", "visionzip")]
)
def test_batched_answers_equal_batch_1_and_log_the_rules_count(layouts, name, method):
    path = str(layouts[name])
    single = VisToGChatLMM(pretrained=path, method=method, budget=BUDGETS[name], device="cpu")
    batched = VisToGChatLMM(pretrained=path, method=method, budget=BUDGETS[name], device="cpu", batch_size=3)
    got = answers(single)
    assert answers(batched) == got and any(got)
    family = find_family(NAMES[name])
    for entry in single.take_sample_log():
        (unreduced,), (received,) = entry["visual_tokens_unreduced"], entry["visual_tokens"]
        assert received == family.kept_tokens(BUDGETS[name], unreduced) < unreduced


def test_full_budget_keeps_every_token_and_answers_as_none(layouts):
    path = str(layouts["llava-next"])
    none = answers(VisToGChatLMM(pretrained=path, method="none", device="cpu"))
    assert answers(VisToGChatLMM(pretrained=path, method="vispruner", budget=10_000, device="cpu")) == none


@pytest.mark.parametrize("name", NAMES)
def test_prumerge_is_refused_in_one_line_with_its_reason(layouts, name):
    problem = config_problem(load_config(layouts[name]), "prumerge", budget=BUDGETS[name])
    assert problem and "\n" not in problem and NAMES[name] in problem and "layer after the feature layer" in problem
    with pytest.raises(UsageError, match="prumerge"):
        VisToGChatLMM(pretrained=str(layouts[name]), method="prumerge", budget=BUDGETS[name], device="cpu")


def test_cls_attention_with_the_cls_kept_for_the_llm_is_refused(layouts):
    model, _ = load_checkpoint(layouts["llava-next"])
    model.config.vision_feature_select_strategy = "full"
    with pytest.raises(UsageError, match="'default'") as error:
        apply_family_method(model, "visionzip", 300)
    assert "\n" not in str(error.value)
