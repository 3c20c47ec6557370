"""The tiny testers, for the test files' `from testers import ...` (they live in `vistog_bench.testing`)."""

from vistog_bench.testing import random_images, save_tiny_llava, tiny_llava, tiny_llava_config, tiny_processor

__all__ = ["random_images", "save_tiny_llava", "tiny_llava", "tiny_llava_config", "tiny_processor"]
