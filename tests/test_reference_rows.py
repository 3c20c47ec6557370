"""The published rows in results/reference/: checked against figures the same tables print (their own relative /
average columns, read beside the rows), the budget conventions they carry, and how the reader refuses bad files."""

from pathlib import Path

import pytest
from testers import md_row

from vistog_bench.errors import UsageError
from vistog_bench.report.reference import CONVENTIONS, load_reference
from vistog_bench.report.render import to_markdown
from vistog_bench.report.tables import reference_table

FOLDER = Path(__file__).resolve().parents[1] / "results" / "reference"
LLAVA = FOLDER / "llava15_7b_published.csv"
VIDEO = FOLDER / "llava_ov_7b_video_published.csv"

# The "Rel." column of each LLaVA-1.5-7B table (mean over its ten benchmarks of value / the 576-token value, in %),
# read from the same images as the rows: a typo in any transcribed number moves the computed retention off it.
RELATIVE = {
    "CDPruner": {
        ("FastV", 128): 92.8,
        ("PDrop", 128): 95.0,
        ("SparseVLM", 128): 96.3,
        ("VisionZip", 128): 97.6,
        ("DART", 128): 96.9,
        ("DivPrune", 128): 97.5,
        ("CDPruner", 128): 99.0,
        ("FastV", 64): 74.9,
        ("PDrop", 64): 72.9,
        ("SparseVLM", 64): 87.1,
        ("VisionZip", 64): 94.4,
        ("DART", 64): 92.6,
        ("DivPrune", 64): 94.7,
        ("CDPruner", 64): 97.0,
    },
    "VisPruner": {
        ("ToMe", 128): 83.9,
        ("FastV", 128): 85.4,
        ("SparseVLM", 128): 94.4,
        ("VisionZip", 128): 98.4,
        ("VisPruner", 128): 99.6,
        ("ToMe", 64): 73.9,
        ("FastV", 64): 75.9,
        ("SparseVLM", 64): 86.4,
        ("VisionZip", 64): 95.6,
        ("VisPruner", 64): 96.6,
    },
    # VScan's table (nine benchmarks; its ToMe rows give seven), as a survey README re-quotes it with its "Average"
    "VScan": {("VScan", 192): 99.0, ("VScan", 128): 98.8, ("VScan", 64): 96.7, ("ToMe", 128): 80.4, ("ToMe", 64): 70.1},
}
# HoliTom's "Avg. Score" column (mean of MVBench, EgoSchema, LongVideoBench, VideoMME) for LLaVA-OneVision-7B.
AVERAGE = {
    ("LLaVA-OneVision-7B", 100): 58.4,
    ("FastV", 25): 56.5,
    ("PDrop", 25): 56.2,
    ("VisionZip", 25): 58.2,
    ("HoliTom (w/o M)", 25): 58.7,
    ("HoliTom", 25): 58.8,
    ("VisionZip", 20): 57.7,
    ("HoliTom (w/o M)", 20): 58.5,
    ("HoliTom", 20): 58.8,
    ("VisionZip", 15): 56.7,
    ("HoliTom (w/o M)", 15): 58.5,
    ("HoliTom", 15): 58.2,
    ("VisionZip", 10): 53.5,
    ("HoliTom (w/o M)", 10): 57.8,
    ("HoliTom", 10): 57.9,
}


@pytest.fixture(scope="module")
def reference():
    return load_reference([LLAVA, VIDEO])


def rows_of(reference, source_start: str):
    return {(r.method, r.visual_tokens): r for r in reference.rows if r.source.startswith(source_start)}


@pytest.mark.parametrize("paper", list(RELATIVE))
def test_transcribed_rows_give_their_tables_relative_column(reference, paper):
    rows = rows_of(reference, paper)
    assert set(RELATIVE[paper]) | {("LLaVA-1.5-7B", 576)} == set(rows)
    full = rows[("LLaVA-1.5-7B", 576)].scores
    for key, relative in RELATIVE[paper].items():
        assert len(rows[key].scores) >= 7 and set(rows[key].scores) <= set(full), key
        # the tables round a mean of ten ratios; one VisPruner cell (99.66 -> 99.6) is printed truncated
        assert rows[key].retention == pytest.approx(relative, abs=0.07), key


def test_video_rows_average_to_the_tables_average_score(reference):
    rows = {(r.method, r.retained_percent): r for r in reference.rows if r.file == VIDEO}
    assert set(rows) == set(AVERAGE)
    for key, average in AVERAGE.items():
        scores = rows[key].scores
        assert set(scores) == {"mvbench", "egoschema", "longvideobench", "videomme"}
        assert sum(scores.values()) / 4 == pytest.approx(average, abs=0.051), key
        assert rows[key].visual_tokens is None and rows[key].budget == ("percent", key[1])


def test_methods_added_have_rows_and_conventions(reference):
    have = {(r.method, r.budget_label) for r in reference.rows}
    for method in ("DivPrune", "CDPruner", "DART", "PDrop", "SparseVLM", "FastV", "VisionZip"):
        assert {(method, "128"), (method, "64")} <= have, method
    assert {("VisPruner", "128"), ("VisPruner", "64")} <= have
    assert {("HoliTom", f"{p} %") for p in (25, 20, 15, 10)} <= have
    assert {("VScan", "192"), ("VScan", "128"), ("VScan", "64")} <= have
    for row in reference.rows:
        assert "arXiv" in row.source and row.convention in (*CONVENTIONS, ""), row
        expected = {
            "DART": "after_layer",
            "FastV": "after_layer",
            "PDrop": "layer_mean",
            "SparseVLM": "layer_mean",
            "VScan": "layer_mean",
        }
        if row.file == LLAVA and row.method in expected:
            assert row.convention == expected[row.method], row
        if row.method in ("DivPrune", "CDPruner", "VisPruner", "VisionZip", "ToMe", "HoliTom"):
            assert row.convention == "llm_input", row
    perception = [r for r in reference.rows if "mme_perception" in r.scores]
    assert perception and all("mme" not in r.scores for r in perception)  # never in the perception + cognition column


def test_reported_table_shows_percent_budgets_and_conventions(reference):
    text = to_markdown(reference_table(reference))
    assert md_row(text, "HoliTom (w/o M)")[1] == "25 %"
    cdpruner = md_row(text, "CDPruner")
    assert cdpruner[1] == "128" and cdpruner[2] == "llm_input"
    assert md_row(text, "PDrop")[2] == "layer_mean" and "not stated" in text  # FastV / PDrop in HoliTom's table
    budgets = [line.strip("|").split("|")[1].strip() for line in text.splitlines() if line.startswith("| ")]
    assert budgets.index("25 %") > len(budgets) - 1 - budgets[::-1].index("64")  # token counts first, then percents


@pytest.mark.parametrize(
    "text, message",
    [
        ("method,visual_tokens,convention,source,gqa\nX,64,layer-mean,p,1\n", "convention='layer-mean' is not one of"),
        ("method,visual_tokens,retained_percent,source,gqa\nX,64,10,p,1\n", "exactly one budget column"),
        ("method,source,gqa\nX,p,1\n", "got none"),
        ("method,retained_percent,source,gqa\nX,0,p,1\n", "line 2: needs a method and a retained_percent > 0"),
    ],
)
def test_reader_refuses_malformed_files_in_one_line(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(UsageError, match=message):
        load_reference([path])
