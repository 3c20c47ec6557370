"""Analytic FLOPs per stage: every formula of the harness, in one place.

Convention (DESIGN.md): FLOPs are floating-point operations, **2 per multiply-add**, matrix products only (linear
layers, convolutions, attention scores and attention-weighted values): the operations `FlopCounterMode` counts.
Norms, softmax, activations, rotary embeddings and residual adds are left out (they are < 1 % at LLaVA's widths and
are memory-bound anyway; the roofline floor accounts for bytes instead).

Glossary: B batch (prompts), Bi images, P patches (576), I = 1 + P image tokens (CLS + patches), N semantic tokens,
S = I + N, Dv vision width, Fv vision MLP width, Lv vision layers run (up to LLaVA's feature layer: 23 of 24),
p patch size, C channels, D LLM width, Dkv = n_kv_heads * head_dim, F LLM MLP width, L LLM layers, V vocabulary,
q new tokens of an LLM forward, k keys it attends to (KV length, new tokens included), n visual tokens into the
projector (N with VisToG, P stock).

    vision   = Bi * [ 2 P (C p^2) Dv                                       patch embedding (a convolution)
                    + Lv * ( 2 S Dv (3 Dv) + 2 S Dv Dv                     Q, K, V and output projections
                           + 2 S (2 Dv Fv)                                 CLIP MLP: two matrices
                           + 4 I I Dv + 4 N S Dv ) ]                       isolated attention: image queries over
                                                                           I keys, semantic queries over S keys
                                                                           (4 S S Dv when attention is not isolated)
    grouping = Bi * [ 2 N Dv^2 + 2 P Dv^2 + 2 N P Dv                       q, k and the [N, P] assignment logits
                    + 2 P Dv^2 + 2 N P Dv + 2 N Dv^2                       v, assignment @ v, output projection
                    + 2 N (2 Dv Fg) ]                                      residual MLP (Fg = ratio * Dv)
    projector= Bi * 2 n (Dv D + D D)                                       LLaVA's two-layer MLP projector
    llm(q,k) = B * [ L * ( 2 q D (D + 2 Dkv) + 2 q D D                     Q, K, V, O projections
                         + 2 q (3 D F)                                     LLaMA MLP: gate, up, down (3 matrices)
                         + 4 q k D )                                       scores Q K^T and weights @ V, full (the
                                                                           kernels do not skip the causal half)
                   + 2 t D V ]                                             logits for t tokens
    prefill  = llm(q=T, k=T) with t = 1 (generate asks for the last token's logits only)
    decode   = sum over generated tokens 2..n of llm(q=1, k=T+i-1) with t = 1

Check (the issue's): llava-1.5-7b, T = 576 + 64 = 640: prefill = 8.504e12 FLOPs, what FlopCounterMode counted on an
H100.

FastV's convention (Chen et al., "An Image is Worth 1/2 Tokens After Layer 2", ECCV 2024, eq. for FLOPs) counts
multiply-adds and two MLP matrices: per layer 4 n d^2 + 2 n^2 d + 2 n d m. `fastv_llm_flops` gives it so tables can
match papers; it is 0.39x ours for the 7B prefill at 640 tokens (half for multiply-adds, 2 of LLaMA's 3 MLP matrices).
"""

from __future__ import annotations

from dataclasses import dataclass, field

CONVENTION = "2 FLOPs per multiply-add; matrix products only; LLaMA MLP with 3 matrices; full attention"
FASTV_CONVENTION = "FastV: multiply-adds; per layer 4nd^2 + 2n^2d + 2ndm (2 MLP matrices)"


@dataclass(frozen=True)
class ArchShape:
    """The sizes the formulas need, read from a (VisToG or LLaVA) config."""

    channels: int
    patch_size: int
    num_patches: int  # P
    vision_width: int  # Dv
    vision_mlp: int  # Fv
    vision_layers_run: int  # Lv
    isolated_attention: bool
    grouping_mlp: int  # Fg
    width: int  # D
    kv_width: int  # Dkv
    mlp: int  # F
    layers: int  # L
    vocab: int  # V
    num_kv_heads: int
    head_dim: int

    @classmethod
    def from_config(cls, config) -> ArchShape:
        from ..model.vision import feature_layers_run

        vision, text = config.vision_config, config.text_config
        layers_run = feature_layers_run(config.vision_feature_layer, vision.num_hidden_layers)
        heads = text.num_attention_heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        kv_heads = getattr(text, "num_key_value_heads", None) or heads
        return cls(
            channels=vision.num_channels,
            patch_size=vision.patch_size,
            num_patches=config.num_patches,
            vision_width=vision.hidden_size,
            vision_mlp=vision.intermediate_size,
            vision_layers_run=layers_run,
            isolated_attention=getattr(config, "isolated_attention", True),
            grouping_mlp=int(vision.hidden_size * getattr(config, "grouping_mlp_ratio", 4.0)),
            width=text.hidden_size,
            kv_width=kv_heads * head_dim,
            mlp=text.intermediate_size,
            layers=text.num_hidden_layers,
            vocab=text.vocab_size,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
        )


# -- the formulas ----------------------------------------------------------------------------------------------------
def vision_flops(shape: ArchShape, images: int, semantic_tokens: int) -> float:
    """CLIP tower up to the feature layer with N semantic tokens (N = 0: stock CLIP)."""
    dv, p, n = shape.vision_width, shape.num_patches, semantic_tokens
    i = 1 + p
    s = i + n
    patch_embedding = 2 * p * (shape.channels * shape.patch_size**2) * dv
    projections = 2 * s * dv * (3 * dv) + 2 * s * dv * dv
    mlp = 2 * s * (2 * dv * shape.vision_mlp)
    if shape.isolated_attention:
        attention = 4 * i * i * dv + 4 * n * s * dv
    else:
        attention = 4 * s * s * dv
    return float(images * (patch_embedding + shape.vision_layers_run * (projections + mlp + attention)))


def grouping_flops(shape: ArchShape, images: int, groups: int) -> float:
    """The grouping layer: N groups over P patches (0 when VisToG is off)."""
    if groups == 0:
        return 0.0
    dv, p, n = shape.vision_width, shape.num_patches, groups
    assignment = 2 * n * dv * dv + 2 * p * dv * dv + 2 * n * p * dv
    pooling = 2 * p * dv * dv + 2 * n * p * dv + 2 * n * dv * dv
    mlp = 2 * n * (2 * dv * shape.grouping_mlp)
    return float(images * (assignment + pooling + mlp))


def projector_flops(shape: ArchShape, tokens: int) -> float:
    """LLaVA's projector on `tokens` vision tokens in all (images x tokens per image)."""
    return float(2 * tokens * (shape.vision_width * shape.width + shape.width * shape.width))


def llm_layer_flops(shape: ArchShape, new_tokens: int, kv_length: int) -> float:
    """One decoder layer for one prompt: q = `new_tokens` queries attending to k = `kv_length` keys."""
    d, q, k = shape.width, new_tokens, kv_length
    projections = 2 * q * d * (d + 2 * shape.kv_width) + 2 * q * d * d
    mlp = 2 * q * (3 * d * shape.mlp)
    attention = 4 * q * k * d
    return float(projections + mlp + attention)


def llm_flops(
    shape: ArchShape,
    batch: int,
    new_tokens: int,
    kv_length: int,
    logits_tokens: int = 1,
    pruned_after_layer: int | None = None,
    pruned_tokens: int = 0,
) -> float:
    """One LLaMA forward: q = `new_tokens` per prompt attending to k = `kv_length` keys; logits for `logits_tokens`.

    FastV (`pruned_after_layer=K`, `pruned_tokens=R` per prompt): layers 0..K-1 see every token; layers K..L-1 hold R
    fewer keys, and in the prefill (q > 1) R fewer queries too (Chen et al., arXiv 2403.06764, Sec. 4).
    """
    logits = 2 * logits_tokens * shape.width * shape.vocab
    full = llm_layer_flops(shape, new_tokens, kv_length)
    if pruned_after_layer is None or not pruned_tokens:
        return float(batch * (shape.layers * full + logits))
    kept_queries = new_tokens - pruned_tokens if new_tokens > 1 else new_tokens
    pruned = llm_layer_flops(shape, kept_queries, kv_length - pruned_tokens)
    layers_after = shape.layers - pruned_after_layer
    return float(batch * (pruned_after_layer * full + layers_after * pruned + logits))


def prefill_flops(shape: ArchShape, batch: int, prompt_tokens: int) -> float:
    return llm_flops(shape, batch, prompt_tokens, prompt_tokens, logits_tokens=1)


def decode_step_flops(shape: ArchShape, batch: int, kv_length: int) -> float:
    """One generated token whose forward attends to `kv_length` keys (itself included)."""
    return llm_flops(shape, batch, 1, kv_length, logits_tokens=1)


def decode_flops(shape: ArchShape, batch: int, prompt_tokens: int, output_tokens: int) -> float:
    """All decode steps of a generate that returns `output_tokens` tokens (the first comes from the prefill)."""
    return sum(decode_step_flops(shape, batch, prompt_tokens + i) for i in range(1, output_tokens))


def fastv_llm_flops(shape: ArchShape, batch: int, tokens: int) -> float:
    """FastV's convention for an LLM forward over n tokens: multiply-adds, two MLP matrices, no logits."""
    n, d, m = tokens, shape.width, shape.mlp
    return float(batch * shape.layers * (4 * n * d * d + 2 * n * n * d + 2 * n * d * m))


# -- one cell of a sweep -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StageFlops:
    """Analytic FLOPs by stage for one generate: `by_stage` has results.STAGES but preprocess, and `total`."""

    by_stage: dict[str, float]
    decode_per_token: float | None  # mean over decode steps; None with one output token
    fastv_prefill: float
    convention: str = CONVENTION
    extra: dict[str, float] = field(default_factory=dict)


def generate_flops(
    shape: ArchShape, *, budget: int, batch_size: int, text_tokens: int, output_tokens: int, images_per_prompt: int = 1
) -> StageFlops:
    """A generate of `output_tokens` tokens for `batch_size` prompts of `images_per_prompt` images at `budget` tokens
    per image and `text_tokens` text tokens. budget == P is stock LLaVA (no semantic tokens, no grouping)."""
    images = batch_size * images_per_prompt
    semantic = 0 if budget == shape.num_patches else budget
    prompt = images_per_prompt * budget + text_tokens
    by_stage = {
        "vision": vision_flops(shape, images, semantic),
        "grouping": grouping_flops(shape, images, semantic),
        "projector": projector_flops(shape, images * budget),
        "prefill": prefill_flops(shape, batch_size, prompt),
        "decode": decode_flops(shape, batch_size, prompt, output_tokens),
    }
    by_stage["total"] = sum(by_stage.values())
    steps = output_tokens - 1
    return StageFlops(
        by_stage=by_stage,
        decode_per_token=by_stage["decode"] / steps if steps > 0 else None,
        fastv_prefill=fastv_llm_flops(shape, batch_size, prompt),
    )


# -- other families: LLaVA-NeXT, LLaVA-OneVision, Qwen2.5-VL as transformers runs them ------------------------------
# Same convention. What transformers' stock classes compute (counted-vs-analytic tests: tests/test_families_flops.py):
#
#   encoder view (NeXT: CLIP on each of the base view + tiles, 577 tokens with CLS, all 24 layers run: transformers
#   keeps hidden_states[-2] but runs the last layer too; OneVision: SigLIP, 729 tokens, no CLS, all 26 layers):
#       2 P (C p^2) Dv + Lv * ( 2 s Dv (3 Dv) + 2 s Dv Dv + 2 s (2 Dv Fv) + 4 s s Dv ),  s = P (+ 1 with CLS)
#   Qwen2.5-VL ViT on one image of P patches (grid h x w at 14 px; a 2 x 14 x 14 Conv3d: the image is two frames):
#       2 P (C 2 p^2) Dv + Lv * ( 2 P Dv (3 Dv) + 2 P Dv Dv + 2 P (3 Dv Fv) ) + 4 Dv * ( Lfull P^2
#       + Lwin * sum_w n_w^2 ),  windows of 4 x 4 merged units (112 px) = up to 64 patches, n_w the patches of window w
#   projector: NeXT / OneVision 2 (views x P) (Dv D + D D) (patch tokens of every view, before unpadding, newline
#       tokens and OneVision's anyres_max_9 interpolation, which are no matrix products);
#       Qwen2.5-VL's PatchMerger 2 (P / 4) (4 Dv 4 Dv + 4 Dv D)
#   prefill = llm(q=T, k=T) as above, T = text + the visual tokens the LLM receives (after a reducer: its budget)
def llm_shape(config) -> ArchShape:
    """The LLM's sizes of any family's config (the vision fields of the ArchShape unused)."""
    text, vision = config.text_config, config.vision_config
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    return ArchShape(
        channels=3,
        patch_size=vision.patch_size,
        num_patches=0,
        vision_width=0,
        vision_mlp=0,
        vision_layers_run=0,
        isolated_attention=False,
        grouping_mlp=0,
        width=text.hidden_size,
        kv_width=kv_heads * head_dim,
        mlp=text.intermediate_size,
        layers=text.num_hidden_layers,
        vocab=text.vocab_size,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
    )


@dataclass(frozen=True)
class FamilyShape:
    """The sizes the family formulas need, from a transformers config of LLaVA-NeXT / OneVision / Qwen2.5-VL (the
    encoder's from its family, `ModelFamily.vision_sizes`)."""

    family: str  # the family's stock model_type
    channels: int
    patch_size: int
    temporal_patch: int  # 1 (Conv2d), 2 (Qwen2.5-VL's Conv3d over two frames)
    vision_width: int  # Dv
    vision_mlp: int  # Fv
    vision_mlp_matrices: int  # 2 (CLIP / SigLIP), 3 (Qwen2.5-VL's SwiGLU)
    vision_layers: int  # Lv, all run
    cls_token: bool  # CLIP's CLS is in every view's sequence
    patches_per_view: int  # P of one view (NeXT 576, OneVision 729); 0 for Qwen2.5-VL (size-dependent)
    full_attention_layers: tuple[int, ...]  # Qwen2.5-VL: the rest use window attention
    window_units: int  # Qwen2.5-VL: window side in merged units (window_size / patch / merge = 4); 0: no windows
    merge: int  # Qwen2.5-VL spatial merge (2); 1 otherwise
    llm: ArchShape  # the LLM's sizes (the vision fields of it are unused)

    @classmethod
    def from_config(cls, config) -> FamilyShape:
        from ..model.families import family_for

        family = family_for(config)
        return cls(family.model_type, **family.vision_sizes(config), llm=llm_shape(config))

    @property
    def windowed(self) -> bool:
        """One image through a windowed ViT whose PatchMerger is its projector (Qwen2.5-VL), not views (CLIP /
        SigLIP) through a projector."""
        return self.window_units > 0


def _encoder_layer_flops(width: int, mlp: int, matrices: int, tokens: int) -> float:
    """Projections and MLP of one ViT layer on `tokens` tokens (attention products apart)."""
    return float(2 * tokens * width * (3 * width) + 2 * tokens * width * width + 2 * tokens * (matrices * width * mlp))


def qwen_window_sizes(grid_h: int, grid_w: int, window_units: int, merge: int = 2) -> list[int]:
    """Patches in each attention window of Qwen2.5-VL's ViT for a grid of grid_h x grid_w patches: windows of
    `window_units` x `window_units` merged units from the top-left, the last row / column of windows cut short."""
    units_h, units_w = grid_h // merge, grid_w // merge
    rows = [min(window_units, units_h - r) for r in range(0, units_h, window_units)]
    cols = [min(window_units, units_w - c) for c in range(0, units_w, window_units)]
    return [r * c * merge * merge for r in rows for c in cols]


def family_vision_flops(shape: FamilyShape, *, views: int = 1, grid: tuple[int, int] | None = None) -> float:
    """The encoder on one image: `views` CLIP / SigLIP views (base + tiles; frames for a OneVision video), or for
    Qwen2.5-VL one image of `grid` = (h, w) patches."""
    dv, c, p = shape.vision_width, shape.channels, shape.patch_size
    if shape.windowed:
        if grid is None:
            raise ValueError(f"{shape.family}: the patch grid (h, w) of the image is needed")
        patches = grid[0] * grid[1]
        embed = 2 * patches * (c * shape.temporal_patch * p * p) * dv
        dense = shape.vision_layers * _encoder_layer_flops(dv, shape.vision_mlp, shape.vision_mlp_matrices, patches)
        full = len(shape.full_attention_layers)
        windows = sum(n * n for n in qwen_window_sizes(*grid, shape.window_units, shape.merge))
        attention = 4 * dv * (full * patches * patches + (shape.vision_layers - full) * windows)
        return float(embed + dense + attention)
    patches = shape.patches_per_view
    tokens = patches + (1 if shape.cls_token else 0)
    embed = 2 * patches * (c * p * p) * dv
    layer = _encoder_layer_flops(dv, shape.vision_mlp, shape.vision_mlp_matrices, tokens) + 4 * tokens * tokens * dv
    return float(views * (embed + shape.vision_layers * layer))


def family_projector_flops(shape: FamilyShape, *, views: int = 1, grid: tuple[int, int] | None = None) -> float:
    """The projector on one image (every view's patch tokens; Qwen2.5-VL's PatchMerger on P / 4 merged tokens)."""
    dv, d = shape.vision_width, shape.llm.width
    if shape.windowed:
        merged = grid[0] * grid[1] // (shape.merge * shape.merge)
        wide = dv * shape.merge * shape.merge
        return float(2 * merged * (wide * wide + wide * d))
    return float(2 * views * shape.patches_per_view * (dv * d + d * d))


def family_prefill_flops(
    shape: FamilyShape, *, visual_tokens: int, text_tokens: int, views: int = 1, grid: tuple[int, int] | None = None
) -> dict[str, float]:
    """vision / projector / prefill / total FLOPs of one image's prompt whose LLM receives `visual_tokens` (the
    unreduced count, or a reducer's budget: the encoder and projector run on everything either way)."""
    out = {
        "vision": family_vision_flops(shape, views=views, grid=grid),
        "projector": family_projector_flops(shape, views=views, grid=grid),
        "prefill": prefill_flops(shape.llm, 1, visual_tokens + text_tokens),
    }
    out["total"] = sum(out.values())
    return out


# -- one image's prompt on a family at each budget ---------------------------------------------------------------------
def family_image_geometry(config, height: int, width: int):
    """One image of height x width px on a family's config, as its processor counts its tokens
    (`ModelFamily.image_geometry`: model.families.ImageGeometry)."""
    from ..model.families import family_for

    return family_for(config).image_geometry(config, height, width)


@dataclass(frozen=True)
class FamilyPrefill:
    """One image's prompt on a family at one budget: what the LLM receives and the prefill's FLOPs by stage."""

    budget: int
    geometry: object  # model.families.ImageGeometry: the image unreduced
    visual_tokens: int  # what the LLM receives at `budget` (ModelFamily.kept_tokens)
    flops: dict[str, float]  # family_prefill_flops: vision, projector, prefill, total


def family_budget_prefills(config, budgets, *, height: int, width: int, text_tokens: int) -> list[FamilyPrefill]:
    """`family_prefill_flops` for one height x width image + `text_tokens` at each budget, read by the family's
    rule (`ModelFamily.check_budget`: UsageError on a budget the rule refuses)."""
    from ..model.families import family_for

    family = family_for(config)
    shape = FamilyShape.from_config(config)
    geometry = family.image_geometry(config, height, width)
    out = []
    for budget in budgets:
        kept = family.kept_tokens(family.check_budget(budget), geometry.tokens)
        flops = family_prefill_flops(
            shape, visual_tokens=kept, text_tokens=text_tokens, views=geometry.views, grid=geometry.grid
        )
        out.append(FamilyPrefill(budget, geometry, kept, flops))
    return out


__all__ = [
    "ArchShape",
    "StageFlops",
    "CONVENTION",
    "FASTV_CONVENTION",
    "vision_flops",
    "grouping_flops",
    "projector_flops",
    "llm_flops",
    "prefill_flops",
    "decode_step_flops",
    "decode_flops",
    "fastv_llm_flops",
    "generate_flops",
    "FamilyShape",
    "family_prefill_flops",
    "family_projector_flops",
    "family_vision_flops",
    "qwen_window_sizes",
    "FamilyPrefill",
    "family_budget_prefills",
    "family_image_geometry",
    "llm_shape",
]
