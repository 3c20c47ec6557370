"""`dart`: duplication-aware pruning inside the LLM at an early layer.

Wen, Gao, Wang, Zhang, Zhang, Li, He, Zhang. "Stop Looking for Important Tokens in Multimodal Language Models:
Duplication Matters More." arXiv 2502.11494. Reference: ZichenWen1/DART (LLaVA scripts: `pruned_layer=2`,
`pivot_image_token=4`, `pivot_text_token=4`, `max_num_trunction` M), as ported in ModelTC/llmc at
05eedff08c58ce5a3a4e2e879133bc922dff6ff5 (`llmc/compression/token_reduction/dart.py`, `get_retained_image_token`;
the authors' repository has no snapshot that could be read here).

Glossary: V visual tokens of one image, K_img kept, p_v / p_t image / text pivots, M = K_img - p_v picks,
D LLM width.

As the reference, at the input of layer K (2 for a 32-layer LLM):
  1. pivots: the p_v visual tokens and p_t text tokens after the image whose keys at layer K-1 (after RoPE) have the
     largest L1 norm;
  2. the pivots are visited in the reference's `for item in list(indices_set)` order: the order of the Python set of
     their positions in the sample's sequence (left padding removed);
  3. each pivot in turn keeps the floor(M / (p_v + p_t)) candidate visual tokens *least* cosine-similar to it
     (states entering layer K through the LLM's final RMSNorm, cosines in their dtype, as the reference), and those
     leave the candidates (the reference's `math.ceil(M // (p_v + p_t))` is that floor);
  4. kept = image pivots + those picks (text pivots are text: always kept), in spatial order; every kept token keeps
     its RoPE position, as the port's `pruning_hook` sets `position_ids = keep_indexs` and gathers the rotary tables
     at them (a copy of the authors' `DART_K_norm.forward` read here, its repository unnamed, sets the same), and the
     generated tokens go on from the unpruned prompt's length (generate's attention mask and cache positions count
     the P tokens of every image).
Budget: the layer mean (as PyramidDrop / SparseVLM count), so K_img = (K_mean L - K P) / (L - K) from layer K on.
tests/test_reducers_conformance.py checks the selection and the logits over the pruned prompt against the port's
(tests/data/conformance/dart).

Departures:
  1. Exact K_img: the reference keeps p_v + (p_v + p_t) floor(M / (p_v + p_t)), fewer than p_v + M when M is not a
     multiple of p_v + p_t; here the M mod (p_v + p_t) picks left over go one each to the first pivots visited.
  2. Per image for several images (video frames); text pivots from the text after the sample's last image.
  3. The layer scales with the LLM's depth (2 of 32 -> round(2 L / 32), at least 1); `layer=` overrides.
  4. Key norms from float32 keys (the reference: the model's dtype; the same on float32 models).
Option `pivot_order="norm"` (ours): image pivots by descending key norm, then text pivots; earlier pivots pick first,
so the kept set changes (Jaccard 0.84-0.92 at 64 picks on the conformance inputs: docs/reducers.md, fidelity table).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UsageError
from .cdpruner import instruction_positions
from .llm_pruning import LLMPruner, SampleView, Selection, Stage
from .schedule import llm_layer, mean_schedule
from .spec import INSIDE_LLM, LAYER_MEAN, MethodSpec, Option, Parts, given

PIVOT_IMAGE, PIVOT_TEXT, LAYER = 4, 4, 2  # the reference's LLaVA-1.5 settings (32 layers)
PIVOT_ORDERS = ("set", "norm")  # the reference's set order of positions, or by key norm (image pivots first)


def visiting_order(image_pivots: list[int], text_pivots: list[int], order: str, offset: int) -> list[int]:
    """The order pivots pick in. "set": as the reference's `list(set(image_indices + query_indices))`, on positions
    within the sample's own sequence (`offset`: its first position in a left-padded batch); "norm": image pivots,
    then text pivots, each by descending key norm (as given)."""
    if order == "norm":
        return image_pivots + text_pivots
    return [position + offset for position in set([p - offset for p in image_pivots + text_pivots])]


def duplication_aware(
    states: torch.Tensor,
    key_norm: torch.Tensor,
    block: torch.Tensor,
    text_pivots: torch.Tensor,
    keep: int,
    pivot_image: int,
    order: str = "set",
    offset: int = 0,
) -> torch.Tensor:
    """Kept positions [keep] of one image: its image pivots, then each pivot's least similar candidates.

    states [T, C] (the final norm's output), key_norm [T] (L1 of the keys), block [V] the image's positions,
    text_pivots [p_t] by descending key norm; `order` and `offset` as `visiting_order`."""
    image_pivots = block[key_norm[block].topk(min(pivot_image, keep)).indices]
    pivots = visiting_order(image_pivots.tolist(), text_pivots.tolist(), order, offset)
    picks = keep - image_pivots.numel()
    candidate = ~torch.isin(block, image_pivots)  # [V]
    kept = [image_pivots]
    for index, pivot in enumerate(pivots):
        share = picks // len(pivots) + (index < picks % len(pivots))
        if share == 0:
            continue
        similarity = F.cosine_similarity(states[pivot], states[block], dim=-1)  # [V], in the states' dtype
        chosen = (-similarity.masked_fill(~candidate, torch.inf)).topk(share).indices
        candidate[chosen] = False
        kept.append(block[chosen])
    return torch.cat(kept)


@dataclass(frozen=True, eq=False)
class DARTSelector:
    norm: nn.Module  # the LLM's final RMSNorm (weights shared, not copied)
    pivot_image: int = PIVOT_IMAGE
    pivot_text: int = PIVOT_TEXT
    pivot_order: str = "set"  # PIVOT_ORDERS
    needs_attention: bool = True  # reads layer K-1's keys

    def __post_init__(self):
        if self.pivot_order not in PIVOT_ORDERS:
            raise UsageError(f"dart pivot_order must be one of {', '.join(PIVOT_ORDERS)}, got {self.pivot_order!r}")

    def __call__(self, view: SampleView, stage: int, keep: int) -> Selection:
        states = self.norm(view.hidden)  # [T, D]
        key_norm = torch.linalg.vector_norm(view.keys, ord=1, dim=-1)  # [T], as the reference's torch.norm(p=1)
        text = instruction_positions(view)
        text_pivots = text[key_norm[text].topk(min(self.pivot_text, text.numel())).indices]
        offset = int(torch.cat([view.text, view.blocks.flatten()]).min())  # the sample's first real token
        kept = [
            duplication_aware(states, key_norm, block, text_pivots, keep, self.pivot_image, self.pivot_order, offset)
            for block in view.blocks
        ]
        return Selection(torch.cat(kept))


def _build(model, budget: int, seed: int, options: dict) -> Parts:
    num_patches, image_token = model.config.num_patches, model.config.image_token_id
    num_layers = model.config.text_config.num_hidden_layers
    layer = llm_layer(options, LAYER, num_layers)
    (keep,) = mean_schedule(budget, num_layers, num_patches, (layer,), "dart")
    selector = DARTSelector(model.model.language_model.norm, **given(options, "pivot_order"))
    return Parts(pruner=LLMPruner((Stage(layer, keep),), selector, num_patches, image_token))


SPEC = MethodSpec(
    "dart",
    "duplication-aware pruning around pivot tokens (Wen et al., arXiv 2502.11494)",
    acts=(INSIDE_LLM,),
    where="inside the LLM at layer 2 (scaled)",
    build=_build,
    budget_convention=LAYER_MEAN,
    prompt_tokens="P",
    options=(
        Option("layer", int, None, "the pruning layer; default the paper's 2 of 32, scaled"),
        Option(
            "pivot_order", str, "set", "pivots in the reference's set order of positions, or by key norm", PIVOT_ORDERS
        ),
    ),
    paper_layers=(LAYER,),
    paper="pruned_layer=2, 4 image + 4 text pivots (the authors' LLaVA scripts)",
    reference="ModelTC/llmc @ 05eedff (its DART port)",
)

__all__ = ["LAYER", "PIVOT_ORDERS", "SPEC", "DARTSelector", "duplication_aware", "visiting_order"]
