"""The tiny testers, for the test files' `from testers import ...` (they live in `vistog_bench.testing.tiny_models`),
and small helpers more than one test file uses."""

from __future__ import annotations

from pathlib import Path

from vistog_bench.testing.tiny_models import (
    random_images,
    save_tiny_llava,
    tiny_llava,
    tiny_llava_config,
    tiny_processor,
)


def save_tiny_checkpoints(root: Path, num_semantic_tokens: int = 16) -> tuple[str, str]:
    """(stock LLaVA folder, VisToG folder) under `root`: the tiny LLaVA and a fresh VisToG on it (seed 0)."""
    import torch

    from vistog_bench.model import VisToGForConditionalGeneration, load_checkpoint

    llava_dir = save_tiny_llava(root / "llava")
    model, processor = load_checkpoint(llava_dir)
    torch.manual_seed(0)
    vistog = VisToGForConditionalGeneration.from_llava(model, num_semantic_tokens=num_semantic_tokens)
    vistog_dir = root / f"vistog{num_semantic_tokens}"
    vistog.save_pretrained(vistog_dir)
    processor.save_pretrained(vistog_dir)
    return str(llava_dir), str(vistog_dir)


def md_row(markdown: str, label: str) -> list[str]:
    """The cells of the Markdown table row whose first cell starts with `label`."""
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0].startswith(label):
            return cells
    raise AssertionError(f"no row {label!r} in\n{markdown}")


__all__ = [
    "random_images",
    "save_tiny_llava",
    "tiny_llava",
    "tiny_llava_config",
    "tiny_processor",
    "save_tiny_checkpoints",
    "md_row",
]
