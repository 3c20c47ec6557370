"""`fastv`: visual-token pruning inside the LLM after layer K.

Chen, Zhao, Liu, Li, Lin, Zhou, Chang. "An Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play Inference
Acceleration for Large Vision-Language Models." ECCV 2024, arXiv 2403.06764. Reference implementation:
pkunlp-icler/FastV @ d165972, `src/transformers/src/transformers/models/llama/modeling_llama.py` (`LlamaModel.forward`,
its `use_fast_v` / `fast_v_inplace` branch; `fast_v_agg_layer` = K, `fast_v_attention_rank` = tokens kept).
`tests/test_reducers_conformance_llm.py` checks the kept set and the logits against that branch on the same inputs.

Glossary: B samples, T prompt length (every image expanded to P tokens), T' pruned length, P patches, K_img budget
(tokens kept per image), K the layer after which pruning happens (`fastv_layer`, default 2), L LLM layers, D LLM
width, h heads, dh head width.

As the reference (in-place variant): layers 0..K-1 run on the full prompt. The attention that the last prompt
token pays every token in layer K-1 (softmax, mean over heads) ranks the visual tokens; layers K..L-1 then run on
the text tokens plus the top K_img visual tokens of each image, in their original order and with their original
position ids (RoPE positions are not renumbered). Decoding reads the pruned KV cache in layers >= K and the full one
in layers < K.

How it is done here: one stage of the shared in-LLM pruner (llm_pruning.py; nothing forced to eager attention):
the last token's attention at layer K-1 is recomputed from that layer's own q / k projections (captured by forward
hooks, no projection computed twice) and the rotary embedding: one [h, 1, T] score row per sample instead of the
reference's full eager [h, T, T] map; layer K's pre-hook gathers the kept states, rotary tables and position ids
and builds the pruned mask; decoding uses the pruned KV cache in layers >= K (generated tokens keep the position ids
generate() gives them, unpruned numbering, as the reference).

Cost, honestly: prefill runs layers 0..K-1 at the full P visual tokens per image (576 for LLaVA-1.5); only layers
K..L-1 and decoding see K_img. The budget here is the count after layer K (FastV's own convention), not the
layer mean of the methods added later (dart, pdrop, sparsevlm, vscan): `AppliedMethod.budget_convention` says which.

Departures from the reference:
  1. Batch > 1 with left padding and several images per sample (video frames): K_img tokens are kept per image,
     ranked within that image (the reference handles one image, batch 1, with a fixed system-prompt offset). Padding
     keys are masked out of the ranking. Samples whose pruned lengths differ (different image counts) are left
     padded again.
  2. The reference's in-place variant re-runs the prompt without a KV cache in decoding (its generate path keeps
     pruning with `use_cache=False` or a separate KV-cache variant); here the pruned KV cache is used directly.
  3. Scores are computed in float32.
  Not supported: `labels` (the logits cover the pruned sequence), beam search / static caches, and a prompt that
  arrives in several chunks (images must be in the first forward of a sequence).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import check_budget
from .llm_pruning import LLMPruner, SampleView, Selection, Stage
from .spec import AFTER_LAYER, INSIDE_LLM, MethodSpec, Option, Parts


def top_by_attention(scores: torch.Tensor, blocks: torch.Tensor, keep: int) -> torch.Tensor:
    """The `keep` visual tokens of each image with the highest score: scores [T], blocks [n, V] -> [n keep]."""
    top = scores[blocks].topk(keep, dim=1).indices  # [n, keep]
    return blocks.gather(1, top).flatten()


@dataclass(frozen=True)
class LastTokenAttention:
    """FastV's (and PyramidDrop's) ranking: the attention the last prompt token pays each visual token."""

    needs_attention: bool = True

    def __call__(self, view: SampleView, stage: int, keep: int) -> Selection:
        last = torch.tensor([view.hidden.shape[0] - 1], device=view.hidden.device)  # left padding: last is real
        return Selection(top_by_attention(view.attention(last)[0], view.blocks, keep))


def fastv(budget: int, fastv_layer: int, num_patches: int, image_token_id: int) -> LLMPruner:
    """FastV on a P-token prompt: layers >= K keep the top `budget` visual tokens of each image."""
    check_budget(budget, num_patches)
    return LLMPruner((Stage(fastv_layer, budget),), LastTokenAttention(), num_patches, image_token_id)


__all__ = ["LastTokenAttention", "fastv", "top_by_attention"]


# -- the method's spec (registry.py) --------------------------------------------------------------------------------
LAYER = 2  # the paper's K ("after layer 2"), not scaled with depth


def _layer(options: dict) -> int:
    return LAYER if options.get("fastv_layer") is None else options["fastv_layer"]


def _build(model, budget: int, seed: int, options: dict) -> Parts:
    return Parts(pruner=fastv(budget, _layer(options), model.config.num_patches, model.config.image_token_id))


def _config_problem(config, budget: int | None, options: dict) -> str | None:
    num_layers, layer = config.text_config.num_hidden_layers, _layer(options)
    if not 1 <= layer < num_layers:
        return f"fastv_layer must be in 1..{num_layers - 1} for a {num_layers}-layer LLM, got {layer}"
    return None


SPEC = MethodSpec(
    "fastv",
    "the last token's attention at layer K - 1 keeps K_img tokens from layer K on (Chen et al., ECCV 2024)",
    acts=(INSIDE_LLM,),
    where="inside the LLM, after layer K",
    build=_build,
    budget_convention=AFTER_LAYER,
    prompt_tokens="P",
    options=(Option("fastv_layer", int, LAYER, "K: layers 0..K-1 run on all P tokens"),),
    paper="K = 2 (the paper's title, arXiv 2403.06764), for every depth",
    reference="pkunlp-icler/FastV @ d165972",
    config_problem=_config_problem,
)
