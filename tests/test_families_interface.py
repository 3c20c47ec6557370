"""The family interface holds: every checkpoint's family is one `ModelFamily` object chosen from `config.model_type`,
and nothing outside model/ branches on the family or computes the patch grid itself.

A family branch, as this scan reads the source: a config's model_type compared with a literal (`model_type ==
"llava_next"`, `model_type in ("llava", ...)`), an isinstance test against a VisToG model class, an import of one
family's own module (model/families/<name>.py, model/modeling_views.py), or a lookup of the family record
(`family_of`, `model_family`). Callers ask `family_for(config)` / `family_of_model(model)` instead. The patch grid,
`image_size // patch_size`, is model/geometry.py's alone.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import vistog_bench
from vistog_bench.errors import UsageError
from vistog_bench.model.families import FAMILY_OBJECTS, MODEL_TYPES, family_for, find_family
from vistog_bench.model.families.llava import LlavaFamily
from vistog_bench.model.presets import FAMILY_PRESETS, PRESETS, family_preset_config, preset_config

PACKAGE = Path(vistog_bench.__file__).parent
FAMILY_BRANCHES = {
    "model_type compared with a literal": re.compile(
        r"model_type\s*(==|!=)\s*[\"']|model_type\s+(not\s+)?in\s+\([\"']"
    ),
    "isinstance on a VisToG model class": re.compile(
        r"isinstance\([^)]*VisToG\w*(ForConditionalGeneration|Views|Family)"
    ),
    "import of one family's module": re.compile(r"model\.(families\.(base|anyres|llava\w*|qwen\w*)|modeling_views)\b"),
    "lookup of the family record": re.compile(r"\b(family_of|model_family)\("),
}
# Family-specific reducer code: how a reducer selects differs per family's encoder (CLS or not, views or windows),
# which is what these files are for (docs/reducers.md, "On other families").
FAMILY_SPECIFIC = {"reducers/families.py", "reducers/family_attention.py"}


def sources(exclude=()):
    """(path relative to the package, text) of every module outside model/ and `exclude`."""
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        if not name.startswith("model/") and name not in exclude:
            yield name, path.read_text(encoding="utf-8")


def test_every_model_type_has_one_family_and_the_presets_find_theirs():
    seen = [t for family in FAMILY_OBJECTS for t in family.model_types]
    assert len(seen) == len(set(seen)) == len(MODEL_TYPES)
    assert {family.model_type for family in FAMILY_OBJECTS} <= set(MODEL_TYPES)
    for family in FAMILY_OBJECTS:
        assert all(find_family(t) is family for t in family.model_types)
    assert all(isinstance(family_for(preset_config(name)), LlavaFamily) for name in PRESETS)
    for name in FAMILY_PRESETS:
        config = family_preset_config(name)
        assert family_for(config).model_type == config.model_type
    with pytest.raises(UsageError, match="holds a 'bert' model; expected one of: llava, vistog"):
        family_for(type("Config", (), {"model_type": "bert"})())


def test_nothing_outside_model_branches_on_the_family():
    found = [
        f"{name}:{number}: {what}: {line.strip()}"
        for name, text in sources(exclude=FAMILY_SPECIFIC)
        for number, line in enumerate(text.splitlines(), 1)
        for what, pattern in FAMILY_BRANCHES.items()
        if pattern.search(line.split("#")[0])
    ]
    assert not found, "\n".join(found)


def test_the_scan_finds_the_branches_it_was_written_for():
    lines = [
        'if config.model_type == "llava":',
        "native = isinstance(self.model, VisToGFamily)",
        "from .model.families.qwen2_5_vl import QWEN_VIDEO_PIXELS",
        "from ..model.modeling_views import VisToGViews",
        "family = model_family(model)",
    ]
    assert [any(p.search(line) for p in FAMILY_BRANCHES.values()) for line in lines] == [True] * len(lines)
    assert not any(p.search("family = family_for(config)") for p in FAMILY_BRANCHES.values())


def test_the_patch_grid_is_computed_in_one_place():
    found = [
        f"{path.relative_to(PACKAGE)}:{number}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "image_size //" in line.split("#")[0] and path != PACKAGE / "model" / "geometry.py"
    ]
    assert not found, f"use model.geometry.patch_side / num_patches: {found}"
