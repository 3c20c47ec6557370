"""Each reducer's default reproduces its official implementation's outputs on the same inputs.

The figures under tests/data/conformance/<method>/ were produced by running the official function (repository and
commit in each folder's README.md, framework glue removed, nothing else changed) on the inputs built here: a seeded
LLaVA whose vision tower has CLIP ViT-L/14-336's geometry and depth (24 layers, 576 patches, feature layer -2) at a
small width, a LLaVA projector and a 4-layer LLaMA, three images (two noise, one half of it LLaVA's padding grey), and
seeded synthetic tensors where a rule (ties, dtype) needs inputs built for it. Kept indices must agree exactly; merged
tokens, and the logits over the pruned prompt of the methods at the LLM's layers (divprune, dart), to the float32
rounding of their sums (they agree bit for bit here, but a sum computed in another order by another kernel may not).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import LlavaConfig, LlavaForConditionalGeneration

from vistog_bench.model import VisToGForConditionalGeneration, build_inputs, llava_prompt
from vistog_bench.model.vision import VisionStates
from vistog_bench.reducers import VisPrunerReducer, applied_method, apply_method, tokens_per_image
from vistog_bench.reducers.divprune import max_min_diversity
from vistog_bench.reducers.llm_pruning import installed_pruner
from vistog_bench.testing.tiny_models import tiny_processor

DATA = Path(__file__).parent / "data" / "conformance"
BUDGETS = (64, 16)
P = 576
SEED = 0
VISION = dict(  # CLIP ViT-L/14-336's grid and depth (24 layers, LLaVA's feature layer -2 runs 23), width 32
    model_type="clip_vision_model",
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=24,
    num_attention_heads=4,
    image_size=336,
    patch_size=14,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    projection_dim=32,
)
TEXT = dict(  # a 4-layer LLaMA of the tiny preset's width (vistog_bench/model/presets.py)
    model_type="llama",
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=4,
    vocab_size=128,
    max_position_embeddings=2048,
    pad_token_id=3,
)
QUESTION = "what colour is the shape ?"
PAD_GREY = (122, 116, 104)  # CLIP's image mean x 255, the colour LLaVA-1.5 pads non-square images with


def conformance_llava() -> LlavaForConditionalGeneration:
    torch.manual_seed(SEED)
    return LlavaForConditionalGeneration(
        LlavaConfig(vision_config=VISION, text_config=TEXT, image_token_index=4)
    ).eval()


def conformance_images() -> list[Image.Image]:
    """Two noise images and one whose top half is padding grey (near-duplicate patches, as padded images give)."""
    rng = np.random.default_rng(SEED)
    pixels = rng.integers(0, 256, (3, 336, 336, 3), dtype=np.uint8)
    pixels[2, :168] = PAD_GREY
    return [Image.fromarray(image) for image in pixels]


def duplicated_features(seed: int, distinct: int = 24, width: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic feature-layer states with exact duplicates and tied attention: features [1, P, width] drawn from
    `distinct` rows, CLS attention [1, P] in steps of 1/64 (many exact ties in both)."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randn(distinct, width, generator=generator)
    features = rows[torch.randint(0, distinct, (P,), generator=generator)].unsqueeze(0)
    attention = torch.randint(0, 16, (1, P), generator=generator).float() / 64
    return features, attention


def near_duplicate_tokens(seed: int, width: int = 64) -> torch.Tensor:
    """Synthetic projected tokens [P, width]: 48 directions plus small noise, so that many distances lie within a
    float16 rounding step of each other."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(48, width, generator=generator)
    tokens = base[torch.randint(0, 48, (P,), generator=generator)]
    return tokens + 1e-2 * torch.randn(P, width, generator=generator)


def golden(method: str) -> dict[str, torch.Tensor]:
    return load_file(DATA / method / "golden.safetensors")


EPS = torch.finfo(torch.float32).eps


def rounding(reference: torch.Tensor, terms: int) -> float:
    """How far a float32 sum of `terms` addends may move when computed in another order: terms x eps x its scale (the
    worst-case bound of recursive summation), with max |reference| as the scale."""
    return terms * EPS * float(reference.abs().max())


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = set(a.tolist()), set(b.tolist())
    return len(a & b) / len(a | b)


@pytest.fixture(scope="module")
def conformance():
    """The conformance LLaVA behind our class, its processor, the three images and their pixels."""
    model = VisToGForConditionalGeneration.from_llava(conformance_llava(), num_semantic_tokens=None).eval()
    processor = tiny_processor()
    images = conformance_images()
    pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        patches = model.model.vision_states(pixels).patch_states  # [3, P, 32]
    recorded = load_file(DATA / "inputs.safetensors")["feature_layer_sum"]
    # The inputs first: a seeded model that initialises differently (another torch / transformers) is not a
    # conformance failure; the figures would have to be made again (tests/data/conformance/README.md).
    torch.testing.assert_close(
        patches.sum(dim=(1, 2)).double(),
        recorded,
        rtol=0,
        atol=rounding(patches, patches[0].numel()),
        msg="the seeded conformance model's feature-layer states differ from those the figures were made on",
    )
    return model, processor, images, pixels


def reduce(model, pixels, method: str, budget: int, **options):
    """Feature-layer states and the reducer's tokens [3, budget, 32], through apply_method as a run configures it."""
    apply_method(model, method, budget, **options)
    reducer = model.model.token_reducer
    with torch.no_grad():
        states = model.model.vision_states(pixels, with_cls_attention=reducer.needs_cls_attention)
        return states, reducer(states)


def source_rows(tokens: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """For tokens [B, k, C] that are copies of rows of candidates [B, n, C]: which row each is, [B, k]."""
    same = (tokens[:, :, None] == candidates[:, None]).all(dim=-1)  # [B, k, n]
    assert bool((same.sum(dim=-1) == 1).all()), "a token is not the copy of exactly one candidate row"
    return same.float().argmax(dim=-1)


@pytest.mark.parametrize("budget", BUDGETS)
def test_visionzip_sends_cls_dominant_patches_and_contextual_tokens_as_the_reference(conformance, budget):
    model, _, _, pixels = conformance
    reference = golden("visionzip")
    states, tokens = reduce(model, pixels, "visionzip", budget)
    kept = reference[f"k{budget}.kept"]  # [3, Kd]: 0 = CLS, i = patch i - 1
    candidates = torch.cat([states.cls_state.unsqueeze(1), states.patch_states], dim=1)  # [3, I, 32]
    assert torch.equal(source_rows(tokens[:, : kept.shape[1]], candidates), kept)
    expected = reference[f"k{budget}.tokens"]
    # a contextual token adds the mean of at most P - Kd + 1 joined tokens: a sum of that many terms
    torch.testing.assert_close(tokens, expected, rtol=0, atol=rounding(expected, P))


def test_visionzip_without_cls_is_an_option_recorded_on_the_method(conformance):
    model, _, _, pixels = conformance
    states, tokens = reduce(model, pixels, "visionzip", 64, with_cls=0)
    assert applied_method(model).options == {"with_cls": 0}
    kept = source_rows(tokens[:, :54], states.patch_states) + 1  # 54 patches, no CLS
    reference = golden("visionzip")["k64.kept"]
    assert all(jaccard(ours, theirs) < 1 for ours, theirs in zip(kept, reference, strict=True))


@pytest.mark.parametrize("budget", [64, 192])  # at 16 the reference's cap (half the tokens a layer) leaves 20
def test_tome_merges_as_bipartite_soft_matching_and_merge_wavg(conformance, budget):
    model, _, _, pixels = conformance
    _, tokens = reduce(model, pixels, "tome", budget)
    expected = golden("tome")[f"k{budget}.tokens"]
    # each token is a size-weighted average of at most P patches' states: a sum of that many terms
    torch.testing.assert_close(tokens, expected, rtol=0, atol=rounding(expected, P))
    _, spatial = reduce(model, pixels, "tome", budget, order="spatial")
    assert applied_method(model).options == {"order": "spatial"}
    assert not torch.allclose(spatial, expected, rtol=0, atol=rounding(expected, P))


@pytest.mark.parametrize("budget", BUDGETS)
def test_prumerge_keeps_merges_and_appends_the_pruned_sum_as_the_reference(conformance, budget):
    model, _, _, pixels = conformance
    _, tokens = reduce(model, pixels, "prumerge", budget)
    expected = golden("prumerge")[f"k{budget}.tokens"]
    # a kept token adds 32 weighted neighbours; the extra token sums the P - K + 1 pruned ones
    torch.testing.assert_close(tokens, expected, rtol=0, atol=rounding(expected, P))
    _, without = reduce(model, pixels, "prumerge", budget, extra_token=0)
    torch.testing.assert_close(without[:, : budget - 1], expected[:, :-1], rtol=0, atol=rounding(expected, P))
    assert not torch.allclose(without[:, -1], expected[:, -1], rtol=0, atol=rounding(expected, P))


@pytest.mark.parametrize("budget", BUDGETS)
def test_vispruner_keeps_what_the_reference_keeps(conformance, budget):
    model, _, _, pixels = conformance
    states, _ = reduce(model, pixels, "vispruner", budget)
    assert torch.equal(model.model.token_reducer.kept(states), golden("vispruner")[f"k{budget}.kept"])


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("seed", [0, 1])
def test_vispruner_breaks_ties_and_rounds_as_the_reference(seed, budget):
    """Exact ties (duplicated features, attention in steps of 1/64) fall where torch's default sort puts them, and
    float16 features are compared in float16; the options `ties="stable"` and `precision="float32"` depart."""
    reference = golden("vispruner")
    features, attention = duplicated_features(seed)
    tied = VisionStates(patch_states=features, cls_state=features[:, 0], cls_attention=attention)
    assert torch.equal(VisPrunerReducer(budget, P).kept(tied)[0], reference[f"ties{seed}.k{budget}.kept"])
    stable = VisPrunerReducer(budget, P, ties="stable").kept(tied)[0]
    assert jaccard(stable, reference[f"ties{seed}.k{budget}.kept"]) < 1
    tokens = near_duplicate_tokens(seed).half()[None]
    attention = torch.rand(1, P, generator=torch.Generator().manual_seed(seed))
    half = VisionStates(patch_states=tokens, cls_state=tokens[:, 0], cls_attention=attention)
    assert torch.equal(VisPrunerReducer(budget, P).kept(half)[0], reference[f"half{seed}.k{budget}.kept"])
    upcast = VisPrunerReducer(budget, P, precision="float32").kept(half)[0]
    assert jaccard(upcast, reference[f"half{seed}.k{budget}.kept"]) < 1


def prefill(model, processor, image, layer: int) -> tuple[torch.Tensor, int, torch.Tensor]:
    """Prefill one prompt on `image` under the applied in-LLM method: the prompt positions of the image tokens that
    stage layer `layer` passed on (increasing), the image's first position, and the logits over the pruned prompt
    [T', V]."""
    inputs = build_inputs(processor, [llava_prompt(QUESTION)], [[image]], tokens_per_image(model))
    with torch.no_grad():
        logits = model(**inputs).logits[0]
    image_positions = (inputs["input_ids"][0] == model.config.image_token_id).nonzero().squeeze(1)
    origins = installed_pruner(model).origins(layer)[0]
    return origins[torch.isin(origins, image_positions)], int(image_positions[0]), logits


# A logit is a product of the final states with lm_head, and each of the 4 layers before sums D terms per product:
# states computed by another kernel or in another order (a few ulps) move the logits by at most L x D roundings.
LOGIT_TERMS = TEXT["num_hidden_layers"] * TEXT["hidden_size"]


def assert_logits(logits: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(logits, expected, rtol=0, atol=rounding(expected, LOGIT_TERMS))


@pytest.mark.parametrize("budget", BUDGETS)
def test_divprune_keeps_and_scores_as_the_reference(conformance, budget):
    """The reference's selection and its shorter LLM input, numbered 0..T'-1 (no position ids given to the LLM)."""
    model, processor, images, _ = conformance
    apply_method(model, "divprune", budget)
    reference = golden("divprune")
    for index, image in enumerate(images):
        kept, start, logits = prefill(model, processor, image, 0)
        assert torch.equal(kept - start, reference[f"k{budget}.kept"][index])  # indices into the image's P tokens
        assert_logits(logits, reference[f"image{index}.k{budget}.logits"])


def test_divprunes_original_positions_are_an_option_that_departs(conformance):
    """`positions="original"` keeps the same tokens (one stage, at the LLM input) with other positions."""
    model, processor, images, _ = conformance
    apply_method(model, "divprune", 64, positions="original")
    assert applied_method(model).options == {"positions": "original"}
    reference = golden("divprune")
    kept, start, logits = prefill(model, processor, images[0], 0)
    assert torch.equal(kept - start, reference["k64.kept"][0])
    assert not torch.allclose(logits, reference["image0.k64.logits"], rtol=0, atol=1e-3)


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("seed", [0, 1])
def test_divprune_computes_in_the_models_dtype_as_the_reference(seed, budget):
    tokens = near_duplicate_tokens(seed).half()
    expected = golden("divprune")[f"half{seed}.k{budget}.kept"]
    assert torch.equal(max_min_diversity(tokens, budget).sort().values, expected)
    assert jaccard(max_min_diversity(tokens, budget, upcast=True), expected) < 1  # precision="float32"


# The layer-mean budgets whose K_img at layer 1 of the 4-layer LLM is 4 pivots + 64 or + 16 picks:
# K_img = round((4 b - 1 P) / 3), 68 for b = 195 and 20 for b = 159.
DART_BUDGETS = {64: 195, 16: 159}


@pytest.mark.parametrize("picks", BUDGETS)
def test_dart_keeps_and_scores_as_the_reference(conformance, picks):
    model, processor, images, _ = conformance
    reference = golden("dart")
    apply_method(model, "dart", DART_BUDGETS[picks])
    assert applied_method(model).layer_tokens == (P, 4 + picks, 4 + picks, 4 + picks)
    for index, image in enumerate(images):
        kept, _, logits = prefill(model, processor, image, 1)
        assert torch.equal(kept, reference[f"image{index}.k{picks}.kept"])
        assert_logits(logits, reference[f"image{index}.k{picks}.logits"])  # every token at its own RoPE position
    apply_method(model, "dart", DART_BUDGETS[picks], pivot_order="norm")
    overlaps = [
        jaccard(prefill(model, processor, image, 1)[0], reference[f"image{index}.k{picks}.kept"])
        for index, image in enumerate(images)
    ]
    assert min(overlaps) < 1


def test_dart_generates_from_the_unpruned_prompts_length(conformance):
    """As the port decodes (generate's attention mask and cache positions count every image's P tokens): after the
    stage the kept tokens keep their positions and the new tokens follow the unpruned prompt."""
    model, processor, images, _ = conformance
    apply_method(model, "dart", DART_BUDGETS[64])
    inputs = build_inputs(processor, [llava_prompt(QUESTION)], [images[:1]], tokens_per_image(model))
    seen = []
    handle = model.model.language_model.layers[1].register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["position_ids"][0, -1].item()), with_kwargs=True
    )
    try:
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    finally:
        handle.remove()
    length = inputs["input_ids"].shape[1]  # the prompt with P placeholders per image
    assert seen == [length - 1, length, length + 1]  # prefill's last token, then the new ones
