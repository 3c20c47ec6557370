"""Counted FLOPs: `torch.utils.flop_counter.FlopCounterMode`, with formulas for the SDPA kernels it does not count.

On CPU `F.scaled_dot_product_attention` dispatches to `aten._scaled_dot_product_flash_attention_for_cpu`, which the
counter's registry (torch 2.14) lacks: without a formula every attention score and weighted sum would count as zero.
We give such kernels torch's own SDPA formula (`sdpa_flop_count`: 4 * B * h * q * k * dh, full attention, the same as
for the CUDA kernels it already knows), so CPU and GPU counts agree.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode, flop_registry, sdpa_flop_count

# SDPA kernels with (query, key, value, ...) leading arguments that FlopCounterMode may not know.
SDPA_KERNELS = (
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_fused_attention_overrideable",
)


def _sdpa_forward_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def missing_sdpa_formulas() -> dict:
    """{aten op: formula} for the SDPA kernels this torch's counter does not count."""
    mapping = {}
    for name in SDPA_KERNELS:
        op = getattr(torch.ops.aten, name, None)
        if op is not None and op not in flop_registry and op.default not in flop_registry:
            mapping[op] = _sdpa_forward_flops
    return mapping


def flop_counter() -> FlopCounterMode:
    """A silent FlopCounterMode that also counts the CPU flash-attention kernel."""
    return FlopCounterMode(display=False, custom_mapping=missing_sdpa_formulas())


def mismatches(analytic: dict[str, float], counted: dict[str, float], tolerance: float = 0.01) -> dict[str, float]:
    """{stage: relative difference} where counted and analytic differ by more than `tolerance` (of the analytic)."""
    found = {}
    for stage in analytic.keys() & counted.keys():
        a, c = analytic[stage], counted[stage]
        if a == 0 and c == 0:
            continue
        relative = abs(c - a) / a if a else float("inf")
        if relative > tolerance:
            found[stage] = relative
    return found


MISMATCH_TOLERANCE = 0.01

__all__ = ["flop_counter", "missing_sdpa_formulas", "mismatches", "MISMATCH_TOLERANCE", "SDPA_KERNELS"]
