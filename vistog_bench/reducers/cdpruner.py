"""`cdpruner`: a conditional DPP over instruction-weighted similarity, at the LLM input.

Zhang, Liu, et al. "Beyond Attention or Similarity: Maximizing Conditional Diversity for Token Pruning in MLLMs."
NeurIPS 2025 (arXiv 2506.10967). Reference: Theia-4869/CDPruner @ 9541616, `llava/model/llava_arch.py`
(`encode_images`).

Glossary: V visual tokens of one image (P), K budget, t instruction tokens, D LLM width.

As the reference: similarity S = cos between the projected visual tokens [V, V]; relevance r_i = mean over the
instruction of cos(visual token i, instruction token), min-max normalised ((r - min + 1e-6) / (max - min)); the
kernel L = diag(r) S diag(r); the K tokens are chosen by the fast greedy MAP inference of a DPP (Chen, Zhang, Zhou,
NeurIPS 2018: incremental Cholesky rows c_i and residual gains d_i^2, the largest gain taken each step); kept tokens
enter the LLM in spatial order, as a shorter prompt numbered 0..T'-1. `tests/test_reducers_conformance_llm.py` checks
the kept tokens and the logits against `encode_images` with departures 1 and 2 applied to it.

Departures (the embedded models have no CLIP text tower, and a stock llava-hf checkpoint carries none either):
  1. Relevance in the LLM's input space: the projected visual tokens against the LLM input embeddings of the
     instruction (the text tokens after the sample's last image, or all its text if none follow), where the
     reference compares CLIP image embeddings with CLIP text embeddings and negates them (its note on CLIP's
     inverted patch-text similarity); no negation here, as the LLM space has no such inversion to undo.
  2. Min-max per image (the reference normalises over the whole batch, so an image depended on its batch).
  3. Where: a stage at LLM layer 0 of the shared in-LLM pruner (the instruction embeddings are there); the prompt
     carries P placeholders per image, the projector runs on all P, every decoder layer sees K.
Option (ours, earlier): `positions="original"` keeps each kept token's RoPE position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .llm_pruning import INPUT_POSITIONS, LLMPruner, SampleView, Selection, Stage, renumbers
from .spec import EVERY_FAMILY, LLM_INPUT, MethodSpec, Parts

EPSILON = 1e-10  # the smallest gain taken (Chen et al.'s stopping threshold)


def conditional_kernel(visual: torch.Tensor, instruction: torch.Tensor) -> torch.Tensor:
    """L = diag(r) S diag(r) for visual [V, D] and instruction [t, D] tokens: [V, V] (float32)."""
    visual, instruction = F.normalize(visual.float(), dim=-1), F.normalize(instruction.float(), dim=-1)
    similarity = visual @ visual.T  # [V, V]
    relevance = (visual @ instruction.T).mean(dim=1)  # [V] <- [V, t]
    relevance = (relevance - relevance.min() + 1e-6) / (relevance.max() - relevance.min())  # as the reference
    return relevance[:, None] * similarity * relevance[None, :]


def greedy_dpp_map(kernel: torch.Tensor, keep: int) -> torch.Tensor:
    """Fast greedy MAP of a DPP with kernel [V, V]: indices [keep] in the order chosen (Chen et al. 2018).

    Once the kernel's rank is spent (no gain above EPSILON: more tokens asked for than the features' dimension),
    the rest follow by the kernel's diagonal (relevance), where the reference would divide by zero.

    The choices stay on the device: each step's item is a [1] tensor, the stop test a flag carried along (steps after
    it compute values nobody reads), and the host reads one number at the end, how many steps the gains allowed."""
    size = kernel.shape[0]
    rows = kernel.new_zeros(keep, size)  # c: incremental Cholesky rows
    gains = kernel.diagonal().clone()  # d^2: log-det gain of adding each item
    chosen = torch.zeros(keep, dtype=torch.long, device=kernel.device)
    taken = torch.zeros(size, dtype=torch.bool, device=kernel.device)
    running = torch.ones((), dtype=torch.bool, device=kernel.device)
    steps = torch.zeros((), dtype=torch.long, device=kernel.device)  # steps taken before the gains ran out
    for step in range(keep):
        running = running & (gains.max().double() > EPSILON)  # the host loop's `float(gains.max()) > EPSILON`
        steps = steps + running.long()
        item = gains.argmax().view(1)  # [1]
        chosen[step : step + 1] = item
        # e = (L[j, :] - c[:step, j] . c[:step, :]) / d_j
        column = rows[:step].index_select(1, item)[:, 0]  # [step]
        rows[step] = (kernel.index_select(0, item)[0] - column @ rows[:step]) / gains.index_select(0, item).sqrt()
        gains = gains - rows[step].square()
        taken = taken.index_fill(0, item, True)
        gains = gains.masked_fill(taken, -torch.inf)
    greedy = int(steps)  # the one host read
    if greedy < keep:
        quality = kernel.diagonal().clone()
        quality[chosen[:greedy]] = -torch.inf
        chosen[greedy:] = quality.topk(keep - greedy).indices
    return chosen


def instruction_positions(view: SampleView) -> torch.Tensor:
    after = view.text[view.text > view.blocks.max()]
    return after if after.numel() else view.text


@dataclass(frozen=True)
class CDPrunerSelector:
    needs_attention: bool = False

    def __call__(self, view: SampleView, stage: int, keep: int) -> Selection:
        instruction = view.hidden[instruction_positions(view)]  # [t, D]
        kept = [
            block[greedy_dpp_map(conditional_kernel(view.hidden[block], instruction), keep)] for block in view.blocks
        ]
        return Selection(torch.cat(kept))


__all__ = ["CDPrunerSelector", "conditional_kernel", "greedy_dpp_map"]


# -- the method's spec (registry.py) --------------------------------------------------------------------------------
def _build(model, budget: int, seed: int, options: dict) -> Parts:
    num_patches, image_token = model.config.num_patches, model.config.image_token_id
    renumber = renumbers(options)
    return Parts(pruner=LLMPruner((Stage(0, budget, renumber),), CDPrunerSelector(), num_patches, image_token))


SPEC = MethodSpec(
    "cdpruner",
    "a conditional DPP over the projected tokens, relevance to the instruction (Zhang et al., NeurIPS 2025)",
    acts=(LLM_INPUT,),
    where="LLM input (layer 0)",
    build=_build,
    prompt_tokens="P",
    options=(INPUT_POSITIONS,),
    families=EVERY_FAMILY,
    reference="Theia-4869/CDPruner @ 9541616",
)
