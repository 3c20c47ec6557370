"""VisToG on transformers' LLaVA-1.5."""

from .config import VisToGConfig
from .modeling import TokenReducer, VisToGForConditionalGeneration, VisToGModel
from .vision import VisionStates

__all__ = ["VisToGConfig", "VisToGForConditionalGeneration", "VisToGModel", "VisionStates", "TokenReducer"]
