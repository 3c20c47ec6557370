"""Training-free reducers on LLaVA-NeXT, LLaVA-OneVision and Qwen2.5-VL: selection at the LLM input.

    apply_family_method(model, "divprune", 25)    # Qwen2.5-VL: 25 % of each image's own tokens
    apply_family_method(model, "random", 576)     # LLaVA-NeXT: 576 tokens per image across its tiles

Glossary: T prompt length (each image expanded by the processor to its own count V_i), K_i the tokens image i keeps
(`families.kept_tokens`: the family's budget rule), D LLM width.

Where: a stage at decoder layer 0 of the shared in-LLM pruner (`reducers.llm_pruning.LLMPruner`, hooks only): the
stock model runs its vision encoder, projector / PatchMerger and placeholder merge unchanged, and layer 0 onwards sees
sum K_i visual tokens; kept tokens keep their original positions (1-D RoPE for NeXT's Mistral and OneVision's Qwen2,
the 3-D mRoPE rows for Qwen2.5-VL), as VisionZip's and DivPrune's Qwen2.5-VL ports keep them. Each image is one
contiguous run of image tokens (`families.image_runs`), so per-image counts may differ inside a batch.

Methods that apply (they read only the visual tokens at the LLM input, which every family has):
- `random`: a seeded uniform choice of K_i of the V_i tokens of each image, in order (the draw depends on the seed
  and V_i only).
- `divprune`: DivPrune's max-min diversity on the projected tokens (reducers/divprune.py, unchanged).
- `cdpruner`: CDPruner's conditional DPP (reducers/cdpruner.py, unchanged, its departures included: relevance to the
  instruction's LLM input embeddings, the text after the sample's last image), per image.
Refused in one line (`refusal`): methods that read CLS attention (visionzip, vispruner, prumerge: none of these
encoders gives the LLM a CLS token; the published substitutes, mean attention or selection after the PatchMerger, are
not built here), methods inside the vision encoder (tome, downsample, pool's 24 x 24 grid, vscan), in-LLM methods
whose schedules assume one fixed count per image (fastv, dart, pdrop, sparsevlm) or equal-sized frames (holitom), and
vistog on a stock model (it needs a VisToGFamily checkpoint, families_vistog.py, which serves vistog only).

Video (OneVision and Qwen2.5-VL take a video natively, `families`): a video's tokens are one run, like an image's, and
the family's rule applies to the whole run: Qwen2.5-VL keeps `budget` % of the video's own tokens, OneVision `budget`
tokens for the whole video (frames and newline together). A demanding user compares methods at one visual-token cost
per visual, whatever its frame count; the selection then chooses across frames (DivPrune's diversity and CDPruner's
DPP drop the frames' redundancy, random is uniform over the run); `max_frames` sets the video's unreduced
size, and the sample log records both counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UsageError
from ..reducers.cdpruner import CDPrunerSelector
from ..reducers.divprune import max_min_diversity
from ..reducers.llm_pruning import LLMPruner, SampleView, Selection, Stage, left_pad
from .families import (
    Family,
    check_family_budget,
    image_runs,
    image_token_id,
    kept_tokens,
    model_family,
    video_token_id,
)

FAMILY_METHODS = ("none", "random", "divprune", "cdpruner")
_REASONS = {
    "vistog": "needs a VisToG checkpoint of this family (VisToGFamily.save_pretrained; NeXT / OneVision only)",
    "visionzip": "reads CLS attention; the encoder gives the LLM no CLS token",
    "vispruner": "reads CLS attention; the encoder gives the LLM no CLS token",
    "prumerge": "reads CLS attention; the encoder gives the LLM no CLS token",
    "tome": "merges inside LLaVA-1.5's CLIP encoder; not wired into this family's encoder",
    "downsample": "downsamples LLaVA-1.5's 24 x 24 patch grid inside the encoder",
    "pool": "pools LLaVA-1.5's 24 x 24 patch grid; anyres / dynamic-resolution grids differ per image",
    "vscan": "its first stage works inside LLaVA-1.5's encoder",
    "holitom": "merges a video's equal-sized frames; the adapter feeds these families images of their own sizes",
}
_FIXED_COUNT = "its schedule assumes one fixed visual-token count per image"


def refusal(family: Family, method: str) -> str | None:
    """Why `method` does not run on `family` (one line), or None."""
    if method in FAMILY_METHODS:
        return None
    reason = _REASONS.get(method, _FIXED_COUNT)
    return f"{method} on {family.model_type}: {reason}; runs here: {', '.join(FAMILY_METHODS)}"


def random_run_positions(count: int, keep: int, seed: int) -> torch.Tensor:
    """`keep` distinct indices of 0..count-1, increasing, a function of (count, keep, seed) only."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randperm(count, generator=generator)[:keep].sort().values


@dataclass(frozen=True)
class RunSelector:
    """Which tokens of one image's run stay: `random`, `divprune` or `cdpruner` (a Selector of the shared pruner)."""

    method: str
    seed: int = 0
    needs_attention: bool = False

    def choose(self, hidden: torch.Tensor, run: torch.Tensor, keep: int, instruction: torch.Tensor) -> torch.Tensor:
        """Positions [keep] of `run` [V] (positions in the sample); hidden [T, D]; instruction [t] the positions of
        the text after the sample's last image (cdpruner's relevance)."""
        if self.method == "random":
            return run[random_run_positions(run.numel(), keep, self.seed).to(run.device)]
        if self.method == "cdpruner":
            view = SampleView(hidden=hidden, blocks=run[None], text=instruction, keys=None, attention=None)
            return CDPrunerSelector()(view, 0, keep).visual
        return run[max_min_diversity(hidden[run], keep)]  # divprune

    def __call__(self, view: SampleView, stage: int, keep: int) -> Selection:
        after = view.text[view.text > view.blocks.max()]
        instruction = after if after.numel() else view.text
        return Selection(torch.cat([self.choose(view.hidden, block, keep, instruction) for block in view.blocks]))


class FamilyInputPruner(LLMPruner):
    """LLMPruner with one stage at layer 0 whose per-image keep follows the family's budget rule: images are the
    runs of image tokens, each keeps `kept_tokens(family, budget, V_i)`. (Stage.keep and tokens_per_image are 1,
    unused: the counts come from the runs.)"""

    def __init__(self, family: Family, budget: int | None, method: str, seed: int, token_id: int,
                 video_token_id: int | None = None) -> None:
        super().__init__(stages=(Stage(0, 1),), selector=RunSelector(method, seed), tokens_per_image=1,
                         image_token_id=token_id)  # fmt: skip
        self.family, self.budget = family, budget
        self.video_token_id = video_token_id  # a video's run is selected as an image's

    def keep_of(self, count: int) -> int:
        return kept_tokens(self.family, self.budget, count)

    def _start_forward(self, module, args, kwargs):
        """The shared pruner finds visual tokens by the image id: a video's tokens count as visual tokens too."""
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if self.video_token_id is None or input_ids is None:
            return super()._start_forward(module, args, kwargs)
        ids = torch.where(input_ids == self.video_token_id, self.image_token_id, input_ids)  # [B, T]
        return super()._start_forward(module, (), {**kwargs, "input_ids": ids})

    def _select(self, index: int, hidden_states: torch.Tensor, position_embeddings):
        """Positions kept per sample [B, T'] (left padded); no merged states."""
        prompt, rows = self._prompt, []
        for b in range(hidden_states.shape[0]):
            keep = ~prompt.image_mask[b]
            runs = image_runs(prompt.image_mask[b].long(), 1)
            text = (prompt.padding_mask[b] & keep).nonzero().squeeze(1)
            after = text[text > int(runs[-1][-1])] if runs else text
            instruction = after if after.numel() else text
            for run in runs:
                keep[self.selector.choose(hidden_states[b], run, self.keep_of(run.numel()), instruction)] = True
            rows.append(keep.nonzero().squeeze(1))
        positions, valid = left_pad(rows)
        prompt.kept_masks[self.stages[index].layer] = prompt.padding_mask.gather(1, positions) & valid
        return positions, None


_STATE = "_vistog_family_method"


def apply_family_method(model, method: str, budget: int | None, *, seed: int = 0) -> int | None:
    """Configure a family's model for `method` at `budget` (its rule: `families.check_family_budget`); replaces
    what an earlier call installed. Returns the budget (None: all tokens)."""
    family = model_family(model)
    if family is None:
        raise UsageError("apply_family_method takes a LLaVA-NeXT / OneVision / Qwen2.5-VL model")
    semantic = getattr(model, "num_semantic_tokens", None)  # a VisToGFamily
    if semantic is not None:
        if method != "vistog":
            raise UsageError(f"method {method} runs on the stock model; this is a VisToG checkpoint (N={semantic})")
        if budget not in (None, semantic):
            raise UsageError(f"this VisToG checkpoint gives {semantic} tokens per view, not budget {budget}")
        object.__setattr__(model, _STATE, (method, semantic, None))
        return semantic
    problem = refusal(family, method)
    if problem:
        raise UsageError(problem)
    budget = check_family_budget(family, budget)
    remove_family_method(model)
    if method == "none":
        if budget not in (None, family.full_budget):
            raise UsageError(f"method none keeps every visual token: leave the budget out (or {family.full_budget}"
                             f" for {family.model_type}), got {budget}")  # fmt: skip
        object.__setattr__(model, _STATE, (method, budget, None))
        return budget
    pruner = FamilyInputPruner(family, budget, method, seed, image_token_id(model), video_token_id(model))
    pruner.install(model)
    object.__setattr__(model, _STATE, (method, budget, pruner))
    return budget


def remove_family_method(model) -> None:
    state = model.__dict__.pop(_STATE, None)
    if state is not None and state[2] is not None:
        state[2].remove()


def family_sample_problem(model, images: int) -> str | None:
    """Why a sample of `images` visuals (images and videos) cannot be reduced per visual on `model` (None if it can,
    or if `model` is not a family model): OneVision's template renders a sample's images (then its videos) side by
    side, so their tokens form one run and the per-visual rule has no boundary to apply."""
    state = model.__dict__.get(_STATE)
    family = model_family(model)
    if state is None or state[2] is None or family is None or family.model_type != "llava_onevision" or images < 2:
        return None
    return (f"{state[0]} on llava_onevision reduces per image, but its chat template puts a sample's {images} images / videos "
            "side by side (one run of visual tokens); serve multi-image (or image + video) samples with method none")


def family_token_counts(model, runs: list[torch.Tensor]) -> tuple[list[int], list[int]]:
    """(unreduced, received) visual tokens of each image of one sample under what is installed on `model`."""
    state = model.__dict__.get(_STATE)
    unreduced = [int(run.numel()) for run in runs]
    if state is None or state[2] is None:
        return unreduced, unreduced
    return unreduced, [state[2].keep_of(n) for n in unreduced]


__all__ = ["FAMILY_METHODS", "FamilyInputPruner", "apply_family_method", "family_sample_problem", "family_token_counts", "refusal",
           "remove_family_method", "random_run_positions", "RunSelector"]
