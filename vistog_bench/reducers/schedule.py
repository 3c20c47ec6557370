"""Budgets of the methods that prune inside the LLM: the layer mean ("equivalent tokens"), as PyramidDrop and
SparseVLM count them, turned into per-stage counts.

Glossary: L decoder layers, n0 visual tokens per image entering the LLM, l_s the layer where stage s starts,
n_s its count, K the budget = (1/L) sum over layers of the visual tokens per image that layer works on.

    K L = l_1 n0 + sum_s (l_{s+1} - l_s) n_s          (l_{S+1} = L)

Stages shrink geometrically, n_s = n0 lambda^s (PyramidDrop's rule; one stage needs no lambda); lambda is found by
bisection, then the last stage's count is set so that the sum is as close to K L as an integer allows.
"""

from __future__ import annotations

from ..errors import UsageError


def scaled_layers(paper_layers: tuple[int, ...], num_layers: int, paper_depth: int = 32) -> tuple[int, ...]:
    """A paper's pruning layers for a `paper_depth`-layer LLM placed at the same depth fraction of this one (at
    least layer 1, at most L - 1, duplicates dropped)."""
    scaled = (min(num_layers - 1, max(1, round(layer * num_layers / paper_depth))) for layer in paper_layers)
    return tuple(sorted(set(scaled)))


def minimum_mean(num_layers: int, input_tokens: int, first_layer: int) -> float:
    """The smallest layer mean reachable: n0 until the first stage, then one token per image."""
    return (first_layer * input_tokens + (num_layers - first_layer)) / num_layers


def mean_schedule(
    budget: int, num_layers: int, input_tokens: int, layers: tuple[int, ...], method: str
) -> tuple[int, ...]:
    """Per-stage counts (one per entry of `layers`) whose layer mean is the budget."""
    lowest = minimum_mean(num_layers, input_tokens, layers[0])
    if not lowest <= budget <= input_tokens:
        raise UsageError(
            f"{method} prunes from LLM layer {layers[0]} of {num_layers} with {input_tokens} visual tokens before it: "
            f"its layer-mean budget must be in {-(-lowest // 1):.0f}..{input_tokens}, got {budget}"
        )
    spans = [b - a for a, b in zip(layers, (*layers[1:], num_layers), strict=True)]

    def total(ratio: float) -> float:
        return layers[0] * input_tokens + sum(
            span * max(1.0, input_tokens * ratio ** (s + 1)) for s, span in enumerate(spans)
        )

    low, high = 0.0, 1.0
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if total(middle) < budget * num_layers else (low, middle)
    counts = [max(1, round(input_tokens * high ** (s + 1))) for s in range(len(spans) - 1)]
    rest = (
        budget * num_layers
        - layers[0] * input_tokens
        - sum(span * n for span, n in zip(spans[:-1], counts, strict=True))
    )
    last = round(rest / spans[-1])
    upper = counts[-1] if counts else input_tokens
    counts.append(min(upper, max(1, last)))
    return tuple(counts)


def first_stage_tokens(budget: int, num_layers: int, layer: int, num_patches: int, keep_ratio: float) -> int:
    """n0 for a method that keeps n0 tokens per image until layer l and about keep_ratio n0 after it (VScan, HoliTom),
    so that the layer mean is the budget: n0 = K L / (l + (L - l) keep_ratio), at most P (the second count is then
    solved exactly by `mean_schedule`)."""
    return min(num_patches, round(budget * num_layers / (layer + (num_layers - layer) * keep_ratio)))


def layer_mean(tokens_per_layer: tuple[int, ...]) -> float:
    return sum(tokens_per_layer) / len(tokens_per_layer)


def llm_layer(options: dict, paper_layer: int, num_layers: int) -> int:
    """The `layer` option, or the paper's layer scaled to this depth."""
    layer = options.get("layer")
    return layer if layer is not None else scaled_layers((paper_layer,), num_layers)[0]


def stage_layers(options: dict, paper_layers: tuple[int, ...], num_layers: int) -> tuple[int, ...]:
    """The `layers` option ("2,6,12") or the paper's layers scaled to this depth."""
    text = options.get("layers")
    if text is None:
        return scaled_layers(paper_layers, num_layers)
    try:
        layers = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise UsageError(f"layers must be comma-separated integers, e.g. 2,6,12; got {text!r}") from None
    if list(layers) != sorted(set(layers)) or not all(1 <= layer < num_layers for layer in layers):
        raise UsageError(f"layers must increase within 1..{num_layers - 1} for a {num_layers}-layer LLM, got {text}")
    return layers


__all__ = [
    "first_stage_tokens",
    "layer_mean",
    "llm_layer",
    "mean_schedule",
    "minimum_mean",
    "scaled_layers",
    "stage_layers",
]
