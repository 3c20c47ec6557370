import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def llava_hf_layouts(tmp_path_factory) -> dict[str, Path]:
    """Tiny checkpoints laid out as llava-hf/llava-1.5-7b-hf: "hub", "resaved" (transformers 5), "no-template"."""
    from vistog_bench.testing.hub_checkpoints import write_layouts

    return write_layouts(tmp_path_factory.mktemp("llava-hf"))


@pytest.fixture(scope="module")
def model():
    """A stock tiny LLaVA behind VisToG's class (VisToG off), one per test module: reducer tests apply methods to it."""
    from testers import tiny_llava

    from vistog_bench.model import VisToGForConditionalGeneration

    return VisToGForConditionalGeneration.from_llava(tiny_llava(), num_semantic_tokens=None).eval()


@pytest.fixture(scope="module")
def processor():
    from testers import tiny_processor

    return tiny_processor()
