"""`vistog-bench check` catches a real regression in a real run of the embedded tiny VisToG model: turning isolated
attention off changes the patch features the model was trained on and costs accuracy; an unchanged rerun passes."""

import json
import shutil

import pytest

from vistog_bench import demo
from vistog_bench.regress import build_baseline, check_run, parse_baseline
from vistog_bench.run.config import RunConfig
from vistog_bench.run.sweep import run_sweep

LIMIT = 60


def sweep(models, output):
    config = RunConfig(
        models=tuple(str(m) for m in models),
        tasks=("shapes_vqa",),
        methods=("vistog",),
        budgets=(demo.available_budgets()[0],),
        limit=LIMIT,
        output=str(output),
        profile=False,
    )
    run, cells = run_sweep(config, command=["test"])
    assert all(c.ok for c in cells), [c.status for c in cells]
    return run


@pytest.fixture(scope="module")
def models():
    budget = demo.available_budgets()[0]
    return [demo.checkpoint_for_budget(None), demo.checkpoint_for_budget(budget)]


@pytest.fixture(scope="module")
def baseline(models, tmp_path_factory):
    run = sweep(models, tmp_path_factory.mktemp("baseline-run"))
    return parse_baseline(build_baseline(run.path, "tiny"), "tiny")


def test_unchanged_rerun_passes(models, baseline, tmp_path):
    report = check_run(sweep(models, tmp_path).path, baseline)
    assert report.exit_code == 0, report.to_table()


def test_isolated_attention_off_is_caught(models, baseline, tmp_path):
    broken = tmp_path / "vistog-leaky"
    shutil.copytree(models[1], broken)
    config = json.loads((broken / "config.json").read_text())
    config["isolated_attention"] = False
    (broken / "config.json").write_text(json.dumps(config))
    report = check_run(sweep([models[0], broken], tmp_path / "results").path, baseline)
    assert report.exit_code == 1
    failed = {(f.cell.method, f.key) for f in report.failures}
    # the leak moves the patch features the grouping was trained on: per-type accuracy drops beyond tolerance
    # (measured on these 60 questions: colour 69 -> 62 %), while the stock reference is untouched
    assert any(method == "vistog" and key.startswith("accuracy/") for method, key in failed), report.to_table()
    assert not any(method == "none" for method, _ in failed)
