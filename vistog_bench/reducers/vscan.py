"""`vscan`: global + local scans with merging at the vision encoder's output, then pruning in the middle of the LLM.

Zhang, Ma, Fang, Yu, Zhang, Zhang, Xie, Sycara, Mi, Yu. "VScan: Rethinking Visual Token Reduction for Efficient
Large Vision-Language Models." arXiv 2505.22654 (TMLR 2026). Reference: Tencent/SelfEvolvingAgent `VScan/`,
`llava/model/llava_arch.py` (`encode_images`, `window_cls_selection`, `token_merging`) and
`llava/model/modeling_llama_x.py` (`layer_prune`); constants below are the reference's unless marked ours.

Glossary: P patches on a G x G grid, K0 tokens leaving the encoder (K_l local + K_g global), W windows of w x w
patches, K1 kept from LLM layer l on, L decoder layers, K the budget.

Stage 1, at LLaVA's feature layer (a vision-side reducer):
  1. local scan: the CLS attention of a shallow encoder layer (the reference's `image_attentions[5]`, layer 5 of
     CLIP ViT-L's 24, scaled with depth) is cut into 4 x 4 windows (the reference's w = 6 on its 24 x 24 grid; w =
     G / 4 on other grids); each window gives its k = floor(K0 / 2 / W) highest patches (`window_cls_selection`);
  2. global scan: the K_g = K0 - K_l patches with the highest CLS attention at the feature layer (the reference's
     `image_attentions[-2]`), the local ones excluded;
  3. merging: every other patch joins its most cosine-similar selected patch; a selected token becomes the mean of
     itself and its joiners (`token_merging`, scaling 1); output in spatial order.
Stage 2, in the LLM at layer l (16 of 32, scaled with depth), as the reference's `layer_prune` (PyramidDrop's
`pdrop_rank_drop` with counts instead of ratios): the attention the last instruction token pays each image's K0
tokens in layer l itself (its q / k projected from the stage's input) ranks them; K1 stay, in order, and the pruned
prompt is renumbered 0..T'-1 (pdrop.py; the shared machinery in llm_pruning.py).
`tests/test_reducers_conformance_llm.py` checks the kept set and the logits against the reference's `layer_prune`
on the same LLM input.
Budget: the layer mean, as the reference's README counts it: K0 = 96 from the encoder and K1 = 32 from layer 16 keep
"an average of 64 tokens throughout the 32 layers". So K1 = K0 / 3: K0 = round(K L / (l + (L - l) / 3)) and K1
solved exactly (schedule.py: `first_stage_tokens`, `mean_schedule`).
Departures:
  1. Merging happens on the encoder's states, before the projector; the reference merges the projector's outputs.
  2. When floor(K0 / 2) is not a multiple of W (small budgets), the global scan takes the K0 - k W left, so that an
     image always gives K0 tokens (the reference then returns fewer); below K0 = 32 the local scan picks nothing
     (the reference's k = 0 gives an empty float index tensor, an IndexError). A grid that is not a multiple of 4
     leaves its last rows / columns to the global scan.
Options (ours, PyramidDrop's two): `scores="previous"` ranks with layer l - 1's q / k (FastV's hook);
`positions="original"` keeps each token's RoPE position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.hooks import RemovableHandle

from ..model.geometry import patch_side
from ..model.vision import VisionStates, cls_attention, split_heads
from .base import check_budget, check_output, gather_tokens
from .fastv import LastTokenAttention
from .llm_pruning import RENUMBER, LLMPruner, Stage
from .pdrop import POSITIONS, SCORES
from .schedule import first_stage_tokens, llm_layer, mean_schedule
from .spec import ENCODER, INSIDE_LLM, LAYER_MEAN, MethodSpec, Option, Parts

LAYER = 16  # the LLM stage, of 32 layers
LLM_KEEP = 1 / 3  # K1 / K0: the README's 96 -> 32
SHALLOW_LAYER = 5  # the local scan's encoder layer, of 24 (`image_attentions[5]`)
ENCODER_DEPTH = 24  # CLIP ViT-L/14's layers, the depth SHALLOW_LAYER is given for
WINDOWS = 4  # windows per grid side: 24 / `window_size=6` (the reference's grid is 24 x 24)
LOCAL_SHARE = 0.5  # `local_ratio = 1 - global_ratio`, global_ratio = 0.5


def shallow_layer(depth: int, runs: int) -> int:
    """The local scan's encoder layer in a `depth`-layer tower that runs `runs` layers up to its feature layer:
    5 of 24 at the same depth fraction, below the feature layer (runs - 1) where there is room."""
    return min(SHALLOW_LAYER * depth // ENCODER_DEPTH, max(runs - 2, 0))


def windows(grid: int, per_side: int, device) -> torch.Tensor:
    """Patch indices of each w x w window, w = G // per_side, of a G x G grid, windows in row-major order: [W, w w]."""
    per_side = min(per_side, grid)
    side = grid // per_side
    starts = torch.arange(per_side, device=device) * side  # [G / w]
    offsets = torch.arange(side, device=device)  # [w]
    rows = starts[:, None] + offsets[None, :]  # [G / w, w]
    # [G/w, G/w, w, w] patch index of (window row, window column, row in window, column in window)
    index = rows[:, None, :, None] * grid + rows[None, :, None, :]
    return index.reshape(per_side * per_side, side * side)


def scan(shallow: torch.Tensor, deep: torch.Tensor, grid: int, keep: int) -> torch.Tensor:
    """Selected patch indices [B, keep]: the local scan's window winners (shallow CLS attention [B, P]), then the
    global scan's best of the rest (deep CLS attention [B, P])."""
    cells = windows(grid, WINDOWS, shallow.device)  # [W, w w]
    per_window = math.floor(keep * LOCAL_SHARE) // cells.shape[0]
    # [B, W, k] <- top-k of each window's [B, W, w w] attention, as patch indices
    top = shallow[:, cells].topk(per_window, dim=2).indices
    local = cells.expand(shallow.shape[0], -1, -1).gather(2, top).flatten(1)  # [B, W k]
    rest = deep.float().scatter(1, local, -torch.inf)
    chosen = rest.topk(keep - local.shape[1], dim=1).indices  # [B, K_g]
    return torch.cat([local, chosen], dim=1)


def merge_into_selected(patches: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """Each selected token [B, K] becomes the mean of itself and the patches most similar to it: [B, K, Dv]."""
    normed = F.normalize(patches.float(), dim=-1)
    # [B, P, K] <- [B, P, Dv] @ [B, Dv, K]
    similarity = normed @ gather_tokens(normed, selected).transpose(1, 2)
    target = similarity.argmax(dim=2)  # [B, P]
    target.scatter_(1, selected, torch.arange(selected.shape[1], device=patches.device).expand_as(selected))
    weights = torch.zeros(*selected.shape, patches.shape[1], device=patches.device)
    weights.scatter_(1, target.unsqueeze(1), 1.0)  # [B, K, P]
    # [B, K, Dv] <- [B, K, P] @ [B, P, Dv]
    return ((weights @ patches.float()) / weights.sum(dim=2, keepdim=True)).to(patches.dtype)


@dataclass(eq=False)
class EncoderLayerAttention:
    """Forward hooks on one encoder layer's q / k projections (the tower computes them anyway), from which a
    subclass's `take` recomputes an attention score of the patches in float32 (SDPA returns no weights)."""

    layer_index: int
    _outputs: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # the latest forward's, [B, I, Dv]
    _handles: list[RemovableHandle] = field(default_factory=list, repr=False)

    def install(self, tower) -> None:
        """tower: a VisToGVisionTower."""
        attn = tower.encoder.layers[self.layer_index].self_attn
        self._head_dim, self._scale = attn.head_dim, attn.scale
        for name in ("q_proj", "k_proj"):
            self._handles.append(getattr(attn, name).register_forward_hook(self._keep(name)))

    def _keep(self, name: str):
        def hook(module, args, output):
            self._outputs[name] = output

        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def query_key(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The latest forward's q / k of the layer, [B, h, I, dh] each."""
        if set(self._outputs) != {"q_proj", "k_proj"}:
            raise RuntimeError(f"encoder layer {self.layer_index}'s q / k projections were not seen")
        query, key = (split_heads(self._outputs[name], self._head_dim) for name in ("q_proj", "k_proj"))
        return query, key


class ShallowCLSAttention(EncoderLayerAttention):
    @property
    def scores(self) -> str:
        """What it reads, for `AppliedMethod.vision_scores` (after the feature layer's CLS attention)."""
        return f"at encoder layer {self.layer_index}"

    def take(self) -> torch.Tensor:
        """The latest forward's CLS attention, head mean, CLS column dropped: [B, P]."""
        return cls_attention(*self.query_key(), self._scale)


@dataclass(frozen=True)
class VScanReducer:
    budget: int  # K0, tokens per image leaving the encoder
    num_patches: int
    grid: int
    shallow: ShallowCLSAttention  # the local scan's attention (installed on the tower by apply_method)
    needs_cls_attention: bool = True

    def __post_init__(self):
        check_budget(self.budget, self.num_patches)

    def __call__(self, states: VisionStates) -> torch.Tensor:
        patches = states.patch_states  # [B, P, Dv]
        selected = scan(self.shallow.take(), states.cls_attention, self.grid, self.budget).sort(dim=1).values
        return check_output(merge_into_selected(patches, selected), patches.shape[0], self.budget, "vscan")


__all__ = [
    "LAYER",
    "LLM_KEEP",
    "EncoderLayerAttention",
    "ShallowCLSAttention",
    "VScanReducer",
    "merge_into_selected",
    "scan",
    "shallow_layer",
    "windows",
]


# -- the method's spec (registry.py) --------------------------------------------------------------------------------
def _build(model, budget: int, seed: int, options: dict) -> Parts:
    num_patches, image_token = model.config.num_patches, model.config.image_token_id
    num_layers = model.config.text_config.num_hidden_layers
    layer = llm_layer(options, LAYER, num_layers)
    first = first_stage_tokens(budget, num_layers, layer, num_patches, LLM_KEEP)
    (keep,) = mean_schedule(budget, num_layers, first, (layer,), "vscan")
    vision, tower = model.config.vision_config, model.model.vision_tower
    shallow = ShallowCLSAttention(
        shallow_layer(len(tower.encoder.layers), tower.layers_to_run(model.config.vision_feature_layer))
    )
    reducer = VScanReducer(first, num_patches, patch_side(vision), shallow)
    renumber = (options.get("positions") or POSITIONS.default) == RENUMBER
    scores = options.get("scores") or SCORES.default
    pruner = LLMPruner((Stage(layer, keep, renumber),), LastTokenAttention(), first, image_token, scores=scores)
    return Parts(reducer, pruner=pruner, tower_hooks=(shallow,))


SPEC = MethodSpec(
    "vscan",
    "a local and global scan of CLS attention in the encoder, then last-token pruning in the LLM (TMLR 2026)",
    acts=(ENCODER, INSIDE_LLM),
    where=f"after the vision tower (CLS attention at the feature layer and at encoder layer {SHALLOW_LAYER} of "
    f"{ENCODER_DEPTH}), then LLM layer {LAYER} (scaled)",
    build=_build,
    budget_convention=LAYER_MEAN,
    prompt_tokens="K0 (encoder stage)",
    options=(Option("layer", int, None, "the LLM stage's layer; default the paper's, scaled"), POSITIONS, SCORES),
    paper_layers=(LAYER,),
    stage_keep=LLM_KEEP,
    paper="layer 16 of 32, 96 -> 32 tokens (K1 = K0 / 3: the reference README's 'average of 64')",
    not_on_families="its first stage works inside LLaVA-1.5's encoder",
    reference="Tencent/SelfEvolvingAgent @ a82450e, VScan/",
)
