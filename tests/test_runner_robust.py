"""`vistog-bench run` when parts of a sweep go wrong, on tiny random checkpoints and real lmms-eval evaluations:
a corrupt image row or video file costs only its sample, impossible method/checkpoint combinations are refused before
anything runs, a corrupt checkpoint costs only its cells, groups expand into their members, MME limits come in pairs,
library output goes to the run log, resume keeps its settings, and the chat template is recorded."""

import io
import json
import shutil
import textwrap

import datasets
import pytest
from PIL import Image
from testers import save_tiny_checkpoints

from vistog_bench.cli import main as cli_main
from vistog_bench.results import RunDir
from vistog_bench.run.config import RunConfig
from vistog_bench.run.sweep import run_sweep


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return save_tiny_checkpoints(tmp_path_factory.mktemp("ckpt"))


def _png(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 24), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _image_task(folder, data_file) -> None:
    """A task over a parquet file with a `datasets` Image column; `scored` counts the samples lmms-eval scored."""
    (folder / "utils.py").write_text(
        textwrap.dedent("""
        def doc_to_visual(doc):
            return [doc["image"]]

        def doc_to_text(doc):
            return doc["question"]

        def process_results(doc, results):
            return {"scored": 1, "exact_match": float(results[0].strip() == doc["answer"])}

        def count(items):
            return len(items)
    """)
    )
    (folder / "user_images.yaml").write_text(
        textwrap.dedent(f"""
        task: user_images
        dataset_path: parquet
        dataset_kwargs:
          data_files:
            test: {data_file}
        test_split: test
        output_type: generate_until
        doc_to_visual: !function utils.doc_to_visual
        doc_to_text: !function utils.doc_to_text
        doc_to_target: answer
        generation_kwargs:
          max_new_tokens: 2
        process_results: !function utils.process_results
        metric_list:
          - metric: scored
            aggregation: !function utils.count
            higher_is_better: true
          - metric: exact_match
            aggregation: mean
            higher_is_better: true
    """)
    )


def image_task(root, images: list[bytes], answers: list[str]):
    """`user_images` (`_image_task`) over `root`/images.parquet, a `datasets` Image column of `images` (encoded
    bytes) asked "what colour ?" with `answers`; returns its include-path folder."""
    data_file = root / "images.parquet"
    rows = {
        "image": [{"bytes": image, "path": None} for image in images],
        "question": ["what colour ?"] * len(images),
        "answer": answers,
    }
    features = datasets.Features(
        {"image": datasets.Image(), "question": datasets.Value("string"), "answer": datasets.Value("string")}
    )
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(data_file))
    tasks_dir = root / "tasks"
    tasks_dir.mkdir()
    _image_task(tasks_dir, data_file)
    return tasks_dir


def test_an_undecodable_image_row_costs_only_its_sample(checkpoints, tmp_path):
    images = [_png("red"), b"not an image at all", _png("blue")]
    tasks_dir = image_task(tmp_path, images, ["red", "green", "blue"])
    template = tmp_path / "plain.jinja"
    template.write_text(
        "{% for m in messages %}QQ {{ m['content'] }}{% endfor %}{% if add_generation_prompt %} AA:{% endif %}"
    )
    config = RunConfig(
        models=checkpoints[:1],
        tasks=("user_images",),
        methods=("none",),
        budgets=(576,),
        output=str(tmp_path / "out"),
        include_paths=(str(tasks_dir),),
        chat_template=str(template),
    )
    run, cells = run_sweep(config)
    (cell,) = cells
    assert cell.status == "ok" and (cell.n_samples, cell.n_failed) == (2, 1)
    assert cell.metrics["scored,none"] == 2  # the broken row was left out of the scoring, not scored as wrong
    lines = [json.loads(line) for line in run.samples_path(cell.key).read_text().splitlines()]
    by_doc = {line["doc_id"]: line for line in lines}
    assert sorted(by_doc) == [0, 1, 2]
    assert "failure" in by_doc[1] and "failure" not in by_doc[0] and "filtered_resps" not in by_doc[1]
    for doc_id in (0, 2):
        assert by_doc[doc_id]["prompt"].startswith("QQ") and by_doc[doc_id]["image_placeholders"] == 1
        assert by_doc[doc_id]["tokens_per_placeholder"] == 576
    recorded = run.manifest().prompt_templates[checkpoints[0]]
    assert str(template) in recorded["source"] and recorded["style"] in ("structured", "string")


def test_a_corrupt_video_file_costs_only_its_sample(checkpoints, tmp_path):
    from vistog_bench.testing.fixtures import write_fixture

    root = write_fixture(tmp_path / "mirror", rows=3, only=["videomme"])
    (root / "lmms-lab/Video-MME/data/fixture0001.mp4").write_bytes(b"\x00garbage, not an mp4" * 50)
    config = RunConfig(
        models=checkpoints[:1],
        tasks=("videomme_local",),
        methods=("none",),
        budgets=(576,),
        max_frames=2,
        output=str(tmp_path / "out"),
        data_dir=str(root),
        profile=False,
    )
    run, (cell,) = run_sweep(config)
    assert cell.status == "ok" and (cell.n_samples, cell.n_failed) == (2, 1)
    lines = [json.loads(line) for line in run.samples_path(cell.key).read_text().splitlines()]
    failed = [line for line in lines if "failure" in line]
    assert [line["doc_id"] for line in failed] == [1] and "fixture0001" in failed[0]["failure"]


@pytest.mark.parametrize(
    "arguments,message",
    [
        (["--max-frames", "-2"], "--max-frames must be at least 1, got -2"),
        (["--max-frames", "0"], "--max-frames must be at least 1, got 0"),
        (["--chat-template", "/no/such/template.jinja"], "--chat-template /no/such/template.jinja: no such file"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(checkpoints, tmp_path, capsys, arguments, message):
    code = cli_main(["run", "--model", checkpoints[0], "--tasks", "shapes_vqa", "--output", str(tmp_path), *arguments])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_impossible_combinations_are_refused_before_anything_runs(checkpoints, tmp_path, capsys):
    # the tiny LLM has 2 layers: FastV's default layer 2 is not inside it; tiny vision: feature layer -2 of 3 is fine
    code = cli_main(
        [
            "run",
            "--model",
            checkpoints[0],
            "--tasks",
            "shapes_vqa",
            "--method",
            "fastv,prumerge,pool",
            "--budgets",
            "64,16",
            "--output",
            str(tmp_path),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 2
    assert all(
        "cannot run fastv at budget" in line and "fastv_layer must be in 1..1 for a 2-layer LLM" in line for line in err
    )
    assert not any(tmp_path.iterdir())  # nothing run, no run folder
    # the embedded models: their feature layer is the encoder's last, so prumerge is impossible at every budget
    code = cli_main(
        ["run", "--tasks", "shapes_vqa", "--method", "prumerge", "--budgets", "64,16", "--output", str(tmp_path)]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "prumerge reads the encoder layer after the feature layer" in err[0]
    assert not any(tmp_path.iterdir())
    # a layer-mean budget below what the first pruning layer must keep is refused from the config too
    code = cli_main(["run", "--tasks", "shapes_vqa", "--method", "pdrop", "--budgets", "16", "--output", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "cannot run pdrop at budget 16" in err[0]
    assert not any(tmp_path.iterdir())


def test_a_corrupt_checkpoint_fails_its_cells_and_the_sweep_goes_on(checkpoints, tmp_path, capfd):
    broken = tmp_path / "vistog16-broken"
    shutil.copytree(checkpoints[1], broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    code = cli_main(
        [
            "run",
            "--model",
            checkpoints[0],
            str(broken),
            "--tasks",
            "shapes_vqa,shapes_caption",
            "--method",
            "vistog,pool",
            "--budgets",
            "16",
            "--limit",
            "2",
            "--output",
            str(tmp_path / "out"),
            "--no-profile",
        ]
    )
    out, err = capfd.readouterr()
    assert code == 1
    (run_path,) = (tmp_path / "out").iterdir()
    cells = {(c.task, c.method): c for c in RunDir(run_path).cells()}
    assert len(cells) == 6
    for task in ("shapes_vqa", "shapes_caption"):
        assert cells[(task, "none")].ok and cells[(task, "pool")].ok
        assert cells[(task, "vistog")].status.startswith(f"failed: loading {broken}")
    assert (run_path / "report" / "report.md").is_file()  # the report lies inside the run folder it describes
    assert f"report: {run_path / 'report'}" in out
    # the console: one line per cell, no caption-metric chatter (pycocoevalcap, its Java tokenizer); that is in run.log
    assert sum("shapes_caption" in line and "@16:" in line for line in err.splitlines()) == 2
    log = (run_path / "run.log").read_text()
    assert "testlen" in log and "testlen" not in out + err


def test_a_group_expands_into_member_cells_and_its_aggregate(checkpoints, tmp_path):
    tasks_dir = tmp_path / "groups"
    tasks_dir.mkdir()
    (tasks_dir / "user_shapes.yaml").write_text(
        textwrap.dedent("""
        group: user_shapes
        task:
          - shapes_vqa
          - shapes_video
        aggregate_metric_list:
          - metric: exact_match
            aggregation: mean
            weight_by_size: true
    """)
    )
    config = RunConfig(
        models=checkpoints[:1],
        tasks=("user_shapes",),
        methods=("none",),
        budgets=(576,),
        limit=3,
        output=str(tmp_path / "out"),
        include_paths=(str(tasks_dir),),
    )
    run, cells = run_sweep(config)
    by_task = {c.task: c for c in cells}
    assert sorted(by_task) == ["shapes_video", "shapes_vqa", "user_shapes"]
    members = [by_task["shapes_vqa"], by_task["shapes_video"]]
    assert all(c.ok and c.n_samples == 3 and "exact_match,none" in c.metrics for c in members)
    group = by_task["user_shapes"]
    assert group.ok and group.n_samples == 6
    mean = sum(c.metrics["exact_match,none"] * 3 for c in members) / 6
    assert group.metrics["exact_match,none"] == pytest.approx(mean)
    for cell in members:
        assert len(run.samples_path(cell.key).read_text().splitlines()) == 3
    assert {r.task for r in run.profile()} == {"shapes_vqa", "shapes_video"}


def test_local_image_group_with_an_odd_mme_limit(checkpoints, tmp_path, capsys):
    from vistog_bench.testing.fixtures import write_fixture

    root = write_fixture(tmp_path / "mirror", rows=2)
    config = RunConfig(
        models=checkpoints[:1],
        tasks=("vistog_image_local",),
        methods=("none",),
        budgets=(576,),
        limit=1,
        output=str(tmp_path / "out"),
        data_dir=str(root),
        profile=False,
    )
    _, cells = run_sweep(config)
    err = capsys.readouterr().err
    by_task = {c.task: c for c in cells}
    assert sorted(by_task) == sorted(
        [
            "gqa_local",
            "mmbench_en_dev_static_local",
            "mme_local",
            "pope_local",
            "scienceqa_img_local",
            "vqav2_val_local",
            "textvqa_val_local",
        ]
    )
    assert "vistog_image_local" not in by_task  # the group defines no aggregate of its own
    assert all(c.ok and c.metrics for c in cells), {c.task: c.status for c in cells}
    assert by_task["mme_local"].n_samples == 2 and by_task["gqa_local"].n_samples == 1
    assert sum("mme_local: --limit 1 rounded up to 2" in line for line in err.splitlines()) == 1


@pytest.fixture(scope="module")
def small_run(checkpoints, tmp_path_factory):
    config = RunConfig(
        models=checkpoints[:1],
        tasks=("shapes_vqa",),
        methods=("none",),
        budgets=(576,),
        limit=2,
        output=str(tmp_path_factory.mktemp("resume")),
        profile=False,
    )
    run, _ = run_sweep(config)
    return run


@pytest.mark.parametrize(
    "arguments,message",
    [
        (["--limit", "5"], "--limit 5 (the run used 2)"),
        (["--seed", "3"], "--seed 3 (the run used 0)"),
        (["--batch-size", "4"], "--batch-size 4 (the run used 1)"),
        (["--device", "cuda"], "--device cuda (the run used cpu)"),
    ],
)
def test_resume_with_other_settings_is_refused(small_run, capsys, arguments, message):
    metrics_before = (small_run.path / "metrics.json").read_text()
    code = cli_main(["run", "--resume", str(small_run.path), *arguments])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert (small_run.path / "metrics.json").read_text() == metrics_before


def test_resume_with_the_same_settings_redoes_nothing(small_run, capsys):
    metrics_before = (small_run.path / "metrics.json").read_text()
    assert cli_main(["run", "--resume", str(small_run.path), "--limit", "2", "--seed", "0", "--no-report"]) == 0
    assert (small_run.path / "metrics.json").read_text() == metrics_before


@pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap's tokenizer (caption metrics) needs Java")
def test_each_cell_keeps_its_own_submission_files(checkpoints, tmp_path):
    """lmms-eval names a task's submission files per task (flickr30k_captions_val2014_alg_results_<metric>.json):
    two cells of one task write them to their own folders, and each holds its own cell's captions."""
    from vistog_bench.testing.fixtures import write_fixture

    mirror = write_fixture(tmp_path / "mirror", rows=2, only=["flickr"])
    out = tmp_path / "results"
    args = ["run", "--model", checkpoints[0], "--tasks", "flickr30k_test_local", "--method", "none,pool"]
    args += ["--budgets", "576,64", "--limit", "2", "--data-dir", str(mirror), "--output", str(out), "--no-report"]
    assert cli_main(args) == 0
    (run_dir,) = out.iterdir()
    files = sorted((run_dir / "cells").glob("*/*/submissions/*CIDEr*.json"))  # cells/<plan cell>/<task>/submissions
    cells = [(f.parents[2].name.rsplit("__", 1)[0], f.parents[1].name) for f in files]
    assert cells == [("none__576", "flickr30k_test_local"), ("pool__64", "flickr30k_test_local")]
    for file, (cell, task) in zip(files, cells, strict=True):
        captions = sorted(row["caption"] for row in json.loads(file.read_text()))
        samples = run_dir / "samples" / f"{task}__{cell}.jsonl"
        assert captions == sorted(json.loads(line)["filtered_resps"][0] for line in samples.open()) and captions
    assert not (run_dir / "submissions").exists()
