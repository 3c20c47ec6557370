"""Training-free reducers on LLaVA-NeXT, LLaVA-OneVision and Qwen2.5-VL: selection at the LLM input.

    apply_family_method(model, "divprune", 25)    # Qwen2.5-VL: 25 % of each image's own tokens
    apply_family_method(model, "random", 576)     # LLaVA-NeXT: 576 tokens per image across its tiles

Glossary: T prompt length (each image expanded by the processor to its own count V_i), K_i the tokens image i keeps
(`ModelFamily.kept_tokens`: the family's budget rule), D LLM width.

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
Methods that read CLS attention, on the encoder scores of reducers/family_attention.py (one encoder layer hooked, q / k
recomputed for it in float32, the encoder's kernel unchanged): LLaVA-NeXT's CLS attention of each view at the
feature layer; OneVision (SigLIP) and Qwen2.5-VL have no CLS and take the published substitute, the mean attention
each token receives (VisPruner's SigLIP port), on Qwen2.5-VL per 2 x 2 PatchMerger group (selection after the
PatchMerger). Each selects among one image's run at the LLM input, view by view:
- views: NeXT / OneVision images are a base view then tiles (unpadded by the model; a OneVision tile grid that the
  model pools, anyres_max_9, is one view); Qwen2.5-VL images are one view. Newline tokens (NeXT / OneVision, one per
  row of the tile grid) are not candidates and are dropped, as VisionZip's LLaVA-NeXT run drops them, unless K_i
  exceeds the image's other tokens (then the first newline tokens fill the rest: K_i = V_i keeps all).
- budget split (`view_shares`): K_i splits over the views in proportion to their candidate tokens, largest
  remainder first (ties to the earlier view): the published LLaVA-NeXT runs give every view the same count (VisPruner
  and CDPruner's "32 x 5 = 160 tokens"), which this is for equal views.
- `visionzip` (reducers/visionzip.py's split and merge): per view, Kd dominant tokens by score, Kc = round(10 K / 64)
  contextual tokens, each a uniformly chosen remaining target plus the mean of the remaining tokens whose keys are
  closest to it. Departures: the merge averages the LLM-input (projected) states, since the projector runs per token
  before layer 0 (the reference merges before the projector); a contextual token takes its target's position (the
  reference appends contextual tokens after the dominant ones).
- `vispruner` (reducers/vispruner.py's duplicate removal): per view, floor(K r) important tokens by score (r = 0.5)
  and the rest thinned by iterative matching. Departure: cosine similarity of the LLM-input (projected) states (the
  reference: the encoder's output features); newline tokens dropped (the reference keeps them all beyond K).
Refused in one line (`refusal`): `prumerge` (it reads the encoder layer after the feature layer; on NeXT it is not
built per view, OneVision's and Qwen2.5-VL's feature layer is the last), methods inside the vision encoder (tome,
downsample, pool's 24 x 24 grid, vscan), in-LLM methods whose schedules assume one fixed count per image (fastv,
dart, pdrop, sparsevlm) or equal-sized frames (holitom), and vistog on a stock model (it needs a VisToG checkpoint
of the family, model/modeling_views.py, which serves vistog only).

Video (OneVision and Qwen2.5-VL take a video natively, `families`): a video's tokens are one run, like an image's, and
the family's rule applies to the whole run: Qwen2.5-VL keeps `budget` % of the video's own tokens, OneVision `budget`
tokens for the whole video (frames and newline together). A demanding user compares methods at one visual-token cost
per visual, whatever its frame count; the selection then chooses across frames (DivPrune's diversity and CDPruner's
DPP drop the frames' redundancy, random is uniform over the run); `max_frames` sets the video's unreduced size, and
the sample log records both counts. visionzip and vispruner score images only: under them a video sample fails alone
in one line (`family_sample_problem`, before its batch runs; a batch with a video that reaches the encoder hooks is
refused there with a UsageError).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import UsageError
from ..model.families import ModelFamily, family_of_model, image_runs, image_token_id, video_token_id
from .cdpruner import CDPrunerSelector
from .divprune import max_min_diversity
from .family_attention import EncoderScores, ImageScores, describe_scores
from .llm_pruning import (
    LLMPruner,
    SampleView,
    Selection,
    Stage,
    left_pad,
    merged_states,
)
from .registry import method_names, resolve, spec
from .spec import LLAVA
from .visionzip import contextual_targets, contextual_tokens, visionzip_split
from .vispruner import IMPORTANT_RATIO, remove_duplicates


def runs_on(model_type: str) -> tuple[str, ...]:
    """The methods that run on a stock checkpoint of `model_type` (their specs' `families`), in registry order."""
    return tuple(name for name in method_names() if _runs_on(name, model_type))


def _runs_on(method: str, model_type: str) -> bool:
    found = spec(method)
    return found.serves(model_type) and not found.trained


def refusal(family: ModelFamily, method: str, options: dict | None = None) -> str | None:
    """Why `method` (with `options`) does not run on a stock checkpoint of `family` (one line, its spec's reason), or
    None. Options are LLaVA-1.5's: here a method selects at the LLM input with the settings this module gives it."""
    if not _runs_on(method, family.model_type):
        reason = spec(method).family_refusal(family.model_type)
        return f"{method} on {family.model_type}: {reason}; runs here: {', '.join(runs_on(family.model_type))}"
    if options:
        return (
            f"{method} on {family.model_type}: its options ({', '.join(options)}) apply on LLaVA-1.5; here it selects "
            "at the LLM input as reducers/families.py does it"
        )
    return None


def random_run_positions(count: int, keep: int, seed: int) -> torch.Tensor:
    """`keep` distinct indices of 0..count-1, increasing, a function of (count, keep, seed) only."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randperm(count, generator=generator)[:keep].sort().values


@dataclass(frozen=True)
class RunSelector:
    """Which tokens of one image's run stay: `random`, `divprune` or `cdpruner`."""

    method: str
    seed: int = 0
    needs_attention: bool = False

    def choose(
        self, hidden: torch.Tensor, run: torch.Tensor, keep: int, instruction: torch.Tensor, image: int
    ) -> Selection:
        """Positions [keep] of `run` [V] (positions in the sample); hidden [T, D]; instruction [t] the positions of
        the text after the sample's last image (cdpruner's relevance); image: the run's index in the batch."""
        if self.method == "random":
            return Selection(run[random_run_positions(run.numel(), keep, self.seed).to(run.device)])
        if self.method == "cdpruner":
            view = SampleView(hidden=hidden, blocks=run[None], text=instruction, keys=None, attention=None)
            return Selection(CDPrunerSelector()(view, 0, keep).visual)
        return Selection(run[max_min_diversity(hidden[run], keep)])  # divprune


def view_shares(counts: torch.Tensor, keep: int) -> torch.Tensor:
    """`keep` split over views with `counts` [n] candidates each, in proportion, largest remainder first (ties to the
    earlier view): [n] long, summing to `keep`, each <= its count (keep <= counts.sum())."""
    exact = counts.double() * keep / counts.sum()
    shares = exact.floor().long()
    rest = keep - int(shares.sum())
    shares[torch.sort(exact - shares, descending=True, stable=True).indices[:rest]] += 1
    return shares


def visionzip_view(
    score: torch.Tensor, keys: torch.Tensor, states: torch.Tensor, keep: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """VisionZip on one view's n tokens: score [n], keys [n, dh], states [n, D] -> kept indices [keep] (dominant,
    then contextual targets) and their states [keep, D] (contextual ones merged, reducers/visionzip.py)."""
    num_dominant, num_contextual = visionzip_split(keep, score.numel())
    dominant = score.topk(num_dominant).indices.sort().values  # [Kd]
    is_dominant = torch.zeros_like(score, dtype=torch.bool)
    is_dominant[dominant] = True
    rest = (~is_dominant).nonzero().squeeze(1)  # [R], in order
    if not num_contextual:
        return dominant, states[dominant]
    targets = rest[contextual_targets(rest.numel(), num_contextual).to(rest.device)]  # [Kc]
    merged = contextual_tokens(states[rest][None], keys[rest][None], num_contextual)[0]  # [Kc, D]
    return torch.cat([dominant, targets]), torch.cat([states[dominant], merged])


def vispruner_view(score: torch.Tensor, states: torch.Tensor, keep: int, important_ratio: float) -> torch.Tensor:
    """VisPruner on one view's n tokens: score [n], states [n, D] -> kept indices [keep] (important by score, then
    the duplicates removed from the rest, reducers/vispruner.py)."""
    important = int(keep * important_ratio)
    order = score.argsort(descending=True, stable=True)  # [n]
    normed = F.normalize(states.float(), dim=-1)[None]  # [1, n, D]
    diverse = remove_duplicates(normed, order[None, important:], keep - important)[0]
    return torch.cat([order[:important], diverse])


@dataclass(frozen=True)
class ScoredRunSelector:
    """`visionzip` / `vispruner` on one image's run, view by view, from the encoder's scores (family_attention.py)."""

    method: str
    scores: EncoderScores
    important_ratio: float = IMPORTANT_RATIO
    needs_attention: bool = False  # reads the encoder's attention, not the LLM's

    def choose(
        self, hidden: torch.Tensor, run: torch.Tensor, keep: int, instruction: torch.Tensor, image: int
    ) -> Selection:
        scores: ImageScores = self.scores.image(image)
        if scores.score.numel() != run.numel():
            raise RuntimeError(
                f"{self.method}: image {image} has {run.numel()} tokens at the LLM input, {scores.score.numel()} scored"
            )
        states = hidden[run]  # [V, D]
        candidates = (scores.view >= 0).nonzero().squeeze(1)
        if keep >= candidates.numel():  # every candidate, then the first newline tokens
            newlines = (scores.view < 0).nonzero().squeeze(1)[: keep - candidates.numel()]
            return Selection(run[torch.cat([candidates, newlines])])
        members = [(scores.view == v).nonzero().squeeze(1) for v in scores.view[candidates].unique().tolist()]
        shares = view_shares(torch.tensor([m.numel() for m in members]), keep)
        kept, merged = [], []
        for local, share in zip(members, shares.tolist(), strict=True):
            if share == 0:
                continue
            if self.method == "visionzip":
                chosen, new = visionzip_view(scores.score[local], scores.keys[local], states[local], share)
                merged.append(new)
            else:
                chosen = vispruner_view(scores.score[local], states[local], share, self.important_ratio)
            kept.append(local[chosen])
        return Selection(run[torch.cat(kept)], torch.cat(merged) if merged else None)


class FamilyInputPruner(LLMPruner):
    """LLMPruner with one stage at layer 0 whose per-image keep follows the family's budget rule: images are the
    runs of image tokens, each keeps `family.kept_tokens(budget, V_i)`. (Stage.keep and tokens_per_image are 1,
    unused: the counts come from the runs.)"""

    def __init__(
        self,
        family: ModelFamily,
        budget: int | None,
        selector: RunSelector | ScoredRunSelector,
        token_id: int,
        video_token_id: int | None = None,
        vision_scores: str = "",
    ) -> None:
        super().__init__(stages=(Stage(0, 1),), selector=selector, tokens_per_image=1, image_token_id=token_id)
        self.family, self.budget = family, budget
        self.video_token_id = video_token_id  # a video's run is selected as an image's
        self.vision_scores = vision_scores  # what the encoder scores are, "" when the method reads none

    def install(self, model) -> None:
        super().install(model)
        scores = getattr(self.selector, "scores", None)
        if scores is not None:
            self._handles += scores.install(model)

    def keep_of(self, count: int) -> int:
        return self.family.kept_tokens(self.budget, count)

    def _start_forward(self, module, args, kwargs):
        """The shared pruner finds visual tokens by the image id: a video's tokens count as visual tokens too."""
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if self.video_token_id is None or input_ids is None:
            return super()._start_forward(module, args, kwargs)
        ids = torch.where(input_ids == self.video_token_id, self.image_token_id, input_ids)  # [B, T]
        return super()._start_forward(module, (), {**kwargs, "input_ids": ids})

    def _select(self, index: int, hidden_states: torch.Tensor, position_embeddings):
        """Positions kept per sample [B, T'] (left padded), and merged states (`merged_states`) or None."""
        prompt, rows, selections, image = self._prompt, [], [], 0
        for b in range(hidden_states.shape[0]):
            keep = ~prompt.image_mask[b]
            runs = image_runs(prompt.image_mask[b].long(), 1)
            text = (prompt.padding_mask[b] & keep).nonzero().squeeze(1)
            after = text[text > int(runs[-1][-1])] if runs else text
            instruction = after if after.numel() else text
            chosen = []
            for run in runs:
                chosen.append(
                    self.selector.choose(hidden_states[b], run, self.keep_of(run.numel()), instruction, image)
                )
                keep[chosen[-1].visual] = True
                image += 1
            rows.append(keep.nonzero().squeeze(1))
            merges = chosen and all(c.states is not None for c in chosen)
            selections.append(
                Selection(torch.cat([c.visual for c in chosen]), torch.cat([c.states for c in chosen]))
                if merges
                else None
            )
        positions, valid = left_pad(rows)
        prompt.kept_masks[self.stages[index].layer] = prompt.padding_mask.gather(1, positions) & valid
        return positions, merged_states(rows, positions, selections, hidden_states)


_STATE = "_vistog_family_method"


def apply_family_method(model, method: str, budget: int | None, *, seed: int = 0) -> int | None:
    """Configure a family's model for `method` at `budget` (its rule: `ModelFamily.check_budget`; None: the family's
    `none_budget`); replaces what an earlier call installed. Returns the budget (None: all tokens)."""
    family = family_of_model(model)
    if family.model_type == LLAVA:
        raise UsageError("apply_family_method takes a LLaVA-NeXT / OneVision / Qwen2.5-VL model")
    found, options = resolve(method)
    method = found.name
    semantic = getattr(model, "num_semantic_tokens", None)  # a VisToG model per view (modeling_views.py)
    if semantic is not None:
        if method != "vistog":
            raise UsageError(f"method {method} runs on the stock model; this is a VisToG checkpoint (N={semantic})")
        if budget not in (None, semantic):
            raise UsageError(f"this VisToG checkpoint gives {semantic} tokens per view, not budget {budget}")
        object.__setattr__(model, _STATE, (method, semantic, None))
        return semantic
    problem = refusal(family, method, options)
    if problem:
        raise UsageError(problem)
    full = family.none_budget(model.config)
    budget = full if budget is None else family.check_budget(budget)
    remove_family_method(model)
    if method == "none":
        if budget not in (None, full):
            raise UsageError(
                f"method none keeps every visual token: leave the budget out (or {full} for {family.model_type}), "
                f"got {budget}"
            )
        object.__setattr__(model, _STATE, (method, budget, None))
        return budget
    scored = spec(method).family_scores
    selector = ScoredRunSelector(method, EncoderScores(model)) if scored else RunSelector(method, seed)
    pruner = FamilyInputPruner(
        family, budget, selector, image_token_id(model), video_token_id(model), describe_scores(model) if scored else ""
    )
    pruner.install(model)
    object.__setattr__(model, _STATE, (method, budget, pruner))
    return budget


def remove_family_method(model) -> None:
    state = model.__dict__.pop(_STATE, None)
    if state is not None and state[2] is not None:
        state[2].remove()


def family_vision_scores(model) -> str:
    """What the installed method reads from the vision encoder (and with which kernel), "" if nothing."""
    state = model.__dict__.get(_STATE)
    return state[2].vision_scores if state is not None and state[2] is not None else ""


def family_sample_problem(model, images: int, videos: int = 0) -> str | None:
    """Why a sample of `images` images and `videos` videos cannot be reduced per visual on `model` (None if it can,
    or if `model` is not a family model): OneVision's template renders a sample's images (then its videos) side by
    side, so their tokens form one run and the per-visual rule has no boundary to apply; the scored methods read
    encoder attention of images only, so a video sample fails alone (not its whole batch inside generate)."""
    state = model.__dict__.get(_STATE)
    if state is None or state[2] is None:  # nothing installed by apply_family_method
        return None
    family = family_of_model(model)
    if videos and spec(state[0]).family_scores:
        served = (m for m in runs_on(family.model_type) if not spec(m).family_scores)
        return (
            f"{state[0]} on {family.model_type} reads encoder attention of images only; a video sample is served "
            f"with {', '.join(served)}"
        )
    images += videos
    if family.model_type != "llava_onevision" or images < 2:
        return None
    return (
        f"{state[0]} on llava_onevision reduces per image, but its chat template puts a sample's {images} images / "
        "videos side by side (one run of visual tokens); serve multi-image (or image + video) samples with method none"
    )


__all__ = [
    "FamilyInputPruner",
    "RunSelector",
    "ScoredRunSelector",
    "apply_family_method",
    "family_sample_problem",
    "family_vision_scores",
    "random_run_positions",
    "refusal",
    "remove_family_method",
    "runs_on",
    "view_shares",
    "visionzip_view",
    "vispruner_view",
]
