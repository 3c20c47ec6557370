"""Reports: numbers in the rendered tables, LaTeX structure, figures, HTML page, bad input through the CLI.

Result folders are written through `vistog_bench.results` with round numbers so the expected retention and speedup
can be checked by hand.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from testers import md_row

from vistog_bench import cli
from vistog_bench.analysis import headline_score
from vistog_bench.report import build_report, write_report
from vistog_bench.report.figures import FIGURE_NAMES, pareto_frontier
from vistog_bench.report.render import to_latex, to_markdown
from vistog_bench.results import (
    CellResult,
    ProfileRecord,
    RunDir,
    RunManifest,
    failed_status,
)

REFERENCE_CSV = Path(__file__).resolve().parents[1] / "results" / "reference" / "llava15_7b_published.csv"


# ---------------------------------------------------------------------------------------------------------------
# building result folders
# ---------------------------------------------------------------------------------------------------------------
def manifest(run_id: str, device: str = "NVIDIA H100 80GB HBM3") -> RunManifest:
    return RunManifest(
        run_id=run_id,
        command=["vistog-bench", "run"],
        config={"dtype": "bfloat16", "batch_size": 1},
        git_sha="0123456789abcdef",
        versions={"lmms_eval": "0.7.3"},
        device={"name": device},
        seed=0,
        started_at="2026-11-25T10:00:00",
        finished_at="2026-11-25T11:00:00",
    )


def gqa(em: float) -> dict:
    return {"exact_match,none": em}


def mme(perception: float, cognition: float, spelling: str = "mme_percetion_score") -> dict:
    return {f"{spelling},none": perception, "mme_cognition_score,none": cognition}


def pope(f1: float) -> dict:
    return {"pope_f1_score,none": f1, "pope_accuracy,none": f1 - 0.01}


def cell(task, method, budget, metrics=None, status="ok", stderr=None) -> CellResult:
    return CellResult(task, method, budget, status, metrics or {}, stderr or {}, n_samples=100 if metrics else 0)


def controlled(
    method,
    budget,
    total_ms,
    *,
    path="compiled",
    device="NVIDIA H100 80GB HBM3",
    prefill_flops=None,
    batch_size=1,
    prefill_ms=None,
) -> ProfileRecord:
    prefill = prefill_ms if prefill_ms is not None else total_ms * 0.3
    return ProfileRecord(
        kind="controlled",
        method=method,
        budget=budget,
        batch_size=batch_size,
        device=device,
        dtype="bfloat16",
        path=path,
        visual_tokens=budget,
        text_tokens=40,
        output_tokens=16,
        preprocess_ms=1.0,
        vision_ms=5.0,
        grouping_ms=1.0 if method == "vistog" else None,
        projector_ms=0.5,
        prefill_ms=prefill,
        decode_ms=total_ms - prefill - 7.5,
        total_ms=total_ms,
        stats={"total": {"median": total_ms, "p10": total_ms * 0.95, "p90": total_ms * 1.05, "cv": 0.02, "n": 20}},
        flops={"prefill": prefill_flops if prefill_flops is not None else 2e12 * (budget + 40) / 616},
        peak_memory_bytes={"cuda:0": 14 * 2**30 + budget * 2**20},
        kv_cache_bytes=(budget + 56) * 2**19,
        energy_j=budget / 100.0,
    )


def make_run(root: Path, run_id: str, cells=(), records=(), device="NVIDIA H100 80GB HBM3") -> Path:
    run = RunDir(root / run_id)
    run.write_manifest(manifest(run_id, device))
    for c in cells:
        run.record_cell(c)
    if records:
        run.append_profile(records)
    return run.path


@pytest.fixture
def main_run(tmp_path) -> Path:
    """none@576 is the full budget; retention and speedup of the others are easy to check by hand."""
    cells = [
        cell("gqa", "none", 576, gqa(0.60), stderr={"exact_match_stderr,none": 0.0049}),
        cell("mme", "none", 576, mme(1500.0, 350.0)),
        cell("pope", "none", 576, pope(0.86)),
        cell("gqa", "vistog", 192, gqa(0.57)),
        cell("mme", "vistog", 192, mme(1400.0, 300.0)),
        cell("pope", "vistog", 192, pope(0.86)),
        cell("gqa", "vistog", 64, gqa(0.54)),
        cell("mme", "vistog", 64, mme(1300.0, 300.0)),
        cell("pope", "vistog", 64, pope(0.80)),
        cell("gqa", "pool", 64, status="oom"),
        cell("mme", "pool", 64, status=failed_status("CUDA error: device-side assert")),
        cell("pope", "pool", 64, pope(0.70)),
    ]
    records = [
        controlled("none", 576, 200.0, path="eager"),  # compiled is preferred when both exist
        controlled("none", 576, 100.0),
        controlled("vistog", 192, 80.0),
        controlled("vistog", 64, 50.0),
        controlled("pool", 64, 40.0),
    ]
    return make_run(tmp_path / "results", "run-a", cells, records)


def render(run_dirs, reference=()) -> tuple:
    report = build_report(run_dirs, list(reference))
    return report, to_markdown(report.tables[0])


def md_header(markdown: str) -> list[str]:
    line = next(line for line in markdown.splitlines() if line.startswith("| Method"))
    return [c.strip() for c in line.strip().strip("|").split("|")]


def column(markdown: str, label: str, header_start: str) -> str:
    header = md_header(markdown)
    index = next(i for i, h in enumerate(header) if h.startswith(header_start))
    return md_row(markdown, label)[index]


# ---------------------------------------------------------------------------------------------------------------
# headline metrics
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spelling", ["mme_percetion_score", "mme_perception_score"])
def test_mme_headline_sums_perception_and_cognition(spelling):
    headline, value = headline_score("mme", mme(1234.5, 321.5, spelling))
    assert value == pytest.approx(1556.0)
    assert headline.unit == "P+C"


def test_headlines_by_task_and_fallback():
    assert headline_score("pope_pop", pope(0.8))[1] == pytest.approx(80.0)
    assert headline_score("textvqa_val", {"exact_match,none": 0.5, "submission,none": None})[1] == pytest.approx(50.0)
    assert headline_score("coco2017_cap_val", {"coco_Bleu_4,none": 0.3, "coco_CIDEr,none": 1.1})[1] == pytest.approx(
        110.0
    )
    head, value = headline_score("shapes_colour", {"submission,none": None, "acc_norm": 0.25, "acc": 0.5})
    assert (head.metric, value) == ("acc_norm", 0.25)  # unknown task: first numeric metric, as is
    assert headline_score("anything", {"submission,none": "N/A"}) is None


# ---------------------------------------------------------------------------------------------------------------
# the main table
# ---------------------------------------------------------------------------------------------------------------
def test_main_table_numbers(main_run):
    _, md = render([main_run])
    # MME summed, shown in its own unit
    assert column(md, "none@576", "mme") == "**1850.0**"
    assert column(md, "vistog@192", "mme") == "1700.0"
    # retention: (57/60 + 1700/1850 + 86/86) / 3 = 95.63 %
    assert column(md, "vistog@192", "Avg. retention") == "95.6"
    assert column(md, "vistog@64", "Avg. retention") == "89.8"  # (90 + 86.49 + 93.02) / 3
    assert column(md, "none@576", "Avg. retention") == "**100.0**"
    # speedup against the compiled full-budget record (100 ms), not the eager one (200 ms)
    assert column(md, "vistog@192", "Speedup") == "1.25"
    assert column(md, "vistog@64", "Speedup") == "2.00"
    assert column(md, "pool@64", "Speedup") == "**2.50**"
    assert column(md, "none@576", "E2E") == "100.0"
    # TTFT = vision + grouping + projector + prefill = 5 + 1 + 0.5 + 24
    assert column(md, "vistog@192", "TTFT") == "30.5"
    # KV cache MiB: (192 + 56) tokens x 0.5 MiB
    assert column(md, "vistog@192", "KV cache") == "124.0"


def test_best_marked_per_column(main_run):
    _, md = render([main_run])
    assert column(md, "none@576", "gqa") == "**60.0**"
    assert column(md, "vistog@192", "pope") == "**86.0**" and column(md, "none@576", "pope") == "**86.0**"  # tie
    assert column(md, "pool@64", "E2E") == "**40.0**"
    assert column(md, "none@576", "Tokens") == "576"  # no direction, never bold
    latex = to_latex(build_report([main_run], []).tables[0])
    assert r"\textbf{2.50}" in latex and r"\textbf{1850.0}" in latex


def test_failed_and_oom_cells_and_partial_retention(main_run):
    _, md = render([main_run])
    assert column(md, "pool@64", "gqa") == "OOM"
    failed = column(md, "pool@64", "mme")
    assert failed.startswith("failed<sup>")
    assert "CUDA error: device-side assert" in md
    # only POPE has a score: 70 / 86 = 81.4 %, marked as averaged over 1 of 3
    assert column(md, "pool@64", "Avg. retention").startswith("81.4<sup>")
    assert "1 of 3" in md


def test_no_full_budget_score_gives_na(tmp_path):
    run = make_run(tmp_path, "run-c", [cell("gqa", "none", 576, status="oom"), cell("gqa", "vistog", 64, gqa(0.5))])
    _, md = render([run])
    assert column(md, "vistog@64", "Avg. retention").startswith("n/a")
    assert "retention n/a" in md


def test_run_without_none_uses_largest_budget(tmp_path):
    run = make_run(tmp_path, "run-d", [cell("gqa", "vistog", 576, gqa(0.6)), cell("gqa", "vistog", 64, gqa(0.3))])
    _, md = render([run])
    assert column(md, "vistog@64", "Avg. retention") == "50.0"
    assert "no `none` cells" in md


def test_accuracy_only_row_is_not_a_mixed_setup(main_run):
    RunDir(main_run).record_cell(cell("gqa", "random", 64, gqa(0.3)))  # no profile record for random@64
    _, md = render([main_run])
    assert "Setup" not in md_header(md) and "MIXED" not in md
    assert column(md, "random@64", "gqa") == "30.0" and column(md, "random@64", "E2E") == "–"


def test_mixed_devices_flagged_per_row(main_run, tmp_path):
    other = make_run(
        tmp_path / "results",
        "run-b",
        records=[
            controlled("none", 576, 300.0, device="NVIDIA A100-SXM4-80GB", path="eager"),
            controlled("vistog", 64, 290.0, device="NVIDIA A100-SXM4-80GB", path="eager"),
        ],
        device="NVIDIA A100-SXM4-80GB",
    )
    _, md = render([main_run, other])
    header = md_header(md)
    assert header[-1] == "Setup"
    assert "MIXED" in md
    # the same method@budget measured by two runs: one row each, never merged, speedup within each run
    assert column(md, "vistog@64 [run-a]", "Speedup") == "2.00"
    assert column(md, "vistog@64 [run-b]", "Speedup") == "1.03"
    assert "A100" in md_row(md, "vistog@64 [run-b]")[-1]
    assert "H100" in md_row(md, "vistog@64 [run-a]")[-1]


def request(method, budget, total_ms, *, batch_size=2) -> ProfileRecord:
    """A served request as the adapter's profiler records it: device `cuda:0`, the manifest names the GPU."""
    return ProfileRecord(
        kind="request",
        method=method,
        budget=budget,
        batch_size=batch_size,
        device="cuda:0",
        dtype="float16",
        path="eager",
        task="gqa",
        visual_tokens=budget,
        output_tokens=3,
        vision_ms=2.0,
        prefill_ms=10.0,
        decode_ms=total_ms - 12.0,
        total_ms=total_ms,
        flops={"prefill": 1e12},
        energy_j=4.0,
        ttft_ms=total_ms / 10,
    )


def test_request_medians_when_no_controlled_record(tmp_path):
    records = [request("none", 576, t) for t in (100.0, 120.0, 110.0)]
    records += [request("pool", 64, t) for t in (50.0, 60.0, 55.0, 1000.0)]
    run = make_run(tmp_path, "run-r", [cell("gqa", "none", 576, gqa(0.6)), cell("gqa", "pool", 64, gqa(0.5))], records)
    _, md = render([run])
    assert column(md, "none@576", "E2E") == "110.0"  # median of 100, 110, 120
    assert column(md, "pool@64", "E2E") == "**57.5**"  # median of 50, 55, 60, 1000
    # 110 / 57.5, marked: the 1000 ms request puts pool@64's CV far above the threshold
    assert column(md, "pool@64", "Speedup").startswith("**1.91**<sup>")
    assert "speedup of pool@64 uncertain: CV" in md and column(md, "pool@64", "Timed") == "4 requests"
    assert column(md, "pool@64", "J / sample") == "**2.00**"  # 4 J for a batch of 2 (a tie with none@576)
    assert "medians over served requests" in md
    # the profiler measured TTFT on every row, so the column uses it (median of 10, 11, 12), and says so
    assert column(md, "none@576", "TTFT") == "11.0" and "measured time to first token" in md
    assert "output tokens median 1.5" in md  # records count tokens over the batch of 2: 3 tokens -> 1.5 per sample
    assert "device NVIDIA H100 80GB HBM3" in md and "cuda:0" not in md  # the manifest names the GPU


def test_analytic_records_left_out_with_a_note(main_run):
    analytic = ProfileRecord(
        kind="analytic",
        method="none",
        budget=576,
        batch_size=1,
        device="cpu",
        dtype="bfloat16",
        flops={"prefill": 8e12},
    )
    RunDir(main_run).append_profile([analytic])
    report, md = render([main_run])
    assert column(md, "none@576", "Prefill TFLOPs") == "2.00"  # from the controlled record, not the analytic one
    assert "1 profile record(s) of kind analytic left out" in md
    assert to_markdown(report.tables[1]).count("none@576") == 2  # stage table: eager + compiled only


def test_stage_and_task_tables(main_run):
    report = build_report([main_run], [])
    by_name = {t.name: t for t in report.tables}
    assert {"main", "stages", "task_gqa", "task_mme", "task_pope"} <= set(by_name)
    gqa_md = to_markdown(by_name["task_gqa"])
    assert "0.6000 ± 0.0049" in gqa_md
    stages_md = to_markdown(by_name["stages"])
    assert "controlled" in stages_md and "95.00–105.00" in stages_md
    assert stages_md.count("none@576") == 2  # the eager and the compiled measurement both shown


def test_reference_block_kept_apart(main_run):
    report, md = render([main_run], [REFERENCE_CSV])
    reported = to_markdown(report.tables[1])
    assert report.tables[1].name == "reported"
    assert "VisionZip (arXiv 2412.04467) Table 1" in reported
    assert "1862" in reported and "1862" not in md  # never mixed into the measured table
    # same-source retention: FastV@192 from VisionZip's table against LLaVA-1.5-7B@576 from the same table
    row = md_row(reported, "FastV")
    assert float(row[-1]) == pytest.approx(87.8, abs=0.05)  # mean of 7 ratios, by hand
    assert md_row(reported, "DART")[-1] == "n/a"  # DART's table gives no 576 row here


def test_every_table_carries_provenance(main_run):
    report = build_report([main_run], [REFERENCE_CSV])
    for table in report.tables:
        text = to_markdown(table)
        assert "Runs:" in text or "Reported in papers" in text, table.name
    main_md = to_markdown(report.tables[0])
    for needle in ("run-a", "NVIDIA H100", "bfloat16", "compiled", "batch size 1", "16 (forced)"):
        assert needle in main_md


# ---------------------------------------------------------------------------------------------------------------
# LaTeX, CSV, figures, HTML
# ---------------------------------------------------------------------------------------------------------------
def _assert_balanced_tabular(tex: str) -> None:
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") >= 1
    assert tex.count(r"\begin{table}") == tex.count(r"\end{table}")
    unescaped = re.sub(r"\\[{}]", "", tex)
    assert unescaped.count("{") == unescaped.count("}")
    for block in re.findall(r"\\begin\{tabular\}\{([lrc]+)\}(.*?)\\end\{tabular\}", tex, flags=re.DOTALL):
        spec, body = block
        assert r"\toprule" in body and r"\bottomrule" in body
        rows = [line for line in body.splitlines() if line.rstrip().endswith(r"\\")]
        assert rows
        for line in rows:
            assert len(re.findall(r"(?<!\\)&", line)) == len(spec) - 1, line


def test_latex_is_balanced_booktabs(main_run, tmp_path):
    report = build_report([main_run], [REFERENCE_CSV])
    for table in report.tables:
        _assert_balanced_tabular(to_latex(table))
    written = write_report(report, tmp_path / "out", formats=("tex",))
    document = (tmp_path / "out" / "report.tex").read_text()
    _assert_balanced_tabular(document)
    assert all(p.suffix in (".tex", ".png", ".svg") for p in written)


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no TeX installed")
def test_latex_compiles(main_run, tmp_path):
    report = build_report([main_run], [REFERENCE_CSV])
    body = "\n".join(to_latex(t) for t in report.tables)
    doc = tmp_path / "doc.tex"
    doc.write_text(
        "\\documentclass{article}\n\\usepackage[T1]{fontenc}\n\\usepackage[utf8]{inputenc}\n"
        "\\usepackage{booktabs}\n\\usepackage[margin=1cm,landscape]{geometry}\n"
        f"\\begin{{document}}\n{body}\n\\end{{document}}\n"
    )
    result = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:]


def test_write_report_all_formats(main_run, tmp_path):
    out = tmp_path / "reports" / "a"
    report = build_report([main_run], [REFERENCE_CSV])
    write_report(report, out)
    for name in FIGURE_NAMES:
        png, svg = out / "figures" / f"{name}.png", out / "figures" / f"{name}.svg"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000, name
        assert "<svg" in svg.read_text()[:2000] and svg.stat().st_size > 5000, name
    frame = pd.read_csv(out / "tables" / "main.csv")
    speedups = dict(zip(frame["Method"], frame["Speedup (×)"], strict=True))
    assert speedups["pool@64"] == pytest.approx(2.5)
    assert set(frame["device"]) == {"NVIDIA H100 80GB HBM3"} and set(frame["path"]) == {"compiled"}
    assert frame.loc[frame["Method"] == "pool@64", "gqa (%)"].item() == "OOM"
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(FIGURE_NAMES)
    assert "<link" not in page and 'src="http' not in page and "<script" not in page
    assert "<strong>2.50</strong>" in page
    document = (out / "report.md").read_text()
    assert "figures/retention_vs_speedup.png" in document and "Latency by stage" in document


def test_figures_without_profile_data_still_written(tmp_path):
    run = make_run(tmp_path, "run-e", [cell("gqa", "none", 576, gqa(0.6)), cell("gqa", "pool", 64, gqa(0.5))])
    report = build_report([run], [])
    md = to_markdown(report.tables[0])
    assert "E2E" not in md_header(md) and "No profile data" in md
    written = write_report(report, tmp_path / "out", formats=("md",))
    figures = [p for p in written if p.parent.name == "figures"]
    assert len(figures) == 2 * len(FIGURE_NAMES) and all(p.stat().st_size > 1000 for p in figures)


def test_pareto_frontier():
    points = [(1.0, 100.0), (1.5, 97.0), (1.4, 95.0), (2.0, 90.0), (1.9, 91.0), (2.0, 85.0)]
    assert pareto_frontier(points) == [(1.0, 100.0), (1.5, 97.0), (1.9, 91.0), (2.0, 90.0)]


# ---------------------------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture
def report_cli(monkeypatch):
    """`vistog_bench.cli.main` with only the `report` subcommand registered, so these tests do not import (or wait
    on) the other subcommands' modules."""
    monkeypatch.setattr(cli, "COMMANDS", {"report": cli.COMMANDS["report"]})
    return cli.main


def test_cli_writes_report_default_out(main_run, report_cli, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert report_cli(["report", str(main_run), "--formats", "md,csv"]) == 0
    out = tmp_path / "reports" / "run-a"
    assert (out / "report.md").is_file() and (out / "tables" / "main.csv").is_file()
    assert not (out / "report.html").exists()
    assert "wrote" in capsys.readouterr().out
    assert report_cli(["report", str(main_run), "--output", "elsewhere", "--formats", "html", "--no-reference"]) == 0
    assert (tmp_path / "elsewhere" / "report.html").is_file()


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_cli_missing_manifest_exit_2(tmp_path, report_cli, capsys):
    folder = tmp_path / "not-a-run"
    folder.mkdir()
    assert report_cli(["report", str(folder), "--out", str(tmp_path / "o")]) == 2
    assert "manifest.json" in _one_error_line(capsys)


def test_cli_malformed_metrics_exit_2(main_run, report_cli, tmp_path, capsys):
    (main_run / "metrics.json").write_text('[{"task": "gqa",')
    assert report_cli(["report", str(main_run), "--out", str(tmp_path / "o")]) == 2
    assert "metrics.json" in _one_error_line(capsys)


def test_cli_wrongly_typed_record_exit_2(main_run, report_cli, tmp_path, capsys):
    cells = json.loads((main_run / "metrics.json").read_text())
    cells[0]["budget"] = "lots"
    (main_run / "metrics.json").write_text(json.dumps(cells))
    assert report_cli(["report", str(main_run), "--out", str(tmp_path / "o")]) == 2
    assert "metrics.json" in _one_error_line(capsys)


def test_cli_malformed_profile_line_exit_2(main_run, report_cli, tmp_path, capsys):
    lines = (main_run / "profile.jsonl").read_text().splitlines()
    lines.insert(1, "{not json")
    (main_run / "profile.jsonl").write_text("\n".join(lines) + "\n")
    assert report_cli(["report", str(main_run), "--out", str(tmp_path / "o")]) == 2
    assert "profile.jsonl" in _one_error_line(capsys)


def test_cli_bad_reference_and_formats_exit_2(main_run, report_cli, tmp_path, capsys):
    assert report_cli(["report", str(main_run), "--reference", str(tmp_path / "none.csv")]) == 2
    assert "none.csv" in _one_error_line(capsys)
    bad = tmp_path / "bad.csv"
    bad.write_text("method,gqa\nFastV,50\n")
    assert report_cli(["report", str(main_run), "--reference", str(bad)]) == 2
    assert "bad.csv" in _one_error_line(capsys)
    assert report_cli(["report", str(main_run), "--formats", "md,docx"]) == 2
    assert "docx" in _one_error_line(capsys)
