"""The in-LLM reducers' defaults reproduce their official implementations: kept tokens at every stage and the logits
over the pruned prompt, on the same inputs.

The figures under tests/data/conformance/{fastv,pdrop,vscan,sparsevlm,cdpruner,holitom}/ were produced by running the
official code (repository, commit, file and function in each folder's README.md; framework glue replaced, nothing
else) on the conformance LLaVA of test_reducers_conformance.py (the same CLIP-L/14-336-shaped tower and projector
config, three images) with an 8-layer LLaMA, so that the papers' stage layers scaled to depth stay apart (PyramidDrop
2 / 4 / 6, SparseVLM 1 / 2 / 4, VScan 4, HoliTom 5, FastV 2), and for HoliTom on a five-frame video made from those
images. The references ran their LLM through the stock transformers decoder layers of the same weights (their own
layer classes are transformers 4.37's). Kept positions must agree exactly; merged tokens and logits to the float32
rounding their sums allow.

"At 64 / 16" names, per method, the count kept (FastV's after-layer count, CDPruner's tokens, PyramidDrop's and
SparseVLM's last stage) or the layer mean (VScan, HoliTom). With their papers' layers, PyramidDrop's and SparseVLM's
layer means cannot come down to 64 or 16 here (P tokens per layer until the first drop, a quarter / a tenth of the
way in: at least 145 at any depth for PyramidDrop, 73 on 8 layers for SparseVLM, 55 on 32): their figures are at the
layer means whose last stage keeps 64 / 16 (262 / 205 and 172 / 114).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from test_reducers_conformance import DATA, QUESTION, SEED, TEXT, VISION, conformance_images, golden, jaccard, rounding
from transformers import LlavaConfig, LlavaForConditionalGeneration

from vistog_bench.model import VisToGForConditionalGeneration, build_inputs, llava_prompt
from vistog_bench.reducers import applied_method, apply_method, tokens_per_image
from vistog_bench.reducers.llm_pruning import installed_pruner
from vistog_bench.testing.tiny_models import tiny_processor

LAYERS = 8
P = 576
GRID = 24
# A logit is a product of the final states with lm_head, and each of the L layers before sums D terms per product: a
# merged token summed in another order (a few ulps) moves the logits by at most L x D roundings of their scale.
LOGIT_TERMS = LAYERS * TEXT["hidden_size"]
PDROP_BUDGETS = {64: 262, 16: 205}  # layer means whose last stage (layer 6) keeps 64 / 16: 576, 276, 132, 64 / ...
SPARSEVLM_BUDGETS = {64: 172, 16: 114}  # ... 577 -> 277, 133, 64 / 172, 51, 16 (c = 10, 5, 3 / 13, 4, 2 recycled)


def conformance_llava_deep() -> LlavaForConditionalGeneration:
    torch.manual_seed(SEED)
    text = {**TEXT, "num_hidden_layers": LAYERS}
    return LlavaForConditionalGeneration(
        LlavaConfig(vision_config=VISION, text_config=text, image_token_index=4)
    ).eval()


def redrawn(image: Image.Image, box: tuple[int, int, int, int], seed: int) -> Image.Image:
    """`image` with the pixels of box (top, bottom, left, right) drawn again from numpy's generator `seed`."""
    pixels = np.array(image)
    top, bottom, left, right = box
    generator = np.random.default_rng(seed)
    pixels[top:bottom, left:right] = generator.integers(0, 256, (bottom - top, right - left, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def video_frames() -> list[Image.Image]:
    """Five frames: the half-grey image, twice a copy with a 12 x 8-patch block redrawn, a noise image, and that image
    with its top half redrawn: at tau = 0.8 the windows are frames 0-2 (480 static positions) and 3-4 (288)."""
    half_grey, noise = conformance_images()[2], conformance_images()[0]
    moved = redrawn(half_grey, (168, 336, 0, 112), 5)
    return [half_grey, moved, moved, noise, redrawn(noise, (0, 168, 0, 336), 6)]


@pytest.fixture(scope="module")
def deep():
    """The 8-layer conformance LLaVA behind our class, its processor and the three images; first, the inputs the
    figures were made on (a seeded model that initialises differently is not a conformance failure)."""
    stock, processor, images = conformance_llava_deep(), tiny_processor(), conformance_images()
    recorded = load_file(DATA / "inputs_llm.safetensors")
    with torch.no_grad():
        pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"]
        states = stock.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        projected = stock.model.multi_modal_projector(states)  # [3, P, 64]
        logits = torch.stack(
            [stock(**build_inputs(processor, [llava_prompt(QUESTION)], [[image]], P)).logits.sum() for image in images]
        )
    message = "the seeded 8-layer conformance model differs from the one the figures were made on"
    torch.testing.assert_close(
        projected.sum(dim=(1, 2)).double(),
        recorded["projected_sum"],
        rtol=0,
        atol=rounding(projected, projected[0].numel()),
        msg=message,
    )
    assert torch.allclose(logits.double(), recorded["logits_sum"], rtol=1e-5, atol=0), message
    return VisToGForConditionalGeneration.from_llava(stock, num_semantic_tokens=None).eval(), processor, images


def prefill(model, processor, frames, method: str, budget: int, observe=(), **options):
    """One prompt on `frames` under `method`: its inputs, the logits over the pruned prompt [T', V], the states
    entering each decoder layer of `observe` {layer: [T', D]}, and the first image position."""
    apply_method(model, method, budget, **options)
    inputs = build_inputs(processor, [llava_prompt(QUESTION, len(frames))], [frames], tokens_per_image(model))
    states = {}

    def keep(layer):
        def hook(module, args, kwargs):
            states[layer] = (kwargs["hidden_states"] if "hidden_states" in kwargs else args[0])[0]

        return hook

    layers = model.model.language_model.layers
    handles = [layers[layer].register_forward_pre_hook(keep(layer), with_kwargs=True) for layer in observe]
    try:
        with torch.no_grad():
            logits = model(**inputs).logits[0]
    finally:
        for handle in handles:
            handle.remove()
    start = int((inputs["input_ids"][0] == model.config.image_token_id).nonzero()[0])
    return inputs, logits, states, start


def visual_origins(model, layer: int, start: int, span: int) -> torch.Tensor:
    """The prompt positions (as the prompt entered the LLM) of the visual tokens stage `layer` passed on, in the
    order of the pruned sequence."""
    origins = installed_pruner(model).origins(layer)[0]
    return origins[(origins >= start) & (origins < start + span)]


def assert_logits(logits: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(logits, expected, rtol=0, atol=rounding(expected, LOGIT_TERMS))


@pytest.mark.parametrize("budget", [64, 16])
def test_fastv_keeps_and_scores_as_the_reference(deep, budget):
    model, processor, images = deep
    reference = golden("fastv")
    for index, image in enumerate(images):
        _, logits, _, start = prefill(model, processor, [image], "fastv", budget)
        assert torch.equal(visual_origins(model, 2, start, P), reference[f"image{index}.k{budget}.kept"])
        assert_logits(logits, reference[f"image{index}.k{budget}.logits"])


@pytest.mark.parametrize("picks", [64, 16])
def test_pdrop_keeps_every_stage_and_scores_as_the_reference(deep, picks):
    """Three stages (layers 2, 4, 6), each ranked with its own layer's q / k, the prompt renumbered after each."""
    model, processor, images = deep
    reference = golden("pdrop")
    for index, image in enumerate(images):
        _, logits, _, start = prefill(model, processor, [image], "pdrop", PDROP_BUDGETS[picks])
        for stage, layer in enumerate((2, 4, 6)):
            expected = reference[f"image{index}.k{picks}.stage{stage}.kept"]
            assert torch.equal(visual_origins(model, layer, start, P), expected)
        assert_logits(logits, reference[f"image{index}.k{picks}.logits"])


@pytest.mark.parametrize("option", [{"scores": "previous"}, {"positions": "original"}])
def test_pdrops_former_scoring_and_positions_are_options_that_depart(deep, option):
    model, processor, images = deep
    reference = golden("pdrop")
    _, logits, _, start = prefill(model, processor, images[:1], "pdrop", PDROP_BUDGETS[64], **option)
    assert applied_method(model).options == option
    assert not torch.allclose(logits, reference["image0.k64.logits"], rtol=0, atol=1e-3)
    if "scores" in option:
        assert jaccard(visual_origins(model, 2, start, P), reference["image0.k64.stage0.kept"]) < 1


@pytest.mark.parametrize("budget", [64, 16])
def test_vscans_llm_stage_keeps_and_scores_as_the_reference(deep, budget):
    """The reference's `layer_prune` run on the LLM input our encoder stage gives (its departure 1, merging before
    the projector, applied): K1 of the K0 tokens at layer 4, ranked with layer 4's own q / k, prompt renumbered."""
    model, processor, images = deep
    reference = golden("vscan")
    for index, image in enumerate(images):
        _, logits, _, start = prefill(model, processor, [image], "vscan", budget)
        first = tokens_per_image(model)  # K0
        assert torch.equal(visual_origins(model, 4, start, first) - start, reference[f"image{index}.k{budget}.kept"])
        assert_logits(logits, reference[f"image{index}.k{budget}.logits"])


@pytest.mark.parametrize("picks", [64, 16])
def test_sparsevlm_keeps_recycles_and_scores_as_the_reference(deep, picks):
    """Per stage (after layers 0, 1, 3), the figure lists the visual slots in order: the prompt position of each token
    kept as it was, -1 for a recycled one (those recycled at this stage follow the kept ones); the recycled states are
    the figure's `recycled` rows, in that order."""
    model, processor, images = deep
    reference = golden("sparsevlm")
    for index, image in enumerate(images):
        _, logits, states, start = prefill(model, processor, [image], "sparsevlm", SPARSEVLM_BUDGETS[picks], (1, 2, 4))
        for stage, layer in enumerate((1, 2, 4)):
            expected = reference[f"image{index}.k{picks}.stage{stage}.kept"]  # [count]
            recycled = expected < 0
            assert torch.equal(visual_origins(model, layer, start, P)[~recycled], expected[~recycled])
            merged = states[layer][start : start + expected.numel()][recycled]
            tokens = reference[f"image{index}.k{picks}.stage{stage}.recycled"]
            # a recycled token is the mean of at most P tokens' states: a sum of that many terms
            torch.testing.assert_close(merged, tokens, rtol=0, atol=rounding(tokens, P))
        assert_logits(logits, reference[f"image{index}.k{picks}.logits"])


@pytest.mark.parametrize("option", [{"raters": "stage"}, {"positions": "original"}, {"ties": "index"}])
def test_sparsevlms_former_behaviours_are_options_that_depart(deep, option):
    model, processor, images = deep
    reference = golden("sparsevlm")
    _, logits, _, _ = prefill(model, processor, images[:1], "sparsevlm", SPARSEVLM_BUDGETS[64], **option)
    assert applied_method(model).options == option
    assert not torch.allclose(logits, reference["image0.k64.logits"], rtol=0, atol=1e-3)


@pytest.mark.parametrize("budget", [64, 16])
def test_cdpruner_keeps_and_scores_as_the_reference(deep, budget):
    """The reference's DPP on our relevance (its departures 1-2 applied: LLM-space relevance, not negated, min-max
    per image), the pruned prompt renumbered as its shorter LLM input is."""
    model, processor, images = deep
    reference = golden("cdpruner")
    for index, image in enumerate(images):
        _, logits, _, start = prefill(model, processor, [image], "cdpruner", budget)
        assert torch.equal(visual_origins(model, 0, start, P) - start, reference[f"image{index}.k{budget}.kept"])
        assert_logits(logits, reference[f"image{index}.k{budget}.logits"])
    _, logits, _, _ = prefill(model, processor, images[:1], "cdpruner", budget, positions="original")
    assert not torch.allclose(logits, reference[f"image0.k{budget}.logits"], rtol=0, atol=1e-3)


def holitom_sequence(reference: dict, budget: int) -> torch.Tensor:
    """The reference's outer-stage tokens as (frame x P + position), in its order: per window its static tokens (at
    its first frame), then each frame's dynamic tokens."""
    order = []
    for window, (first, last) in enumerate(reference[f"k{budget}.windows"].tolist()):
        if last > first:
            order.append(reference[f"k{budget}.window{window}.static"] + first * P)
        order += [reference[f"k{budget}.frame{frame}.dynamic"] + frame * P for frame in range(first, last + 1)]
    return torch.cat(order)


@pytest.mark.parametrize("budget", [64, 16])
def test_holitom_merges_as_the_reference(deep, budget):
    """Outer stage: the reference's tokens in its order, but for the F K0 count (departure 1): the reference's
    rounding keeps 398 / 101 tokens where F K0 = 395 / 100, and ours leaves out, one per frame, the lowest-attention
    dynamic pick of the frames whose ceil rounded up the most. Inner stage (layer 5): the reference's
    `HOLITOM_k` branch run on our outer stage's output; logits over the pruned prompt."""
    model, processor, _ = deep
    reference = golden("holitom")
    frames = video_frames()
    _, logits, states, start = prefill(model, processor, frames, "holitom", budget, (0,))
    ours = visual_origins(model, 0, start, len(frames) * P) - start  # [F K0] frame x P + position
    theirs = holitom_sequence(reference, budget)
    dropped = theirs[~torch.isin(theirs, ours)]
    assert torch.equal(theirs[torch.isin(theirs, ours)], ours)
    assert dropped.numel() == theirs.numel() - ours.numel() == {64: 3, 16: 1}[budget]
    assert (dropped // P).unique().numel() == dropped.numel()  # one per frame
    attention = reference[f"k{budget}.attention"]  # [F, P] the vision attention the reference read
    for token in dropped.tolist():
        frame, picks = token // P, reference[f"k{budget}.frame{token // P}.dynamic"]
        assert attention[frame, token % P] == attention[frame, picks].min()
    tokens = reference[f"k{budget}.tokens"][torch.isin(theirs, ours)]
    # a static token blends its centre with the mean of at most P window means: sums of at most P terms
    torch.testing.assert_close(states[0][start : start + ours.numel()], tokens, rtol=0, atol=rounding(tokens, P))
    compact = {int(origin): slot for slot, origin in enumerate(installed_pruner(model).origins(0)[0].tolist())}
    inner = torch.tensor([compact[int(o)] - start for o in visual_origins(model, 5, start, len(frames) * P)])
    assert torch.equal(inner, reference[f"k{budget}.inner.kept"])
    assert_logits(logits, reference[f"k{budget}.logits"])


def test_holitoms_former_outer_stage_is_an_option_that_departs(deep):
    model, processor, _ = deep
    reference = golden("holitom")
    frames = video_frames()
    options = {"outer": "cluster", "max_window": 8, "ties": "index", "positions": "original"}
    _, _, _, start = prefill(model, processor, frames, "holitom", 64, **options)
    assert applied_method(model).options == options
    ours = visual_origins(model, 0, start, len(frames) * P) - start
    assert jaccard(ours, holitom_sequence(reference, 64)) < 1


@pytest.mark.parametrize(
    ("method", "budget", "stages"), [("pdrop", 262, (2, 4, 6)), ("holitom", 64, (0, 5)), ("divprune", 64, (0,))]
)
def test_generated_tokens_follow_the_renumbered_prompt(deep, method, budget, stages):
    """After a renumbering stage a generated token sits right after the pruned prompt (as the references decode:
    PyramidDrop subtracts the dropped tokens, HoliTom's and DivPrune's LLM sees the compact prompt), at every later
    stage too."""
    model, processor, images = deep
    frames = video_frames() if method == "holitom" else images[:1]
    apply_method(model, method, budget)
    inputs = build_inputs(processor, [llava_prompt(QUESTION, len(frames))], [frames], tokens_per_image(model))
    seen: dict[int, list] = {layer: [] for layer in stages}
    layers = model.model.language_model.layers
    handles = [
        layers[layer].register_forward_pre_hook(
            lambda module, args, kwargs, layer=layer: seen[layer].append(kwargs["position_ids"][0, -1].item()),
            with_kwargs=True,
        )
        for layer in stages
    ]
    try:
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    finally:
        for handle in handles:
            handle.remove()
    pruner = installed_pruner(model)
    for layer in stages:
        # the latest renumbered prompt's length: PyramidDrop renumbers at every stage, HoliTom at its outer one only
        renumbered = int(pruner.origins(layer if method == "pdrop" else stages[0])[0].ge(0).sum())
        assert seen[layer] == [renumbered - 1, renumbered, renumbered + 1], layer  # prefill's last, new tokens


@pytest.mark.parametrize("budget", [8, 64, 200, 500])
def test_holitom_keeps_exactly_f_k0_tokens(model, processor, budget):
    """Departure 1 of reducers/holitom.py: whatever the reference's rounding gives (ceil per frame, round per window)
    and however much the temporal merge alone would save (identical frames: all static, more than F K0 at high
    budgets), a sample keeps F K0 tokens, each from a distinct prompt slot."""
    half_grey, noise = conformance_images()[2], conformance_images()[0]
    for frames in ([half_grey] * 4, video_frames(), [noise, half_grey, noise]):
        apply_method(model, "holitom", budget)
        first = applied_method(model).layer_tokens[0]  # K0
        inputs = build_inputs(processor, [llava_prompt(QUESTION, len(frames))], [frames], tokens_per_image(model))
        with torch.no_grad():
            model(**inputs)
        start = int((inputs["input_ids"][0] == model.config.image_token_id).nonzero()[0])
        kept = visual_origins(model, 0, start, len(frames) * P)
        assert kept.numel() == len(frames) * first and kept.unique().numel() == kept.numel()
