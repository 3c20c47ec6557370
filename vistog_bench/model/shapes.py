"""Old name of `model.presets`, kept while code outside this package's model layer still imports it
(tests/testers.py, hub_checkpoints.py); new code imports `vistog_bench.model.presets`."""

from .presets import PRESETS as SHAPES
from .presets import preset_config as shape_config

__all__ = ["SHAPES", "shape_config"]
