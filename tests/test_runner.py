"""`vistog-bench run` on tiny random checkpoints and the synthetic shapes tasks: run folder contents, cell-level
failures (failed task, out-of-memory), resume, and one-line errors for bad input."""

import json
import textwrap

import pandas as pd
import pytest
from testers import save_tiny_checkpoints

from vistog_bench.cli import main as cli_main
from vistog_bench.results import RunDir
from vistog_bench.run.config import RunConfig
from vistog_bench.run.sweep import run_sweep


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return save_tiny_checkpoints(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def sweep(checkpoints, tmp_path_factory):
    config = RunConfig(
        models=checkpoints,
        tasks=("shapes_vqa",),
        methods=("vistog",),
        budgets=(16,),
        limit=3,
        output=str(tmp_path_factory.mktemp("results")),
    )
    run, cells = run_sweep(config, command=["test"])
    return config, run, cells


def test_sweep_writes_manifest_metrics_samples_and_profile(sweep):
    _, run, cells = sweep
    assert sorted((c.method, c.budget, c.status) for c in cells) == [("none", 576, "ok"), ("vistog", 16, "ok")]
    for cell in cells:
        assert "exact_match,none" in cell.metrics and cell.n_samples == 3
        assert set(cell.stderr) <= set(cell.metrics)
        lines = run.samples_path(cell.key).read_text().splitlines()
        assert len(lines) == 3 and "filtered_resps" in json.loads(lines[0])
    manifest = run.manifest()
    assert manifest.finished_at and manifest.versions["lmms_eval"] and manifest.config["limit"] == 3
    records = run.profile()
    assert {(r.method, r.budget) for r in records} == {("none", 576), ("vistog", 16)}
    assert all(r.task == "shapes_vqa" and r.kind == "request" and r.total_ms > 0 for r in records)
    assert {r.visual_tokens for r in records if r.method == "vistog"} == {16}


def test_resume_redoes_only_unfinished_cells(sweep):
    config, run, cells = sweep
    kept = next(c for c in cells if c.method == "none")
    metrics_file = run.path / "metrics.json"
    metrics_file.write_text(json.dumps([json.loads(json.dumps(c.__dict__)) for c in cells if c.method == "none"]))
    resumed, after = run_sweep(RunConfig(**{**config.__dict__, "resume": str(run.path)}))
    assert resumed.path == run.path
    assert {(c.method, c.status) for c in after} == {("none", "ok"), ("vistog", "ok")}
    assert next(c for c in after if c.method == "none") == kept  # finished cell untouched


def test_resume_with_another_configuration_is_refused(sweep, capsys):
    config, run, _ = sweep
    code = cli_main(
        ["run", "--model", *config.models, "--tasks", "shapes_caption", "--budgets", "16", "--resume", str(run.path)]
    )
    assert code == 2
    assert "different configuration" in capsys.readouterr().err


def _user_tasks(folder, data_file):
    (folder / "utils.py").write_text(
        textwrap.dedent("""
        import torch

        def broken_visual(doc):
            raise KeyError("image column 'img' not in this split")

        def oom_visual(doc):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

        def doc_to_text(doc):
            return doc["question"]
    """)
    )
    for name, visual in (("user_broken", "broken_visual"), ("user_oom", "oom_visual")):
        (folder / f"{name}.yaml").write_text(
            textwrap.dedent(f"""
            task: {name}
            dataset_path: parquet
            dataset_kwargs:
              data_files:
                test: {data_file}
            test_split: test
            output_type: generate_until
            doc_to_visual: !function utils.{visual}
            doc_to_text: !function utils.doc_to_text
            doc_to_target: answer
            generation_kwargs:
              max_new_tokens: 2
            metric_list:
              - metric: exact_match
                aggregation: mean
                higher_is_better: true
        """)
        )


def test_failed_and_oom_tasks_are_recorded_and_the_sweep_goes_on(checkpoints, tmp_path):
    data_file = tmp_path / "toy.parquet"
    pd.DataFrame({"question": ["what colour ?"] * 2, "answer": ["red"] * 2}).to_parquet(data_file)
    tasks_dir = tmp_path / "user_tasks"
    tasks_dir.mkdir()
    _user_tasks(tasks_dir, data_file)
    config = RunConfig(
        models=checkpoints[:1],
        tasks=("user_broken", "user_oom", "shapes_vqa"),
        methods=("none",),
        budgets=(576,),
        limit=2,
        output=str(tmp_path / "results"),
        include_paths=(str(tasks_dir),),
        profile=False,
    )
    run, cells = run_sweep(config)
    status = {c.task: c.status for c in cells}
    # every sample's visual fails alone: no sample is scored, so the cell is failed with the first reason
    assert status["user_broken"].startswith("failed: no sample was scored: all 2 failed, the first: KeyError")
    assert "'img'" in status["user_broken"]
    assert status["user_oom"] == "oom"
    assert status["shapes_vqa"] == "ok"
    assert len(RunDir(run.path).cells()) == 3


@pytest.mark.parametrize(
    "arguments,message",
    [
        (["--tasks", "shapes_vqq"], "unknown task 'shapes_vqq' (did you mean shapes_vqa"),
        (["--tasks", "shapes_vqa", "--budgets", "0"], "budget 0 is out of range: 1..576"),
        (["--tasks", "shapes_vqa", "--budgets", "577"], "budget 577 is out of range"),
        (["--tasks", "shapes_vqa", "--budgets", "64"], "no VisToG checkpoint for budget 64"),
        (["--tasks", "shapes_vqa", "--method", "tomee"], "unknown method 'tomee' (did you mean 'tome'?)"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(checkpoints, tmp_path, capsys, arguments, message):
    code = cli_main(["run", "--model", *checkpoints, "--output", str(tmp_path), *arguments])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1


def test_missing_or_foreign_model_folder(tmp_path, capsys):
    assert cli_main(["run", "--model", str(tmp_path / "nope"), "--tasks", "shapes_vqa"]) == 2
    assert "checkpoint folder not found" in capsys.readouterr().err
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    assert cli_main(["run", "--model", str(tmp_path), "--tasks", "shapes_vqa"]) == 2
    assert "holds a 'bert' model" in capsys.readouterr().err


@pytest.mark.parametrize(
    "arguments,message",
    [
        (["--tasks", "shapes_ocr"], "unknown demo task 'shapes_ocr'; available: shapes, shapes_vqa"),
        (["--budgets", "64,7"], "no tiny VisToG model for budget 7; available budgets: 64, 16, 4"),
        (["--model", "/some/checkpoint"], "--tasks is needed with --model"),
    ],
)
def test_embedded_default_bad_input_is_one_line_and_exit_2(tmp_path, capsys, arguments, message):
    code = cli_main(["run", "--output", str(tmp_path), *arguments])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not any(tmp_path.iterdir())  # refused before a run folder exists


def test_embedded_default_narrowed_by_tasks_budgets_and_methods():
    from vistog_bench import demo
    from vistog_bench.run.config import embedded_default
    from vistog_bench.run.sweep import plan_cells

    models, tasks, budgets, methods = embedded_default(("shapes_vqa",), (64, 16), ("vistog", "pool"))
    assert tasks == ("shapes_vqa",) and methods == ("vistog", "pool")
    assert models == [demo.checkpoint_for_budget(None), demo.checkpoint_for_budget(16)]
    config = RunConfig(models=tuple(map(str, models)), tasks=tasks, methods=methods, budgets=budgets)
    planned = [(c.method, c.budget) for c in plan_cells(config)]
    assert planned == [("none", 64), ("vistog", 16), ("pool", 16)]
    # a training-free method at a budget no VisToG model was trained for needs only the tiny LLaVA
    models, *_ = embedded_default(("shapes",), (8,), ("pool",))
    assert models == [demo.checkpoint_for_budget(None)]
    assert embedded_default()[1:] == (demo.DEMO_TASKS, (demo.FULL_BUDGET, *demo.available_budgets()), ("vistog",))


def test_cells_record_the_budget_convention_and_attention_kernels_and_the_report_says_them(tmp_path):
    """An in-LLM method counts its budget as the layer mean and computes float32 scores from q / k beside SDPA: its
    cell says so (CellResult.budget_convention, mean_layer_tokens, attention), a pool cell says the LLM input and
    plain SDPA, and the report names the convention and that the kernels' records differ."""
    from vistog_bench import demo
    from vistog_bench.report import build_report, to_markdown

    config = RunConfig(
        models=(str(demo.checkpoint_for_budget(None)),),
        tasks=("shapes_vqa",),
        methods=("dart", "pool"),
        budgets=(48,),
        limit=2,
        output=str(tmp_path / "results"),
    )
    run, cells = run_sweep(config, command=["test"])
    by_method = {c.method: c for c in cells}
    dart, pool = by_method["dart"], by_method["pool"]
    assert dart.ok and pool.ok
    assert (dart.budget_convention, pool.budget_convention) == ("layer_mean", "llm_input")
    assert dart.llm_input_tokens > 48 and dart.mean_layer_tokens == pytest.approx(48, abs=0.5)
    assert pool.llm_input_tokens == 48 and pool.mean_layer_tokens == 48
    assert pool.attention == "llm sdpa; vision sdpa"
    assert dart.attention.startswith("llm sdpa; vision sdpa; float32 scores from q / k of LLM layers ")
    assert by_method["none"].attention == pool.attention
    text = to_markdown(build_report([run.path], []).tables[0])
    assert "dart@48: the budget is the mean visual tokens per image over the LLM's layers" in text
    assert "Attention kernels differ between rows" in text and "pool@48" in text


def test_method_options_reach_their_cell_its_record_and_the_report_label(tmp_path, capsys):
    """`--method 'tome,tome[order=spatial]'` plans two tome cells; each records its label as its method, and the
    report's rows are named by it. A wrong option is refused in one line before a run folder exists."""
    from vistog_bench.report import build_report, to_markdown

    output = tmp_path / "results"
    common = ["run", "--tasks", "shapes_vqa", "--budgets", "48", "--limit", "2", "--no-profile"]
    common += ["--output", str(output)]
    assert cli_main([*common, "--method", "tome[order=sorted]"]) == 2
    err = capsys.readouterr().err.strip()
    assert "tome order must be one of reference, spatial, got 'sorted'" in err and len(err.splitlines()) == 1
    assert not output.exists()
    assert cli_main([*common, "--method", "tome,tome[order=spatial]"]) == 0
    (run_path,) = output.iterdir()
    cells = {c.method: c for c in RunDir(run_path).cells()}
    assert set(cells) == {"none", "tome", "tome[order=spatial]"}
    assert all(c.ok for c in cells.values())
    text = to_markdown(build_report([run_path], []).tables[0])
    assert "tome[order=spatial]@48" in text and "tome@48" in text
