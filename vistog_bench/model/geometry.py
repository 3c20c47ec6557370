"""Geometry derived from a ViT config: the one place the patch grid is computed.

Glossary: side, patches along one side of a square view (24 for ViT-L/14 at 336 px, 27 for SigLIP/14 at 384 px);
P = side x side, patches of one view.

    patch_side(config.vision_config)   # 24
    num_patches(config.vision_config)  # 576
"""

from __future__ import annotations


def patch_side(vision_config) -> int:
    """Patches along one side of a view: image_size // patch_size."""
    return vision_config.image_size // vision_config.patch_size


def num_patches(vision_config) -> int:
    """P: patches of one view (CLS, if any, apart)."""
    return patch_side(vision_config) ** 2


__all__ = ["num_patches", "patch_side"]
