"""Nothing lost, nothing run that should not be: file names made from task names stay in the run folder and apart, a
truncated PNG or MP4 fails its sample alone (LLaVA-1.5 images, OneVision's and Qwen2.5-VL's native video path), a
broken task YAML or task data file is one line naming the file, every requested (method, budget) either runs or is
refused in one line before anything loads, a report's files are written whole or not at all (a real file-size limit,
exit 3), and a resumed run keeps its --no-report.

Everything goes through the real code paths: the CLI's `main` (in this process, or a subprocess where a signal or an
rlimit must not touch pytest), real lmms-eval evaluations of real task folders, tiny random checkpoints."""

from __future__ import annotations

import io
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from test_results_robust import make_run
from test_runner_robust import image_task
from testers import random_images, save_tiny_checkpoints

from vistog_bench.cli import main as cli_main
from vistog_bench.results import (
    DISK_FULL_EXIT,
    METRICS_FILE,
    SAMPLES_DIR,
    RunDir,
    safe_file_stem,
)
from vistog_bench.run.config import RunConfig
from vistog_bench.run.sweep import run_sweep

REPO = Path(__file__).resolve().parents[1]
TEXT_TASK = """\
task: "{name}"
dataset_path: parquet
dataset_kwargs:
  data_files:
    test: {data_file}
test_split: test
output_type: generate_until
doc_to_text: question
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 2
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return save_tiny_checkpoints(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def family_layouts(tmp_path_factory):
    from vistog_bench.testing.hub_checkpoints_families import write_family_layouts

    return write_family_layouts(tmp_path_factory.mktemp("families"))


def text_tasks(folder: Path, names: list[str], data_file: Path) -> Path:
    """An include-path folder with one text-only parquet task per name (the YAML file names are ours, plain)."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        (folder / f"task{index}.yaml").write_text(TEXT_TASK.format(name=name, data_file=data_file))
    return folder


def run_cli(capsys, *argv) -> tuple[int, list[str]]:
    """Exit code and the lines on stderr of `vistog-bench ARGV` (the CLI's own `main`)."""
    capsys.readouterr()
    code = cli_main(list(argv))
    return code, capsys.readouterr().err.strip().splitlines()


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


# ---------------------------------------------------------------------------------------------------------------
# task names in file names
# ---------------------------------------------------------------------------------------------------------------
def test_safe_file_stem_keeps_plain_names_and_spells_the_rest_apart():
    assert safe_file_stem("gqa_local__vistog__64") == "gqa_local__vistog__64"
    escaping = safe_file_stem("../../escaped__none__576")
    assert "/" not in escaping and not escaping.startswith(".")
    # `a/b` and `a_b` would both spell a_b: the hash of the name keeps them apart
    assert safe_file_stem("a/b") != safe_file_stem("a_b") == "a_b"
    assert safe_file_stem("a/b").startswith("a_b-")
    long = safe_file_stem("x" * 400)
    assert len(long) < 255 and long != safe_file_stem("x" * 401)


def test_task_names_with_slashes_and_dot_dot_write_nothing_outside_the_run_folder(
    checkpoints, tmp_path, monkeypatch, capsys
):
    """A real include-path folder whose task names are `../../escaped`, `a/b` and `a_b`: the run, its sample logs
    and its report (the per-task tables are named after tasks too) stay inside the run folder, one file per cell."""
    data_file = tmp_path / "data" / "rows.parquet"
    data_file.parent.mkdir()
    pd.DataFrame({"question": ["q1", "q2"], "answer": ["a", "b"]}).to_parquet(data_file)
    names = ["../../escaped", "a/b", "a_b"]
    tasks = text_tasks(tmp_path / "user_tasks", names, data_file)
    workdir = tmp_path / "deep" / "a" / "b"  # `../../escaped` relative to the samples folder or the cwd lands here
    workdir.mkdir(parents=True)
    monkeypatch.chdir(workdir)
    before = files_under(tmp_path)
    code, err = run_cli(
        capsys,
        "run",
        "--model",
        checkpoints[0],
        "--method",
        "none",
        "--tasks",
        ",".join(names),
        "--include-path",
        str(tasks),
        "--output",
        "out",
        "--limit",
        "1",
        "--no-profile",
    )
    assert code == 0, err[-20:]
    (run_path,) = (workdir / "out").iterdir()
    new = files_under(tmp_path) - before
    outside = [p for p in new if run_path not in p.parents]
    assert outside == []
    cells = RunDir(run_path).cells()
    assert sorted(c.task for c in cells) == sorted(names) and all(c.ok for c in cells)
    samples = sorted((run_path / SAMPLES_DIR).iterdir())
    assert len(samples) == 3 and all(p.is_file() for p in samples)  # three cells, three files, no folders
    for cell in cells:
        path = RunDir(run_path).samples_path(cell.key)
        assert path.parent == run_path / SAMPLES_DIR and path in samples
        assert len(path.read_text().splitlines()) == 1  # --limit 1: this cell's own line
    tables = {p.name for p in (run_path / "report" / "tables").glob("task_*.md")}
    assert len(tables) == 3 and "task_a_b.md" in tables


# ---------------------------------------------------------------------------------------------------------------
# truncated media fail their sample alone
# ---------------------------------------------------------------------------------------------------------------
def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_truncated_png_fails_its_sample_with_the_reason(checkpoints, tmp_path):
    """A PNG cut in half decodes under lmms-eval's LOAD_TRUNCATED_IMAGES = True with its missing rows filled in; the
    adapter decodes it with truncation refused, so the sample fails alone and says why."""
    from PIL import ImageFile

    whole = [_png_bytes(image) for image in random_images(3, size=24)]  # noise: no row compresses to nothing
    whole[1] = whole[1][: len(whole[1]) // 2]  # the file cut short
    tasks_dir = image_task(tmp_path, whole, ["red", "green", "blue"])
    config = RunConfig(
        models=checkpoints[:1],
        tasks=("user_images",),
        methods=("none",),
        budgets=(576,),
        output=str(tmp_path / "out"),
        include_paths=(str(tasks_dir),),
        profile=False,
    )
    run, (cell,) = run_sweep(config)
    assert cell.status == "ok" and (cell.n_samples, cell.n_failed) == (2, 1)
    assert cell.metrics["scored,none"] == 2  # the cut image was not scored as a grey one
    lines = {line["doc_id"]: line for line in map(json.loads, run.samples_path(cell.key).read_text().splitlines())}
    assert "image file is truncated" in lines[1]["failure"]
    assert "failure" not in lines[0] and "failure" not in lines[2]
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # lmms-eval's process-wide setting is left as it was


def _cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_every_cut_of_an_mp4_is_an_error_a_sample_fails_on(tmp_path):
    """decord raises its own DECORDError (no subclass of the errors a sample may fail on) for some cuts of a file and
    a RuntimeError for others: read_video turns each into an error of SAMPLE_ERRORS naming the file."""
    from decord import DECORDError, VideoReader, cpu

    from vistog_bench.adapter import SAMPLE_ERRORS, read_video
    from vistog_bench.testing.fixtures import write_video

    whole = tmp_path / "whole.mp4"
    write_video(whole, 1, frames=8, size=56, fps=4)
    data = whole.read_bytes()
    decord_own = 0
    for tenth in range(1, 10):
        cut = tmp_path / f"cut{tenth}.mp4"
        cut.write_bytes(data[: len(data) * tenth // 10])
        try:
            VideoReader(str(cut), ctx=cpu(0))
        except DECORDError:
            decord_own += 1
        except RuntimeError:
            pass
        with pytest.raises(SAMPLE_ERRORS) as error:
            read_video(str(cut), lambda total: range(total))
        assert str(cut) in str(error.value)
    assert decord_own > 0  # the case the sample guard missed is among the cuts


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llava-onevision", "qwen2.5-vl"])
def test_a_truncated_mp4_fails_only_its_sample_on_the_native_video_path(family_layouts, tmp_path, name):
    """The offline Video-MME fixture with one of its three videos cut in half: on OneVision's and Qwen2.5-VL's own
    video path the cell is scored on the other two and the third's line says which file failed."""
    from decord import DECORDError, VideoReader, cpu

    from vistog_bench.run.sweep import checkpoint_budgets
    from vistog_bench.testing.fixtures import write_fixture

    root = write_fixture(tmp_path / "mirror", rows=3, only=["videomme"])
    broken = root / "lmms-lab/Video-MME/data/fixture0001.mp4"
    _cut_in_half(broken)
    with pytest.raises((DECORDError, RuntimeError)):  # a real undecodable file
        VideoReader(str(broken), ctx=cpu(0))
    models = (str(family_layouts[name]),)
    config = RunConfig(
        models=models,
        tasks=("videomme_local",),
        methods=("none",),
        budgets=checkpoint_budgets(models),  # the family's full budget: the `none` cell
        max_frames=2,
        output=str(tmp_path / "out"),
        data_dir=str(root),
        profile=False,
    )
    run, (cell,) = run_sweep(config)
    assert cell.status == "ok" and (cell.n_samples, cell.n_failed) == (2, 1), cell.status
    lines = [json.loads(line) for line in run.samples_path(cell.key).read_text().splitlines()]
    failed = [line for line in lines if "failure" in line]
    assert [line["doc_id"] for line in failed] == [1] and str(broken) in failed[0]["failure"]
    assert all(line["video_placeholders"] == 1 for line in lines if "failure" not in line)  # the native path


# ---------------------------------------------------------------------------------------------------------------
# broken task folders and task files: one line naming the file
# ---------------------------------------------------------------------------------------------------------------
BROKEN_YAML = """\
task: broken_yaml
dataset_path: parquet
dataset_kwargs:
  data_files: {test: /nowhere.parquet
test_split: test
"""


@pytest.mark.parametrize("command", ["tasks", "run"])
def test_a_yaml_syntax_error_in_an_include_path_is_one_line_naming_file_and_line(
    checkpoints, tmp_path, capsys, command
):
    folder = tmp_path / "user_tasks"
    folder.mkdir()
    (folder / "broken.yaml").write_text(BROKEN_YAML)
    extra = ["--model", checkpoints[0], "--tasks", "shapes_vqa", "--output", str(tmp_path / "out")]
    code, err = run_cli(capsys, command, "--include-path", str(folder), *(extra if command == "run" else []))
    assert code == 2 and len(err) == 1, err[-10:]
    # PyYAML reports the flow mapping opened on line 4 as unclosed where line 5 starts a key
    assert f"{folder / 'broken.yaml'} line 5" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "content,reason",
    [(b"", "is empty (0 bytes)"), (b"question,answer\nq,a\n", "is not a readable parquet file")],
    ids=["empty", "csv-named-parquet"],
)
def test_an_empty_or_non_parquet_task_file_is_one_line_naming_it(checkpoints, tmp_path, capsys, content, reason):
    data_file = tmp_path / "rows.parquet"
    data_file.write_bytes(content)
    tasks = text_tasks(tmp_path / "user_tasks", ["user_rows"], data_file)
    out = tmp_path / "out"
    code, err = run_cli(
        capsys,
        "run",
        "--model",
        checkpoints[0],
        "--tasks",
        "user_rows",
        "--include-path",
        str(tasks),
        "--output",
        str(out),
    )
    assert code == 2 and len(err) == 1, err[-10:]
    assert f"user_rows reads {data_file}, which {reason}" in err[0] and "RetryError" not in err[0]
    assert not out.exists()  # refused before the sweep started


def test_a_task_file_that_fails_to_load_says_why_not_retry_error(checkpoints, tmp_path, monkeypatch):
    """A JSON task file that is not JSON passes the pre-flight (only its size is cheap to see) and fails in lmms-eval's
    retried download: the cell's status names the error behind tenacity's RetryError and its cause."""
    import tenacity
    from lmms_eval.api.task import ConfigurableTask

    monkeypatch.setattr(ConfigurableTask.download.retry, "wait", tenacity.wait_none())  # 5 tries without 2 s waits
    data_file = tmp_path / "rows.json"
    data_file.write_text('{"question": "q", "answer": ')
    folder = tmp_path / "user_tasks"
    folder.mkdir()
    (folder / "rows.yaml").write_text(
        TEXT_TASK.format(name="user_json", data_file=data_file).replace("parquet", "json")
    )
    config = RunConfig(
        models=checkpoints[:1],
        tasks=("user_json",),
        methods=("none",),
        budgets=(576,),
        output=str(tmp_path / "out"),
        include_paths=(str(folder),),
        profile=False,
    )
    _, (cell,) = run_sweep(config)
    assert cell.status.startswith("failed: ") and "RetryError" not in cell.status
    assert "caused by ArrowInvalid: JSON parse error" in cell.status


# ---------------------------------------------------------------------------------------------------------------
# every request runs or is refused
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def odd_checkpoints(checkpoints, family_layouts, tmp_path_factory):
    """Checkpoints planning must refuse: a VisToG config.json without num_semantic_tokens, and LLaVA-NeXT VisToG
    folders whose vistog_family.json has N = 0, N = true, or a boolean spelt as a string (planning reads the files;
    nothing is loaded)."""
    import shutil

    root = tmp_path_factory.mktemp("odd")
    no_n = root / "vistog-no-n"
    shutil.copytree(checkpoints[1], no_n)
    config = json.loads((no_n / "config.json").read_text())
    del config["num_semantic_tokens"]
    (no_n / "config.json").write_text(json.dumps(config))
    found = {"vistog-no-n": no_n}
    for label, settings in {
        "n-zero": {"num_semantic_tokens": 0},
        "n-true": {"num_semantic_tokens": True},
        "string-bool": {"num_semantic_tokens": 16, "isolated_attention": "yes"},
    }.items():
        folder = root / label
        shutil.copytree(family_layouts["llava-next"], folder)
        (folder / "vistog_family.json").write_text(json.dumps(settings))
        found[label] = folder
    return found


REFUSALS = [
    ("vistog-no-n", [], ["vistog-no-n: a VisToG checkpoint (model_type vistog) whose config.json has no"]),
    ("stock", ["--method", "vistog"], ["--method vistog: no VisToG checkpoint among --model"]),
    ("qwen2.5-vl", ["--method", "none,random", "--budgets", "100"], ["--method random: nothing to run"]),
    ("stock", ["--method", "none", "--budgets", "64"], ["--budgets 64: no requested method runs at it"]),
    ("stock", ["--method", "none", "--budgets", "576,64,16"], ["--budgets 64", "--budgets 16"]),
    ("stock", ["--tasks", ""], ["--tasks is empty"]),
    ("stock", ["--method", ""], ["--method is empty"]),
    ("stock", ["--method", " , "], ["--method is empty"]),
    ("stock", ["--budgets", ""], ["--budgets is empty"]),
    ("stock", ["--device", "tpu"], ["--device must be cpu, cuda or cuda:N, got 'tpu'"]),
    ("n-zero", [], ["num_semantic_tokens must be an integer >= 1, got 0"]),
    ("n-true", [], ["num_semantic_tokens must be an integer >= 1, got True"]),
    ("string-bool", [], ["isolated_attention must be true or false, got 'yes'"]),
]


@pytest.mark.parametrize(
    "model,arguments,messages",
    REFUSALS,
    ids=[
        "vistog-without-n",
        "vistog-on-stock",
        "full-budget-only",
        "none-below-full",
        "two-budgets-unplanned",
        "empty-tasks",
        "empty-method",
        "blank-method",
        "empty-budgets",
        "device-tpu",
        "family-n-zero",
        "family-n-true",
        "family-string-bool",
    ],
)
def test_a_request_that_would_not_run_is_refused_in_one_line_before_anything(
    checkpoints, family_layouts, odd_checkpoints, tmp_path, capsys, model, arguments, messages
):
    path = {"stock": checkpoints[0], **{k: str(v) for k, v in {**family_layouts, **odd_checkpoints}.items()}}[model]
    out = tmp_path / "out"
    given = dict(zip(arguments[::2], arguments[1::2], strict=True))
    tasks = [] if "--tasks" in given else ["--tasks", "shapes_vqa"]
    code, err = run_cli(capsys, "run", "--model", path, *tasks, *arguments, "--output", str(out))
    assert code == 2 and len(err) == len(messages), err[-10:]
    assert all(message in line for message, line in zip(messages, err, strict=True)), err
    assert not out.exists()  # nothing was written: refused before any model loaded


def test_a_group_with_no_task_is_refused_not_run_as_nothing(checkpoints, tmp_path, capsys):
    folder = tmp_path / "user_tasks"
    folder.mkdir()
    (folder / "empty_group.yaml").write_text("group: empty_group\ntask: []\n")
    out = tmp_path / "out"
    code, err = run_cli(
        capsys,
        "run",
        "--model",
        checkpoints[0],
        "--tasks",
        "empty_group,shapes_vqa",
        "--include-path",
        str(folder),
        "--output",
        str(out),
    )
    assert code == 2 and len(err) == 1 and "--tasks empty_group: a group with no task in it" in err[0], err
    assert not out.exists()


def test_report_refuses_a_cell_recorded_twice_or_a_negative_count(tmp_path, capsys):
    for label, edit in {
        "twice": lambda cells: cells + [cells[0]],
        "negative": lambda cells: [{**cells[0], "n_samples": -3}, *cells[1:]],
    }.items():
        run = make_run(tmp_path / label)
        metrics = run.path / METRICS_FILE
        metrics.write_text(json.dumps(edit(json.loads(metrics.read_text()))))
        out = tmp_path / label / "report"
        code, err = run_cli(capsys, "report", str(run.path), "--out", str(out), "--no-reference")
        assert code == 2 and len(err) == 1, err
        assert f"malformed result file {metrics}" in err[0]
        assert ("records 0 and 3 are the same cell" if label == "twice" else "n_samples") in err[0]
        assert not out.exists()


def test_resume_keeps_the_runs_no_report(checkpoints, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--model", checkpoints[0], "--tasks", "shapes_vqa", "--method", "none", "--limit", "1", "--no-profile"]
    code, _ = run_cli(capsys, "run", *argv, "--output", str(out), "--no-report")
    (run_path,) = out.iterdir()
    assert code == 0 and not (run_path / "report").exists()
    metrics = json.loads((run_path / METRICS_FILE).read_text())
    metrics[0]["status"] = "failed: interrupted"  # a cell to redo, so the resumption evaluates again
    (run_path / METRICS_FILE).write_text(json.dumps(metrics))
    code, err = run_cli(capsys, "run", "--resume", str(run_path))
    assert code == 0, err[-10:]
    assert RunDir(run_path).cells()[0].ok  # the cell was redone ...
    assert not (run_path / "report").exists()  # ... and the run's --no-report held


# ---------------------------------------------------------------------------------------------------------------
# reports on a full disk
# ---------------------------------------------------------------------------------------------------------------
def _limited_report(run_path: Path, out: Path, limit: int) -> subprocess.CompletedProcess:
    """`vistog-bench report` in a child whose files may not grow past `limit` bytes (RLIMIT_FSIZE: a write past it
    fails with EFBIG, SIGXFSZ ignored), as a disk that fills up while the report is written."""

    def limit_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(
        [sys.executable, "-m", "vistog_bench.cli", "report", str(run_path), "--out", str(out), "--no-reference"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"},
        preexec_fn=limit_files,
        timeout=300,
    )


def test_a_full_disk_while_a_report_is_written_leaves_no_torn_file(tmp_path, capsys):
    run = make_run(tmp_path)
    whole = tmp_path / "whole"
    code, _ = run_cli(capsys, "report", str(run.path), "--out", str(whole), "--no-reference")
    assert code == 0
    sizes = {p.relative_to(whole): p.stat().st_size for p in files_under(whole)}
    pngs = [size for path, size in sizes.items() if path.suffix == ".png"]
    texts = [size for path, size in sizes.items() if path.parent.name == "tables"]
    # a limit every table fits under and no PNG does: the report stops at its first figure
    limit = max(texts) + 1
    assert limit < min(pngs)

    out = tmp_path / "limited"
    result = _limited_report(run.path, out, limit)
    err = result.stderr.strip().splitlines()
    assert result.returncode == DISK_FULL_EXIT, result.stderr[-2000:]
    assert len(err) == 1 and "file size limit reached writing " in err[0], err
    named = Path(err[0].split("writing ")[1].split(";")[0])
    assert named.suffix == ".png" and named.parent == out / "figures"
    assert not named.exists()  # the file being written when the limit hit is not there at all, not torn
    left = files_under(out)
    assert left, "the tables written before the limit hit are kept"
    for path in left:  # every file there is whole: byte for byte the one the unlimited report wrote
        assert not path.name.endswith(".tmp")
        assert path.read_bytes() == (whole / path.relative_to(out)).read_bytes(), path


def test_docs_list_exit_code_3_for_reports_and_checks():
    for page in ("docs/reports.md", "docs/regression.md"):
        text = (REPO / page).read_text()
        assert "exit code 3" in text or "| 3 |" in text or "exits 3" in text, page
