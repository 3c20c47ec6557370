"""The docs say which methods run on which model family the way the code decides it.

Every prose sentence of README.md and docs/*.md that names a method (`reducers.METHODS`) beside "refused" / "runs on"
/ "supported" / "serves it as" is a claim about the families it names; a sentence that names none takes the families
of its paragraph's first sentence, else of the nearest heading that names some ("every family", "other families":
all three). Each claim is checked against what a sweep decides before it loads anything: `reducers.config_problem`
on the family's 7B config (`model.presets`), which asks `reducers/families.refusal` for LLaVA-NeXT / OneVision /
Qwen2.5-VL; `vistog` runs where a VisToG class wraps the family (`modeling_views.VIEWS_CLASSES`, LLaVA-1.5's
`VisToGForConditionalGeneration`). LLaVA-1.5's refusals depend on the checkpoint's config and the budget (FastV's
layer, PruMerge's feature layer, layer-mean floors), so only what runs there is checked. A sentence that says both
"refused" and "runs" of its methods is reported: one claim per sentence.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest

from vistog_bench.reducers.methods import METHODS

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
THREE = ("llava_next", "llava_onevision", "qwen2_5_vl")
FAMILY_NAMES = {  # how the docs name each family; a possessive ("LLaVA-1.5's encoder") names a part, not a claim
    "llava_next": r"(?:LLaVA-)?NeXT",
    "llava_onevision": r"(?:LLaVA-)?OneVision",
    "qwen2_5_vl": r"Qwen2\.5-VL|Qwen",
    "llava": r"LLaVA-1\.5",
}
ALL_FAMILIES = r"\b(?:every|each|all|other|these|these three|the three) (?:model )?famil(?:y|ies)\b"
REFUSED = r"\b(?:refused|refuses|(?:is|are|does|do) not run|cannot run|not supported)\b"
RUNS = r"\b(?:runs? on|runs? there|runs? here|(?:is|are) supported|serves? (?:it|them) as)\b"
ENGLISH = {"none", "random", "pool", "downsample"}  # method names that are also words: counted in `backticks` only
ABBREVIATIONS = ("e.g.", "i.e.", "et al.", "cf.", "vs.")


def families_in(text: str) -> set[str]:
    found = {
        family for family, pattern in FAMILY_NAMES.items() if re.search(rf"(?<![\w./-])(?:{pattern})(?!\w)(?!'s)", text)
    }
    return found | (set(THREE) if re.search(ALL_FAMILIES, text, re.IGNORECASE) else set())


def methods_in(text: str) -> list[str]:
    return [
        m
        for m in METHODS
        if f"`{m}`" in text or (m not in ENGLISH and re.search(rf"(?<![\w`/.=-]){m}(?![\w`/(-])", text))
    ]


def paragraphs(text: str) -> list[tuple[list[str], str]]:
    """(headings above, paragraph) for every prose paragraph: code blocks, indented code and tables left out."""
    headings: dict[int, str] = {}
    out, lines, fenced = [], [], False

    def flush() -> None:
        if lines:
            out.append(([headings[k] for k in sorted(headings, reverse=True)], " ".join(lines)))
            lines.clear()

    for line in text.splitlines():
        heading = re.match(r"(#+)\s+(.*)", line)
        if line.startswith("```"):
            flush()
            fenced = not fenced
        elif fenced or line.startswith("    ") or line.lstrip().startswith("|") or not line.strip():
            flush()
        elif heading:
            flush()
            level = len(heading.group(1))
            headings = {k: v for k, v in headings.items() if k < level}
            headings[level] = heading.group(2)
        else:
            lines.append(line.strip())
    flush()
    return out


def sentences(paragraph: str) -> list[str]:
    for short in ABBREVIATIONS:
        paragraph = paragraph.replace(short, short.replace(".", "\x00"))
    parts = re.split(r"(?<=\.)\s+", paragraph)
    return [part.replace("\x00", ".") for part in parts if part.strip()]


def claims(text: str) -> list[tuple[str, str, tuple[str, ...], frozenset[str]]]:
    """(sentence, "refused" | "runs" | "both", methods, families) for every claim in a page's text."""
    found = []
    for headings, paragraph in paragraphs(text):
        parts = sentences(paragraph)
        context = families_in(parts[0]) or next((families_in(h) for h in headings if families_in(h)), set())
        for sentence in parts:
            refused, runs = re.search(REFUSED, sentence), re.search(RUNS, sentence)
            methods = methods_in(sentence)
            families = families_in(sentence) or context
            if (refused or runs) and methods and families:
                verdict = "both" if refused and runs else "refused" if refused else "runs"
                found.append((sentence, verdict, tuple(methods), frozenset(families)))
    return found


@functools.cache
def runs_on(family: str, method: str) -> bool:
    """Whether a sweep runs `method` on a checkpoint of `family` (the registry's answer, nothing loaded)."""
    from vistog_bench.model.modeling import VisToGForConditionalGeneration
    from vistog_bench.model.modeling_views import VIEWS_CLASSES
    from vistog_bench.model.presets import FAMILY_PRESETS, family_preset_config, preset_config
    from vistog_bench.reducers.methods import config_problem

    if method == "vistog":
        wrapper = VisToGForConditionalGeneration.from_llava if family == "llava" else None
        return (wrapper or VIEWS_CLASSES.get(family)) is not None
    if family == "llava":
        return config_problem(preset_config("llava-1.5-7b"), method) is None
    (config,) = [c for c in map(family_preset_config, FAMILY_PRESETS) if c.model_type == family]
    return config_problem(config, method) is None


def wrong(claim) -> list[str]:
    """What the registry contradicts in one claim, one line each."""
    sentence, verdict, methods, families = claim
    if verdict == "both":
        return [f"says both 'refused' and 'runs' of {', '.join(methods)}: {sentence}"]
    problems = []
    for family in sorted(families):
        if family == "llava" and verdict == "refused":
            continue  # config- and budget-dependent there
        for method in methods:
            if runs_on(family, method) != (verdict == "runs"):
                problems.append(f"{method} {verdict} on {family}? the registry says otherwise: {sentence}")
    return problems


def test_every_refused_and_runs_sentence_in_the_docs_agrees_with_the_registry():
    checked, problems = set(), []
    for page in PAGES:
        for claim in claims(page.read_text(encoding="utf-8")):
            problems += [f"{page.relative_to(REPO)}: {line}" for line in wrong(claim)]
            checked |= {(f, m, claim[1]) for f in claim[3] for m in claim[2]}
    assert problems == []
    # the claims that matter were found and checked, not skipped: the families' scored methods run, PruMerge and the
    # grid methods are refused, VisToG runs on NeXT / OneVision
    for family in THREE:
        assert {
            (family, "visionzip", "runs"),
            (family, "vispruner", "runs"),
            (family, "prumerge", "refused"),
        } <= checked
    assert {("llava_next", "vistog", "runs"), ("qwen2_5_vl", "vistog", "refused")} <= checked


# model.md's paragraph before it was corrected: visionzip and vispruner said refused on the three families
EARLIER_MODEL_MD = """\
## Families: LLaVA-NeXT, LLaVA-OneVision, Qwen2.5-VL

**Reducers** (`reducers/families.py`): `random`, `divprune` and `cdpruner` act on the visual tokens at the LLM
input, kept tokens at their original positions (Qwen2.5-VL's 3-D mRoPE rows included). Refused in one line (also by
`reducers.config_problem`, so a sweep refuses before loading): methods that read CLS attention (visionzip, vispruner,
prumerge: these encoders give the LLM no CLS token), methods inside LLaVA-1.5's encoder or on its 24 x 24 grid (tome,
downsample, pool, vscan), holitom (equal-sized video frames), vistog (use `VisToGFamily`, below).
"""


def test_the_check_catches_the_sentence_it_was_written_for():
    problems = [line for claim in claims(EARLIER_MODEL_MD) for line in wrong(claim)]
    said = {line.split(" ")[0] + "@" + line.split(" on ")[1].split("?")[0] for line in problems}
    assert {f"{m}@{f}" for m in ("visionzip", "vispruner") for f in THREE} <= said
    assert not any(line.startswith(("prumerge", "tome", "vscan", "holitom")) for line in problems)


@pytest.mark.parametrize(
    "sentence,expected",
    [
        ("`pool` runs on every family.", [("runs", ("pool",), frozenset(THREE))]),
        ("A random image is refused on Qwen2.5-VL.", []),  # `random` the word, not the method
        ("LLaVA-1.5's encoder refuses fastv.", []),  # a possessive names a part, no family claim
    ],
)
def test_claims_read_methods_and_families_as_written(sentence, expected):
    assert [c[1:] for c in claims(sentence)] == expected
