"""`vistog-bench run` on LLaVA-NeXT, LLaVA-OneVision and Qwen2.5-VL checkpoints in their hub repos' layouts
(vistog_bench.testing.hub_checkpoints_families), through the real CLI: `none` and one reducer per family at one budget
of the family's rule, a VisToG-NeXT checkpoint at its N per view, the samples' received and unreduced counts, the
report and `check` on such a run; refusals in one line before anything loads. (The CLI's `main`, in this process.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vistog_bench.cli import main as cli_main
from vistog_bench.demo.world import IMAGE_SIZE
from vistog_bench.model import load_checkpoint
from vistog_bench.model.families import find_family
from vistog_bench.model.loading import load_config
from vistog_bench.model.modeling_views import VisToGLlavaNextForConditionalGeneration
from vistog_bench.profiling.flops import family_image_geometry
from vistog_bench.testing.hub_checkpoints_families import write_family_layouts

pytestmark = pytest.mark.slow
NAMES = {"llava-next": "llava_next", "llava-onevision": "llava_onevision", "qwen2.5-vl": "qwen2_5_vl"}
SEMANTIC = 16  # N of the VisToG-NeXT checkpoint
LIMIT = 2


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    found = write_family_layouts(tmp_path_factory.mktemp("families"))
    model, processor = load_checkpoint(found["llava-next"])
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("vistog-next") / f"vistog{SEMANTIC}"
    VisToGLlavaNextForConditionalGeneration.from_stock(model, num_semantic_tokens=SEMANTIC).save_pretrained(out)
    processor.save_pretrained(out)
    found["vistog-next"] = out
    return found


def run_cli(capsys, *argv) -> tuple[int, str]:
    """`vistog-bench ARGV` through the CLI's own entry point (in this process: torch, transformers and lmms-eval are
    imported once for the module): exit code and what it printed to stderr."""
    capsys.readouterr()
    code = cli_main(list(argv))
    return code, capsys.readouterr().err


def only_run_dir(output: Path) -> Path:
    (run_dir,) = [p for p in output.iterdir() if p.is_dir()]
    return run_dir


def lines_of(run_dir: Path, method: str, budget: int) -> list[dict]:
    path = run_dir / "samples" / f"shapes_vqa__{method}__{budget}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


# (family, reducer, budget, the none cell's budget: 100 % or the most one image gives on the checkpoint's config)
SWEEPS = [
    ("llava-next", "divprune", 576, "per_image_total"),
    ("llava-onevision", "random", 640, "per_image_total"),
    ("qwen2.5-vl", "cdpruner", 25, "percent_of_own"),
]


@pytest.mark.parametrize("name,method,budget,rule", SWEEPS, ids=[s[0] for s in SWEEPS])
def test_sweep_on_a_family_checkpoint(layouts, tmp_path, capsys, name, method, budget, rule):
    family = find_family(NAMES[name])
    config = load_config(layouts[name])
    full = 100 if rule == "percent_of_own" else family.most_image_tokens(config)
    models = [str(layouts[name])] + ([str(layouts["vistog-next"])] if name == "llava-next" else [])
    methods = f"none,{method}" + (",vistog" if name == "llava-next" else "")
    report = name == "qwen2.5-vl"  # one run renders its report (figures cost seconds), another is checked
    out = tmp_path / "results"
    code, err = run_cli(
        capsys,
        "run",
        "--model",
        *models,
        "--method",
        methods,
        "--budgets",
        str(budget),
        "--tasks",
        "shapes_vqa",
        "--limit",
        str(LIMIT),
        "--output",
        str(out),
        *([] if report else ["--no-report"]),
    )
    assert code == 0, err[-3000:]
    run_dir = only_run_dir(out)
    cells = {(c["method"], c["budget"]): c for c in json.loads((run_dir / "metrics.json").read_text())}
    expected = {("none", full), (method, budget)} | ({("vistog", SEMANTIC)} if name == "llava-next" else set())
    assert set(cells) == expected
    assert all(c["status"] == "ok" and c["n_samples"] == LIMIT for c in cells.values())
    assert cells[("none", full)]["budget_rule"] == cells[(method, budget)]["budget_rule"] == family.budget_rule == rule

    unreduced = family_image_geometry(config, IMAGE_SIZE, IMAGE_SIZE).tokens  # the processor's count, from the config
    kept = family.kept_tokens(budget, unreduced)
    for (cell_method, cell_budget), cell in cells.items():
        lines = lines_of(run_dir, cell_method, cell_budget)
        assert len(lines) == LIMIT
        for line in lines:
            assert line["visual_tokens_unreduced"] == [unreduced]
            assert all(r <= u for r, u in zip(line["visual_tokens"], line["visual_tokens_unreduced"], strict=True))
        received = [n for line in lines for n in line["visual_tokens"]]
        assert cell["mean_visual_tokens"] == sum(received) / len(received)
        assert cell["mean_visual_tokens_unreduced"] == unreduced
        if cell_method == "none":
            assert received == [unreduced] * LIMIT
        elif cell_method == "vistog":  # N per view: base view and tiles
            assert cell["budget_rule"] == "per_view"
            assert received == [family_image_geometry(config, IMAGE_SIZE, IMAGE_SIZE).views * SEMANTIC] * LIMIT
        else:
            assert received == [kept] * LIMIT and kept < unreduced
    records = [json.loads(line) for line in (run_dir / "profile.jsonl").read_text().splitlines()]
    assert {(r["method"], r["budget"]) for r in records} == expected  # each cell's requests, under its own budget
    assert all(r["total_ms"] > 0 and r["prefill_ms"] > 0 and r["flops"] == {} for r in records)
    if report:
        check_report_and_check(run_dir, tmp_path, f"none@{full}", f"{method}@{budget}", rule, kept, unreduced)


def check_report_and_check(
    run_dir: Path, tmp_path: Path, full: str, reduced: str, rule: str, kept: int, unreduced: int
) -> None:
    """The run's report: the budget rule said, the tokens received and unreduced per row; `check` against a
    baseline of the same run passes."""
    table = (run_dir / "report" / "report.md").read_text().split("## Reported")[0]
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
        for line in table.splitlines()
        if line.startswith("| ")
    }
    assert rows["Method"][:3] == ["Method", "Tokens", "Unreduced"]
    assert rows[f"{full} (full)"][1:3] == [str(unreduced), str(unreduced)]
    assert rows[reduced][1:3] == [str(kept), str(unreduced)]
    speedup = rows["Method"].index("Speedup (×)")
    values = [float(rows[label][speedup].split("<")[0].strip("*")) for label in (f"{full} (full)", reduced)]
    assert values[0] == 1.0 and values[1] > 0  # against the family's none cell
    assert f"_Budgets (after @): {rule} = " in table
    baselines = tmp_path / "baselines"
    assert cli_main(["baseline", "update", str(run_dir), "--name", "family", "--out-dir", str(baselines)]) == 0
    assert cli_main(["check", str(run_dir), "--baseline", str(baselines / "family.json"), "--quiet"]) == 0


@pytest.mark.parametrize(
    "name,arguments,messages",
    [
        (
            "llava-next",
            ["--method", "none,tome,fastv", "--budgets", "576"],
            ["cannot run tome at budget 576", "cannot run fastv at budget 576"],
        ),
        ("qwen2.5-vl", ["--method", "random", "--budgets", "150"], ["percentage of each image's own visual tokens"]),
        ("llava-next", ["--method", "random", "--budgets", "5000"], ["budget 5000 is out of range: 1..2928"]),
        ("llava-next", ["--method", "vistog", "--budgets", "576"], ["no VisToG checkpoint of llava_next"]),
        ("mixed", ["--method", "none"], ["different model families (llava_next, qwen2_5_vl)"]),
    ],
    ids=["refused-methods", "percent", "per-image", "no-vistog", "mixed"],
)
def test_refusals_are_one_line_each_and_exit_2(layouts, tmp_path, capsys, name, arguments, messages):
    models = [layouts["llava-next"], layouts["qwen2.5-vl"]] if name == "mixed" else [layouts[name]]
    out = tmp_path / "out"
    code = cli_main(["run", "--model", *map(str, models), "--tasks", "shapes_vqa", *arguments, "--output", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == len(messages)
    assert all(message in line for message, line in zip(messages, err, strict=True))
    assert not out.exists() or not any(out.iterdir())


def test_controlled_profiling_of_a_family_checkpoint_names_where_it_is_measured(layouts, tmp_path, capsys):
    code = cli_main(
        [
            "profile",
            "--model",
            str(layouts["qwen2.5-vl"]),
            "--budgets",
            "100",
            "--batch-sizes",
            "1",
            "--repeats",
            "2",
            "--output",
            str(tmp_path / "out"),
        ]
    )
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "'qwen2_5_vl' model" in line and "vistog-bench run --model" in line and "--analytic" in line


def test_report_divides_by_the_familys_none_cell(tmp_path):
    """Retention and speedup of a family run's rows against its `none` cell (at the most tokens an image gives),
    from the files: cells with the rule and token means, request records as the profiler writes them."""
    from vistog_bench.report.data import build_report_data, read_runs
    from vistog_bench.report.tables import main_table
    from vistog_bench.results import CellResult, ProfileRecord, RunDir, RunManifest

    run = RunDir(tmp_path / "family-run")
    run.write_manifest(
        RunManifest(
            "family-run",
            ["vistog-bench", "run"],
            {"device": "cpu", "dtype": "float32"},
            None,
            {},
            {"device": "cpu"},
            0,
            "2026-12-01T00:00:00",
        )
    )
    rows = {("none", 2928): (0.8, 2400.0, [100.0, 104.0, 98.0]), ("random", 576): (0.6, 576.0, [50.0, 52.0, 49.0])}
    for (method, budget), (score, tokens, times) in rows.items():
        run.record_cell(
            CellResult(
                "shapes_vqa",
                method,
                budget,
                "ok",
                {"exact_match,none": score},
                n_samples=4,
                budget_rule="per_image_total",
                mean_visual_tokens=tokens,
                mean_visual_tokens_unreduced=2400.0,
            )
        )
        run.append_profile(
            [
                ProfileRecord(
                    kind="request",
                    method=method,
                    budget=budget,
                    batch_size=1,
                    device="cpu",
                    dtype="float32",
                    task="shapes_vqa",
                    visual_tokens=int(tokens),
                    total_ms=ms,
                )
                for ms in times
            ]
        )
    table = main_table(build_report_data(read_runs([run.path])))
    by_label = {row["method"].value: row for row in table.rows}
    full, reduced = by_label["none@2928 (full)"], by_label["random@576"]
    assert [full["tokens"].value, full["unreduced"].value] == [2400.0, 2400.0]
    assert [reduced["tokens"].value, reduced["unreduced"].value] == [576.0, 2400.0]
    assert reduced["retention"].value == pytest.approx(100 * 0.6 / 0.8)
    assert reduced["speedup"].value == pytest.approx(100.0 / 50.0) and full["speedup"].value == 1.0
    assert any(line.startswith("Budgets (after @): per_image_total = ") for line in table.provenance)
