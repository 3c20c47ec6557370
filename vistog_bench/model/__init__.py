"""VisToG on transformers' LLaVA-1.5."""

from .config import VisToGConfig
from .loading import load_checkpoint
from .modeling import TokenReducer, VisToGForConditionalGeneration, VisToGModel
from .presets import preset_config
from .processing import build_inputs, llava_prompt
from .vision import VisionStates

__all__ = [
    "VisToGConfig",
    "VisToGForConditionalGeneration",
    "VisToGModel",
    "VisionStates",
    "TokenReducer",
    "load_checkpoint",
    "build_inputs",
    "llava_prompt",
    "preset_config",
]
