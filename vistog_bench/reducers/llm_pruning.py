"""Visual-token pruning inside the LLM: the hooks shared by every method that drops tokens between decoder layers.

FastV (fastv.py), DART, PyramidDrop, SparseVLM, VScan's second stage, and CDPruner / HoliTom at the LLM input all
run on this one `LLMPruner`; each method is a `Selector` (which visual tokens of a sample stay, and optionally their
merged states) and a schedule of `Stage`s (at which layers, how many tokens per image from there on).

Glossary: B samples, T prompt length (each image expanded to its placeholders), T' pruned length, V visual tokens
per image entering a stage, n images of a sample, D LLM width, h heads, hkv key/value heads, dh head width.

How (the FastV machinery, generalised to several stages; nothing is forced to eager attention):
  * a pre-hook on the LLaVA model marks a new prompt (empty cache) and where its image tokens are;
  * for a stage whose selector reads attention, the attention rows it asks for (`SampleView.attention`) are computed
    in float32 from q / k and the rotary tables: a [h, q, T] product for q query tokens, never the full [h, T, T]
    map of an eager layer. The q / k are those of the layer before the stage (`scores="previous"`, FastV's: forward
    hooks keep that layer's `q_proj` / `k_proj` outputs, nothing computed twice) or the stage layer's own, projected
    from its input (`scores="stage"`, PyramidDrop's: one extra k projection of the prompt and q of the rows asked);
  * a pre-hook on the stage layer gathers the kept hidden states (merged ones replaced, in the selection's order
    within each image when it gives one) and builds the pruned mask with transformers' `create_causal_mask` (SDPA,
    eager and flash each get their form); later layers reuse it until the next stage. Positions: a stage keeps each
    token's RoPE position (FastV) or, with `Stage.renumber`, numbers the pruned prompt 0..T'-1 as a reference that
    hands its layers a shorter sequence does (rotary tables recomputed);
  * in decoding, each stage's layers get the mask of [that stage's kept prompt, generated tokens], and after a
    renumbering stage the generated tokens' positions follow the pruned prompt (minus the tokens dropped before).
Each sample is selected on its own (a batch gives each sample what it gets alone); samples whose pruned lengths
differ are left padded again. Not supported: `labels`, beam search, static caches, images in a later chunk.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle
from transformers.masking_utils import create_causal_mask
from transformers.models.llama.modeling_llama import repeat_kv, rotate_half

from ..errors import UsageError
from .schedule import stage_layers
from .spec import Option


@dataclass(frozen=True)
class Stage:
    layer: int  # visual tokens are dropped at this decoder layer's input
    keep: int  # visual tokens per image from this layer on
    renumber: bool = False  # positions from here on: 0..T'-1 over the pruned prompt (False: each token keeps its own)


PREVIOUS_LAYER = "previous"  # scores from the q / k of the layer before the stage, captured as it runs (FastV)
STAGE_LAYER = "stage"  # scores from the stage layer's own q / k, projected from its input (PyramidDrop)
RENUMBER, ORIGINAL = "renumber", "original"  # a method's `positions` option: `Stage.renumber` or not
# The `positions` option of a method that selects at the LLM input (divprune, cdpruner): their references hand the LLM
# a shorter input, numbered afresh
INPUT_POSITIONS = Option(
    "positions",
    str,
    RENUMBER,
    "the pruned prompt numbered 0..T'-1, as the reference's shorter LLM input, or each token's own position",
    (RENUMBER, ORIGINAL),
)


# The `layers` option of a method that prunes in stages inside the LLM (pdrop, sparsevlm)
STAGE_LAYERS = Option("layers", str, None, "comma-separated decoder layers, e.g. 2,6,12; default the paper's, scaled")


def staged_where(paper_layers: tuple[int, ...]) -> str:
    """Where a method that prunes in stages acts (its MethodSpec's `where`): its paper's layers, scaled."""
    return f"inside the LLM at layers {' / '.join(map(str, paper_layers))} (scaled)"


def staged_geometry(model, options: dict, paper_layers: tuple[int, ...]) -> tuple[int, tuple[int, ...], int, int]:
    """What a staged pruner is built from: the LLM's depth L, its stage layers (the `layers` option, or the paper's
    scaled to L), the patches per image and the image token id."""
    num_layers = model.config.text_config.num_hidden_layers
    layers = stage_layers(options, paper_layers, num_layers)
    return num_layers, layers, model.config.num_patches, model.config.image_token_id


def renumbers(options: dict) -> bool:
    """Whether a method's `positions` option (its default: renumber) numbers the pruned prompt 0..T'-1."""
    return (options.get("positions") or RENUMBER) == RENUMBER


@dataclass
class SampleView:
    """One sample's prompt as a stage layer receives it (positions index this sample's current sequence)."""

    hidden: torch.Tensor  # [T, D] states entering the stage layer
    blocks: torch.Tensor  # [n, V] positions of each image's visual tokens, in order
    text: torch.Tensor  # [t] positions of real (non-padding) text tokens
    keys: (
        torch.Tensor | None
    )  # [T, hkv dh] previous layer's keys after RoPE (None: the selector reads none, or layer 0)
    attention: Callable[[torch.Tensor], torch.Tensor] | None  # query positions [q] -> head-mean attention [q, T]
    # (None likewise)
    origin: torch.Tensor | None = None  # [T] each token's position in the prompt as it entered the LLM
    inputs: SampleView | None = None  # the sample as it entered the LLM (layer 0's input), for `LLMPruner.keeps_inputs`
    first_image: int = 0  # the sample's first image among the batch's images (the order of pixel_values)


@dataclass
class Selection:
    visual: torch.Tensor  # [k] positions of the visual tokens kept (any order unless `ordered`)
    states: torch.Tensor | None = None  # [k, D] their new states (merged tokens), None to keep them as they are
    ordered: bool = False  # `visual` lists each image's tokens (image by image) in the order they enter the sequence


class Selector(Protocol):
    needs_attention: bool  # reads the previous layer's q / k at its stages after layer 0 (a layer-0 stage gets None)

    def __call__(self, view: SampleView, stage: int, keep: int) -> Selection: ...


@dataclass
class _Prompt:
    """The current sequence's prefill state, and what it leaves for decoding."""

    image_mask: torch.Tensor  # [B, T] bool, visual tokens of the current (pruned) sequence
    padding_mask: torch.Tensor  # [B, T] bool, True for real tokens
    query: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [B, T, h dh] q_proj output (pre-RoPE)
    key: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> [B, T, hkv dh] k_proj output (pre-RoPE)
    kept_masks: dict[int, torch.Tensor] = field(default_factory=dict)  # stage layer -> [B, T'] real tokens kept
    images_per_sample: torch.Tensor | None = None  # [B]
    origin: torch.Tensor | None = None  # [B, T] prompt position of each token of the current sequence, -1 padding
    origins: dict[int, torch.Tensor] = field(default_factory=dict)  # stage layer -> [B, T'] its `origin`
    sources: torch.Tensor | None = None  # [B, T'] the row each slot of the latest selection takes (None: its slot)
    real_tokens: torch.Tensor | None = None  # [B] real tokens of the prompt as it entered the LLM
    shift: dict[int, torch.Tensor] = field(default_factory=dict)  # stage layer -> [B] what decoding subtracts from
    # the generated tokens' positions (the prompt's real tokens less those of the latest renumbered prompt); absent
    # while no stage renumbered
    inputs: torch.Tensor | None = None  # [B, T, D] layer 0's input, when the pruner keeps it
    input_image_mask: torch.Tensor | None = None  # [B, T] image tokens of that input
    input_padding_mask: torch.Tensor | None = None  # [B, T]


@dataclass(eq=False)
class LLMPruner:
    """Installs a pruning schedule on a VisToG-off model (`install`) and removes it (`remove`)."""

    stages: tuple[Stage, ...]
    selector: Selector
    tokens_per_image: int  # placeholders per image in the prompt
    image_token_id: int
    scores: str = PREVIOUS_LAYER  # whose q / k the attention rows come from: PREVIOUS_LAYER or STAGE_LAYER
    keeps_inputs: bool = False  # the selector reads the sample as it entered the LLM (`SampleView.inputs`)
    _handles: list[RemovableHandle] = field(default_factory=list, repr=False)
    _prompt: _Prompt | None = field(default=None, repr=False)
    _step_mask: torch.Tensor | None = field(default=None, repr=False)  # [B, T + t] 2-D mask of a decoding step
    _pruned_kwargs: dict = field(default_factory=dict, repr=False)  # layer kwargs after the latest stage
    _model: object = field(default=None, repr=False)  # the model it is installed on

    def __post_init__(self):
        layers = [stage.layer for stage in self.stages]
        keeps = [self.tokens_per_image] + [stage.keep for stage in self.stages]
        if layers != sorted(set(layers)) or any(b > a or b < 1 for a, b in itertools.pairwise(keeps)):
            raise UsageError(f"pruning stages must have increasing layers and non-increasing counts: {self.stages}")
        if self.selector.needs_attention and layers[-1] == 0:
            raise UsageError("a selector reading attention needs a stage after layer 0")
        if self.scores not in (PREVIOUS_LAYER, STAGE_LAYER):
            raise UsageError(f"scores must be {PREVIOUS_LAYER!r} or {STAGE_LAYER!r}, got {self.scores!r}")

    @property
    def scored_layers(self) -> tuple[int, ...]:
        """Decoder layers whose q / k projections also feed the selector's float32 score rows (the stage layers
        themselves with STAGE_LAYER scores, whose q / k are projected once more for them)."""
        if not self.selector.needs_attention:
            return ()
        if self.scores == STAGE_LAYER:
            return tuple(s.layer for s in self.stages if s.layer > 0)
        return tuple(s.layer - 1 for s in self.stages if s.layer > 0)

    def origins(self, layer: int) -> torch.Tensor | None:
        """After a prefill: the prompt position (as it entered the LLM) of each token that stage layer `layer` passed
        on, [B, T'] (a merged token: the position of the token whose place it took; -1 padding); None if that layer
        is not a stage or nothing was pruned."""
        return None if self._prompt is None else self._prompt.origins.get(layer)

    def layer_tokens(self, num_layers: int) -> tuple[int, ...]:
        """Visual tokens per image each decoder layer works on (prefill queries and cached keys alike)."""
        counts, current = [], self.tokens_per_image
        starts = {stage.layer: stage.keep for stage in self.stages}
        for layer in range(num_layers):
            current = starts.get(layer, current)
            counts.append(current)
        return tuple(counts)

    # -- installation ----------------------------------------------------------------------------------------------
    def install(self, model: nn.Module) -> None:
        """model: a VisToGForConditionalGeneration with VisToG off."""
        language_model = model.model.language_model
        layers = language_model.layers
        if self.stages[-1].layer >= len(layers):
            raise UsageError(f"pruning layer {self.stages[-1].layer} is outside a {len(layers)}-layer LLM")
        self._config = language_model.config
        self._layers, self._rotary = layers, language_model.rotary_emb
        object.__setattr__(model, _INSTALLED, self)  # a plain attribute (not a submodule): `installed_pruner`
        self._model = model
        attn = layers[0].self_attn
        self._head_dim, self._kv_groups, self._scaling = attn.head_dim, attn.num_key_value_groups, attn.scaling
        self._handles = [model.model.register_forward_pre_hook(self._start_forward, with_kwargs=True)]
        if self.keeps_inputs:  # before a stage hook on layer 0, so that it sees the unpruned input
            self._handles.append(layers[0].register_forward_pre_hook(self._keep_inputs, with_kwargs=True))
        stage_layers = {stage.layer: index for index, stage in enumerate(self.stages)}
        for layer_index in range(self.stages[0].layer, len(layers)):
            if layer_index in stage_layers:
                hook = self._stage_hook(stage_layers[layer_index])
            else:
                hook = self._pass_pruned
            self._handles.append(layers[layer_index].register_forward_pre_hook(hook, with_kwargs=True))
        for index in self.scored_layers if self.scores == PREVIOUS_LAYER else ():
            scored = layers[index].self_attn
            self._handles += [
                scored.q_proj.register_forward_hook(self._capture(index, "query")),
                scored.k_proj.register_forward_hook(self._capture(index, "key")),
            ]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._prompt = None
        if self._model is not None and self._model.__dict__.get(_INSTALLED) is self:
            del self._model.__dict__[_INSTALLED]
        self._model = None

    # -- hooks -----------------------------------------------------------------------------------------------------
    def _start_forward(self, module, args, kwargs):
        """VisToGModel pre-hook: a new sequence (empty cache) starts a new prompt; otherwise a decoding step."""
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        attention_mask = kwargs.get("attention_mask")
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        self._pruned_kwargs = {}
        if cache is None or cache.get_seq_length() == 0:
            self._prompt = None
            self._step_mask = None
            if input_ids is None:
                if kwargs.get("pixel_values") is not None:
                    raise UsageError(
                        "in-LLM pruning finds image tokens in input_ids: pass input_ids, not inputs_embeds"
                    )
                return
            image_mask = input_ids == self.image_token_id  # [B, T]
            if bool(image_mask.any()):
                padding = torch.ones_like(image_mask) if attention_mask is None else attention_mask.bool()
                self._prompt = _Prompt(image_mask=image_mask, padding_mask=padding)
                self._prompt.images_per_sample = image_mask.sum(dim=1) // self.tokens_per_image
                positions = torch.arange(image_mask.shape[1], device=image_mask.device)
                self._prompt.origin = positions.expand_as(image_mask).masked_fill(~padding, -1)
                self._prompt.real_tokens = padding.sum(dim=1)
        else:
            if kwargs.get("pixel_values") is not None:  # (a generated token may carry the image id: not an image)
                raise UsageError("in-LLM pruning handles images of the first forward of a sequence only")
            self._step_mask = attention_mask

    def _keep_inputs(self, module, args, kwargs):
        """Layer-0 pre-hook: the prompt as it enters the LLM, for selectors that read it (`keeps_inputs`)."""
        prompt = self._prompt
        if prompt is not None and prompt.inputs is None and not prompt.kept_masks:
            prompt.inputs = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            prompt.input_image_mask, prompt.input_padding_mask = prompt.image_mask, prompt.padding_mask

    def _capture(self, layer: int, kind: str):
        def hook(module, args, output):
            prompt = self._prompt
            if prompt is not None and self.stages[-1].layer not in prompt.kept_masks:
                getattr(prompt, kind)[layer] = output  # [B, T, h dh] or [B, T, hkv dh]

        return hook

    def _stage_hook(self, index: int):
        def hook(module, args, kwargs):
            return self._prune(index, args, kwargs)

        return hook

    def _prune(self, index: int, args, kwargs):
        """Stage-layer pre-hook: prune the prompt (prefill) or give decoding this stage's mask."""
        prompt = self._prompt
        if prompt is None:
            return None
        layer = self.stages[index].layer
        hidden_states = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if layer not in prompt.kept_masks:  # prefill
            position_embeddings = self._pruned_kwargs.get("position_embeddings", kwargs["position_embeddings"])
            position_ids = self._pruned_kwargs.get("position_ids", kwargs.get("position_ids"))
            prompt.sources = None
            keep, states = self._select(index, hidden_states, position_embeddings)
            sources = keep if prompt.sources is None else prompt.sources  # [B, T'] the row each slot takes
            prompt.query.pop(layer - 1, None), prompt.key.pop(layer - 1, None)
            hidden_states = gather_rows(hidden_states, sources)  # [B, T', D]
            if states is not None:
                hidden_states = torch.where(states[1].unsqueeze(-1), states[0], hidden_states)
            real = prompt.kept_masks[layer]  # [B, T']
            if self.stages[index].renumber:
                position_ids = (real.long().cumsum(dim=1) - 1).clamp(min=0)  # [B, T']
                self._pruned_kwargs["position_embeddings"] = self._rotary(hidden_states, position_ids)
                self._pruned_kwargs["position_ids"] = position_ids
                prompt.shift[layer] = prompt.real_tokens - real.sum(dim=1)  # generated: R' + t, not R + t
            else:
                cos, sin = position_embeddings
                self._pruned_kwargs["position_embeddings"] = (gather_rows(cos, sources), gather_rows(sin, sources))
                if position_ids is not None:
                    self._pruned_kwargs["position_ids"] = position_ids.expand(keep.shape[0], -1).gather(1, sources)
                previous = self._previous_stage(index)
                if previous in prompt.shift:
                    prompt.shift[layer] = prompt.shift[previous]
            prompt.origin = prompt.origin.gather(1, sources).masked_fill(~real, -1)
            prompt.origins[layer] = prompt.origin
            if index == len(self.stages) - 1:
                prompt.inputs = None  # the LLM input a selector read: not needed in decoding
            prompt.image_mask = prompt.image_mask.gather(1, keep) & real
            padding = prompt.padding_mask = real
        else:  # decoding: [kept prompt tokens, tokens generated since (this step's included)]
            kept = prompt.kept_masks[layer]
            generated = cache.get_seq_length(layer) + hidden_states.shape[1] - kept.shape[1]
            if self._step_mask is None:  # generate() leaves the mask out when nothing is padded
                new = kept.new_ones(kept.shape[0], generated)
            else:
                new = self._step_mask[:, -generated:].to(kept.device, torch.bool)
            padding = torch.cat([kept, new], dim=1)
            if layer in prompt.shift:  # positions of the generated tokens follow the renumbered prompt
                position_ids = kwargs["position_ids"] - prompt.shift[layer][:, None]  # [B, t]
                self._pruned_kwargs["position_ids"] = position_ids
                self._pruned_kwargs["position_embeddings"] = self._rotary(hidden_states, position_ids)
        self._pruned_kwargs["attention_mask"] = create_causal_mask(
            config=self._config, inputs_embeds=hidden_states, attention_mask=padding, cache=cache, layer_idx=layer
        )
        kwargs.update(self._pruned_kwargs)
        if "hidden_states" in kwargs:
            kwargs["hidden_states"] = hidden_states
            return args, kwargs
        return (hidden_states, *args[1:]), kwargs

    def _select(self, index: int, hidden_states: torch.Tensor, position_embeddings):
        """Positions kept per sample [B, T'] (left padded), and merged states ([B, T', D], [B, T'] where) or None;
        `prompt.sources` [B, T'] when a selection orders its tokens."""
        prompt, stage = self._prompt, self.stages[index]
        query, key = self._score_inputs(stage.layer, hidden_states)
        rows, sources, slots, replaced, first_image = [], [], [], [], 0
        for b in range(hidden_states.shape[0]):
            images = prompt.image_mask[b].nonzero().squeeze(1)  # [n V]
            count = int(prompt.images_per_sample[b])
            if images.numel() == 0:
                rows.append(torch.arange(hidden_states.shape[1], device=hidden_states.device))
                sources.append(rows[-1])
                slots.append(None)
                replaced.append(None)
                continue
            if count == 0 or images.numel() % count:
                raise UsageError(
                    f"in-LLM pruning: a prompt has {images.numel()} image tokens, not {self.tokens_per_image} per "
                    "image; expand <image> with tokens_per_image(model)"
                )
            view = SampleView(
                hidden=hidden_states[b],
                blocks=images.view(count, -1),
                text=(prompt.padding_mask[b] & ~prompt.image_mask[b]).nonzero().squeeze(1),
                keys=None if key is None else rotated(key(b), position_embeddings, b, self._head_dim),
                attention=None if query is None else self._attention_rows(query, key(b), position_embeddings, b),
                origin=prompt.origin[b],
                inputs=self._input_view(b, count) if self.keeps_inputs else None,
                first_image=first_image,
            )
            first_image += count
            selection = self.selector(view, index, stage.keep)
            keep = ~prompt.image_mask[b]
            keep[selection.visual] = True
            row = keep.nonzero().squeeze(1)  # [T'_b] the slots, increasing
            source = row
            if selection.ordered:  # the image slots, in sequence order, take the selection's tokens in its order
                source = row.masked_scatter(prompt.image_mask[b][row], selection.visual)
            slot_of = torch.full_like(keep, -1, dtype=torch.long).scatter_(
                0, source, torch.arange(row.numel(), device=row.device)
            )  # [T] the slot each kept row went to
            rows.append(row)
            sources.append(source)
            slots.append(slot_of[selection.visual])
            replaced.append(selection)
        positions, valid = left_pad(rows)
        if any(selection is not None and selection.ordered for selection in replaced):
            prompt.sources = left_pad(sources)[0]
        prompt.kept_masks[stage.layer] = prompt.padding_mask.gather(1, positions) & valid
        return positions, merged_states(rows, positions, replaced, hidden_states, slots)

    def _score_inputs(self, layer: int, hidden_states: torch.Tensor):
        """What the stage's attention rows are made of: (query, key) where query(b, positions) -> [q, h dh] and
        key(b) -> [T, hkv dh] are q / k projections before RoPE, or (None, None) when the selector reads none."""
        prompt = self._prompt
        if not self.selector.needs_attention or layer == 0:
            return None, None
        if self.scores == STAGE_LAYER:  # as PyramidDrop: the stage layer's own q / k of its (pruned) input
            # `.forward`, not the modules' __call__: their hooks belong to the layer's own run (the profiler times a
            # stage from its pre-hooks to input_layernorm's)
            attn = self._layers[layer].self_attn
            normed = self._layers[layer].input_layernorm.forward(hidden_states)  # [B, T, D]
            keys = attn.k_proj.forward(normed)  # [B, T, hkv dh]
            return (lambda b, positions: attn.q_proj.forward(normed[b, positions])), (lambda b: keys[b])
        query, key = prompt.query.get(layer - 1), prompt.key.get(layer - 1)
        if query is None or key is None:
            raise RuntimeError(f"in-LLM pruning: layer {layer - 1}'s q / k projections were not seen in this forward")
        return (lambda b, positions: query[b, positions]), (lambda b: key[b])

    def _input_view(self, b: int, count: int) -> SampleView:
        """Sample b as it entered the LLM (layer 0's input; positions index that prompt)."""
        prompt = self._prompt
        image, padding = prompt.input_image_mask[b], prompt.input_padding_mask[b]
        return SampleView(
            hidden=prompt.inputs[b],
            blocks=image.nonzero().squeeze(1).view(count, -1),
            text=(padding & ~image).nonzero().squeeze(1),
            keys=None,
            attention=None,
        )

    def _previous_stage(self, index: int) -> int | None:
        return self.stages[index - 1].layer if index > 0 else None

    def _attention_rows(self, query, key, position_embeddings, b: int) -> Callable[[torch.Tensor], torch.Tensor]:
        padding = self._prompt.padding_mask[b]

        def rows(positions: torch.Tensor) -> torch.Tensor:
            return attention_rows(
                query(b, positions),
                key,
                position_embeddings,
                padding,
                positions,
                b,
                head_dim=self._head_dim,
                kv_groups=self._kv_groups,
                scaling=self._scaling,
            )

        return rows

    def _pass_pruned(self, module, args, kwargs):
        """Pre-hook of the layers between stages: the pruned sequence's mask (and, in prefill, its rotary tables)."""
        if not self._pruned_kwargs:
            return None
        kwargs.update(self._pruned_kwargs)
        return args, kwargs


_INSTALLED = "_vistog_llm_pruner"


def installed_pruner(model) -> LLMPruner | None:
    """The LLMPruner installed on `model` (None if none): its `origins` say what each stage kept."""
    return model.__dict__.get(_INSTALLED)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x [..., q, dh] with cos / sin broadcastable to it."""
    return x * cos + rotate_half(x) * sin


def rotated(key: torch.Tensor, position_embeddings, b: int, head_dim: int) -> torch.Tensor:
    """One sample's keys [T, hkv dh] (pre-RoPE) -> after RoPE [T, hkv dh] (float32)."""
    cos, sin = (x[min(b, x.shape[0] - 1)].float() for x in position_embeddings)  # [T, dh]
    heads = key.view(key.shape[0], -1, head_dim).float().transpose(0, 1)  # [hkv, T, dh]
    return rope(heads, cos, sin).transpose(0, 1).reshape(key.shape[0], -1)


def attention_rows(
    query: torch.Tensor,
    key: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    padding_mask: torch.Tensor,
    positions: torch.Tensor,
    b: int,
    *,
    head_dim: int,
    kv_groups: int,
    scaling: float,
) -> torch.Tensor:
    """Causal softmax attention of the queries at `positions` over one sample's prompt, mean over heads: [q, T].

    query [q, h dh] and key [T, hkv dh]: a layer's q / k projections before RoPE; position_embeddings: rotary
    (cos, sin) [B or 1, T, dh] (row b is this sample's); padding_mask [T] (padding keys get no attention).
    """
    length = key.shape[0]
    cos, sin = (x[min(b, x.shape[0] - 1)].float() for x in position_embeddings)  # [T, dh]
    query = query.view(query.shape[0], -1, head_dim).float().transpose(0, 1)  # [h, q, dh]
    key = key.view(length, -1, head_dim).float().transpose(0, 1)  # [hkv, T, dh]
    query = rope(query, cos[positions], sin[positions])
    key = repeat_kv(rope(key, cos, sin).unsqueeze(0), kv_groups)[0]  # [h, T, dh]
    # [h, q, T] <- [h, q, dh] @ [h, dh, T]
    logits = (query @ key.transpose(-1, -2)) * scaling
    allowed = padding_mask[None, :] & (torch.arange(length, device=key.device)[None, :] <= positions[:, None])
    logits = logits.masked_fill(~allowed, -torch.inf)
    return torch.softmax(logits, dim=-1).mean(dim=0)


def merged_states(
    rows: list[torch.Tensor],
    positions: torch.Tensor,
    selections: list[Selection | None],
    hidden_states: torch.Tensor,
    slots: list[torch.Tensor | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The new states of merged tokens in the pruned layout: ([B, T', D], where [B, T']), None if nothing merges.
    rows: each sample's kept positions (increasing), positions [B, T'] their left-padded form (`left_pad`); slots:
    each sample's slot (index into its row) of every `selection.visual`, None for the slot of that position."""
    if all(s is None or s.states is None for s in selections):
        return None
    states = hidden_states.new_zeros(*positions.shape, hidden_states.shape[-1])
    where = torch.zeros(positions.shape, dtype=torch.bool, device=positions.device)
    for b, selection in enumerate(selections):
        if selection is None or selection.states is None:
            continue
        slot = torch.searchsorted(rows[b], selection.visual) if slots is None or slots[b] is None else slots[b]
        slot = slot + positions.shape[1] - rows[b].numel()
        states[b, slot] = selection.states.to(states.dtype)
        where[b, slot] = True
    return states, where


def left_pad(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample increasing positions -> [B, T'] left padded to the longest (padding slots point at 0), and where
    each slot is real [B, T']."""
    length = max(row.numel() for row in rows)
    device = rows[0].device
    positions = torch.zeros(len(rows), length, dtype=torch.long, device=device)
    valid = torch.zeros(len(rows), length, dtype=torch.bool, device=device)
    for b, row in enumerate(rows):
        positions[b, length - row.numel() :] = row
        valid[b, length - row.numel() :] = True
    return positions, valid


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [B or 1, T, C], index [B, T'] -> [B, T', C]."""
    x = x.expand(index.shape[0], -1, -1)
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


__all__ = [
    "ORIGINAL",
    "PREVIOUS_LAYER",
    "RENUMBER",
    "STAGE_LAYER",
    "STAGE_LAYERS",
    "LLMPruner",
    "SampleView",
    "Selection",
    "Selector",
    "Stage",
    "attention_rows",
    "gather_rows",
    "installed_pruner",
    "left_pad",
    "merged_states",
    "staged_geometry",
    "staged_where",
]
