"""What every model family answers: the `ModelFamily` interface, and the pieces the families share.

A family is one kind of checkpoint (LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision, Qwen2.5-VL), chosen once from
`config.model_type` (`families.family_for`). Its object answers every question the adapter, the sweep, the profiler
and the trainer would otherwise branch on: how to load it, how prompts and media become model inputs, how a budget
counts, what the LLM receives, which modules are the profiler's stages, what a training stage trains.

Glossary: B batch, T prompt length, K images of a batch, run: one image's (or video's) contiguous positions of
visual tokens in a sample's ids; unreduced: the count the processor gives before any reduction; received: what the
LLM gets; budget rule: how a budget counts (None: tokens per image, LLaVA-1.5; PER_IMAGE_TOTAL: per image summed over
its tiles; PERCENT_OF_OWN: a percentage of the image's own count).

    family = family_for(config)                             # model/families/__init__.py
    model = family.load(path, config, dtype=torch.float32)  # transformers' class (or ours for VisToG)
    batch = family.build_inputs(model, processor, prompts, images)
    counts = family.visual_token_counts(model, batch, budget, images_per_sample=[1, 1])
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature

from ...errors import UsageError
from ..processing import VideoFrames, family_inputs, image_runs, image_token_id, video_token_id, visual_runs

PER_IMAGE_TOTAL = "per_image_total"  # budget = visual tokens of one image, summed over its tiles
PERCENT_OF_OWN = "percent_of_own"  # budget = percentage of the image's own (size-dependent) count
# How a native-video family samples a video's frames: as lmms-eval samples them for that model (`video_frame_indices`).
UNIFORM_FRAMES = "uniform"  # llava_hf (OneVision): max_frames, np.linspace(0, n - 1, max_frames, dtype=int)
EVEN_FRAMES = "even"  # qwen2_5_vl: min(max_frames, n) floored to even (>= 2), qwen_vl_utils' rounded linspace
LLAVA_STAGES = ("pretrain-vision", "llava")  # training stages that train stock LLaVA (train.stages)


@dataclass(frozen=True)
class ImageGeometry:
    """One image on a family, from its config alone (no processor, no weights)."""

    tokens: int  # visual tokens the LLM receives with no reducer
    views: int  # NeXT / OneVision: base view + tiles (1 otherwise)
    grid: tuple[int, int] | None  # Qwen2.5-VL: the patch grid (h, w) after resizing; None otherwise


@dataclass
class ModelBatch:
    """A batch as the model takes it, and what the processor gave before the model's own reduction."""

    inputs: BatchFeature  # input_ids / attention_mask [B, T], pixel_values, ... (the model's keyword arguments)
    unreduced: list[list[int]] | None = None  # per sample, per run, the processor's count; None: the runs' own


@dataclass(frozen=True)
class VisualTokenCounts:
    """Visual tokens of a batch's samples: `total` the LLM received; per sample (unreduced, received) per run, in
    prompt order, where the family records them (None for LLaVA-1.5, whose count per image is the budget)."""

    total: int
    per_sample: list[tuple[list[int], list[int]]] | None = field(default=None)


def uniform_frame_indices(total: int, max_frames: int) -> list[int]:
    """`max_frames` indices spread over a `total`-frame video, np.linspace(0, total - 1, max_frames, dtype=int)
    (lmms-eval's llava_hf `load_video`; a shorter video repeats frames)."""
    return np.linspace(0, total - 1, max_frames, dtype=int).tolist()


def even_frame_indices(total: int, max_frames: int) -> list[int]:
    """nframes = min(max_frames, total) floored to even, at least 2 (lmms-eval 0.7.3 models/chat/qwen2_5_vl.py), at
    torch.linspace(0, total - 1, nframes).round() (qwen_vl_utils 0.0.14 `_read_video_decord`, which it calls)."""
    count = max(2, min(max_frames, total) // 2 * 2)
    return torch.linspace(0, total - 1, count).round().long().tolist()


def check_semantic_tokens(path, have: int, asked: int | None) -> None:
    """A saved VisToG checkpoint trains at its own N: `--num-semantic-tokens` may only repeat it."""
    if asked not in (None, have):
        raise UsageError(f"{path} has {have} semantic tokens, --num-semantic-tokens asks {asked}")


def entry_point(spec: str):
    """The object a lazy "module:attr" entry names, imported on first use (as lmms-eval registers its models): a
    family names the reducers' entry point this way, so model/ imports nothing from reducers/."""
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def find_module(root, path: tuple[str, ...]):
    """The submodule at `path` (attribute names) under `root`, None where one is missing."""
    module = root
    for name in path:
        module = getattr(module, name, None)
        if module is None:
            return None
    return module


class ModelFamily:
    """One family's answers. Subclasses set the class attributes and override what differs; the defaults below are
    the ones most families share.

    Facts (class attributes): `model_type` the stock checkpoint's config.model_type, also the family's name in
    records and messages (LLaVA-1.5: "llava"); `model_types` every config.model_type it loads (stock and VisToG);
    `label` how messages name it; `budget_rule`; `encoder` what reads the pixels; `video_frames` (UNIFORM_FRAMES /
    EVEN_FRAMES: a native video path; None: a video's frames are images) and `video_pixels` (min, max) per frame;
    `vistog_per_view` (a VisToG checkpoint serves its N per view, whatever the budgets); `hook_flops` (the profiler
    derives FLOPs from the shapes its hooks see; else `vistog-bench profile --shape NAME --analytic`);
    `controlled_profiling` (`profile --model` measures budgets by rebuilding the model); `stage_paths` and
    `required_stages` (the profiler's stage modules: attribute paths from the model)."""

    model_type: str = ""
    model_types: tuple[str, ...] = ()
    label: str = ""
    budget_rule: str | None = None
    encoder: str = ""
    video_frames: str | None = None
    video_pixels: tuple[int, int] | None = None
    vistog_per_view: bool = False
    hook_flops: bool = False
    controlled_profiling: bool = False
    method_entry: str = "vistog_bench.reducers.families:apply_family_method"
    stage_paths: dict[str, tuple[str, ...]] = {
        "vision": ("model", "vision_tower"),
        "grouping": ("model", "grouping"),
        "projector": ("model", "multi_modal_projector"),
        "llm": ("model", "language_model"),
        "lm_head": ("lm_head",),
    }
    required_stages: frozenset[str] = frozenset({"llm", "lm_head"})
    full_budget_name: str = "full budget"  # what `full_budget` is, in messages

    @property
    def budget_unit(self) -> str:
        """What a budget counts, in the out-of-range message."""
        return f"visual tokens per image on {self.model_type}, summed over its tiles (the most one image gives)"

    # -- checkpoints ---------------------------------------------------------------------------------------------------
    def stock_class(self):
        """transformers' model class of the family's stock checkpoints."""
        raise NotImplementedError

    def load(self, path, config, **load_kwargs):
        """The model of the checkpoint at `path` whose config is `config` (safetensors, no remote code)."""
        from ..loading import load_pretrained

        return load_pretrained(self.stock_class(), path, **load_kwargs)

    def num_semantic_tokens(self, config) -> int | None:
        """N of a VisToG checkpoint's config (per view where `vistog_per_view`), None for a stock one."""
        return None

    def check_checkpoint(self, path) -> None:
        """UsageError when the checkpoint's files leave to a default what they must say (nothing, unless a family
        says otherwise)."""

    # -- budgets -------------------------------------------------------------------------------------------------------
    def full_budget(self, config) -> int:
        """The budget recorded for `none` (nothing reduced) and the most any budget may be."""
        raise NotImplementedError

    def none_budget(self, config) -> int | None:
        """The budget `none` is set up with (None: every visual token stays, whatever one image gives)."""
        return self.full_budget(config)

    def check_budget(self, budget, full: int | None = None) -> int | None:
        """`budget` as the rule reads it (UsageError naming the rule otherwise), within 1..`full` when given; None
        stays None (the family's default)."""
        if budget is None:
            return None
        if isinstance(budget, bool) or not isinstance(budget, int):
            raise UsageError(f"budget must be an integer, got {budget!r}")
        problem = self.budget_problem(budget)
        if problem:
            raise UsageError(f"{self.model_type}: {problem}; got {budget}")
        if full is not None and not 0 < budget <= full:
            raise UsageError(f"budget {budget} is out of range: 1..{full} {self.budget_unit}")
        return budget

    def budget_problem(self, budget: int) -> str | None:
        """What the budget rule says against an integer `budget`, None if it holds."""
        if self.budget_rule == PERCENT_OF_OWN and not 1 <= budget <= 100:
            return "budget is a percentage of each image's own visual tokens, in 1..100"
        if self.budget_rule == PER_IMAGE_TOTAL and budget < 1:
            return "budget is visual tokens per image (all tiles), >= 1"
        return None

    def kept_tokens(self, budget: int | None, count: int) -> int:
        """Visual tokens an image (or video) whose unreduced count is `count` keeps at `budget` (None: all)."""
        if budget is None:
            return count
        if self.budget_rule == PERCENT_OF_OWN:
            return max(1, min(count, math.floor(count * budget / 100 + 0.5)))
        return min(count, budget)

    # -- serving -------------------------------------------------------------------------------------------------------
    def apply_method(self, model, method: str, budget: int | None, seed: int = 0) -> int | None:
        """Set `model` up for `method` at `budget` (None: the family's default) through the reducers' entry point
        (`method_entry`); returns the budget it serves."""
        return entry_point(self.method_entry)(model, method, budget, seed=seed)

    def tokens_per_placeholder(self, model) -> int:
        """Tokens each image placeholder of a prompt expands to; 0: the processor expands it to the image's own
        count."""
        return 0

    def native_video(self, model) -> bool:
        """Whether a video goes to `model` as a video (its processor's `videos=`), not as frames."""
        return self.video_frames is not None

    def video_frame_indices(self, total: int, max_frames: int) -> list[int]:
        """Frame indices of a `total`-frame video under the family's sampling (lmms-eval 0.7.3's for the same
        model)."""
        if self.video_frames == UNIFORM_FRAMES:
            return uniform_frame_indices(total, max_frames)
        if self.video_frames == EVEN_FRAMES:
            return even_frame_indices(total, max_frames)
        raise ValueError(f"{self.model_type} has no video path; its frames are images")

    def build_inputs(
        self,
        model,
        processor,
        prompts: Sequence[str],
        images: Sequence[Sequence[Image.Image]],
        videos: Sequence[Sequence[VideoFrames]] = (),
        tokens_per_placeholder: int = 0,
    ) -> ModelBatch:
        """The model's inputs for rendered `prompts` and each sample's images and videos (left padded)."""
        pixels = self.video_pixels if self.native_video(model) else None
        return ModelBatch(family_inputs(processor, prompts, images, videos, pixels))

    def visual_token_counts(
        self, model, batch: ModelBatch, budget: int | None, images_per_sample: Sequence[int]
    ) -> VisualTokenCounts:
        """Visual tokens the LLM receives for the batch at the served `budget`: per run, the run's own (or the
        batch's `unreduced`) count and what the budget rule keeps of it."""
        per_sample, total = [], 0
        for b, ids in enumerate(batch.inputs["input_ids"]):
            runs = [int(run.numel()) for run in visual_runs(ids, model)]
            unreduced = batch.unreduced[b] if batch.unreduced is not None else runs
            kept = runs if batch.unreduced is not None else [self.kept_tokens(budget, n) for n in runs]
            per_sample.append((unreduced, kept))
            total += sum(kept)
        return VisualTokenCounts(total, per_sample)

    # -- profiling -----------------------------------------------------------------------------------------------------
    def stage_modules(self, model) -> dict:
        """{stage: module} of the profiler's stages the model has (`stage_paths`); TypeError when one of
        `required_stages` is missing."""
        found = {}
        for stage, path in self.stage_paths.items():
            module = find_module(model, path)
            if module is not None:
                found[stage] = module
        missing = self.required_stages - found.keys()
        if missing:
            raise TypeError(f"not a LLaVA / VisToG model: no {', '.join(sorted(missing))} module")
        return found

    def image_geometry(self, config, height: int, width: int) -> ImageGeometry:
        """One image of height x width px: its unreduced visual tokens and what the encoder runs on."""
        raise NotImplementedError

    def vision_sizes(self, config) -> dict:
        """The encoder's sizes the analytic FLOP formulas read (profiling.flops.FamilyShape's vision fields)."""
        raise NotImplementedError

    # -- training ------------------------------------------------------------------------------------------------------
    def training_model(
        self, stage: str, path, config, *, has_weights: bool, num_semantic_tokens: int | None, dtype, seed: int
    ):
        """The model a training stage starts from (`vistog-bench train --stage`), or a UsageError saying why the
        checkpoint cannot be trained at that stage."""
        if stage in LLAVA_STAGES:
            raise UsageError(f"stage {stage} trains a LLaVA checkpoint; {path} holds a {config.model_type!r} model")
        if not has_weights:
            raise UsageError(f"stage {stage} starts from trained weights; {path} has no *.safetensors")
        return self.vistog_training_model(stage, path, config, num_semantic_tokens, dtype, seed)

    def vistog_training_model(self, stage: str, path, config, num_semantic_tokens: int | None, dtype, seed: int):
        """The VisToG model a VisToG stage trains: fresh parts on a stock checkpoint (`num_semantic_tokens` N) or
        the saved VisToG checkpoint."""
        raise UsageError(
            f"stage {stage}: VisToG wraps LLaVA-1.5, LLaVA-NeXT or LLaVA-OneVision; {path} holds "
            f"a {config.model_type!r} model"
        )

    def trainable_modules(self, model, stage: str, train_llm: bool = True, train_vision: bool = False) -> list:
        """The modules (and parameters) a stage trains (transformers' LLaVA layout: model.model.vision_tower /
        multi_modal_projector / language_model, model.lm_head); everything else stays frozen."""
        inner = model.model
        if stage == "pretrain-vision":
            return [inner.vision_tower]
        llm = [inner.language_model, model.lm_head]
        if stage == "llava":
            return (
                [inner.multi_modal_projector]
                + (llm if train_llm else [])
                + ([inner.vision_tower] if train_vision else [])
            )
        return self.vistog_parts(model) + [inner.multi_modal_projector] + (llm if stage == "vistog-stage2" else [])

    def vistog_parts(self, model) -> list:
        """VisToG's own parts of a VisToG model: the grouping layer and the semantic tokens."""
        return [model.grouping, model.semantic_tokens]

    def view_tokens(self, model):
        """The anyres views x N count a VisToG model expands each image to (`ViewTokens`), None where every image
        gives a fixed count (`tokens_per_placeholder`)."""
        return None


__all__ = [
    "EVEN_FRAMES",
    "LLAVA_STAGES",
    "ImageGeometry",
    "ModelBatch",
    "ModelFamily",
    "PERCENT_OF_OWN",
    "PER_IMAGE_TOTAL",
    "UNIFORM_FRAMES",
    "VideoFrames",
    "VisualTokenCounts",
    "check_semantic_tokens",
    "entry_point",
    "even_frame_indices",
    "family_inputs",
    "find_module",
    "image_runs",
    "image_token_id",
    "uniform_frame_indices",
    "video_token_id",
    "visual_runs",
]
