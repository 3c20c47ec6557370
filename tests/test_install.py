"""A non-editable install knows our lmms-eval tasks: the wheel ships the top-level tasks/ folder (YAMLs, templates,
utils.py) as vistog_bench/tasks/, and `vistog-bench tasks` / `vistog-bench run` find them from an empty folder, with
no source tree anywhere near.

The wheel is built from a copy of this checkout (so the shared tree gets no build/ or egg-info) and installed into a
fresh virtual environment whose only other path entry is the test environment's site-packages (lmms-eval, torch, ...),
added by a .pth line: the editable install's finder there is never run, so `vistog_bench` can only come from the wheel.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUILD_LEFTOVERS = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache")
OUTPUT_FOLDERS = ("results", "reports")  # the checkout's run outputs; vistog_bench/results/ is code and is copied


def _ignored(folder: str, names: list[str]) -> set[str]:
    top = Path(folder) == REPO
    return set(BUILD_LEFTOVERS(folder, names)) | ({n for n in names if n in OUTPUT_FOLDERS} if top else set())


pytestmark = pytest.mark.slow  # ~25 s on 2 cores: wheel build, install, two CLI processes


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("install")
    src = root / "src"
    shutil.copytree(REPO, src, ignore=_ignored)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "-w",
            str(root / "dist"),
            str(src),
        ],
        check=True,
        cwd=root,
    )
    (wheel,) = (root / "dist").glob("vistog_bench-*.whl")

    env_dir = root / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # the dependencies only: a path line in a .pth adds the folder without running the .pth files inside it
    Path(purelib, "_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--quiet", str(wheel)], check=True)

    empty = root / "empty_cwd"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HOME=str(root / "hf_home"),
        VISTOG_BENCH_CACHE=str(root / "cache"),
        LMMS_EVAL_DATASETS_CACHE=str(root / "datasets_cache"),
    )
    return {
        "wheel": wheel,
        "python": python,
        "bin": env_dir / "bin",
        "purelib": Path(purelib),
        "cwd": empty,
        "env": env,
        "root": root,
    }


def _run(installed, *args, timeout=300):
    return subprocess.run(
        list(args), cwd=installed["cwd"], env=installed["env"], capture_output=True, text=True, timeout=timeout
    )


def test_installed_wheel_holds_the_task_folder(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    ours = {
        "vistog_bench/" + p.relative_to(REPO).as_posix()
        for p in (REPO / "tasks").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert "vistog_bench/tasks/offline/_mmbench_en_local_template_yaml" in ours  # an extension-less `include:`
    assert "vistog_bench/tasks/shapes/utils.py" in ours  # a `!function` module
    assert ours <= names, sorted(ours - names)
    # pyproject lists the packages (tasks/ is mapped into the package): every module of the source tree is shipped
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "vistog_bench").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    # the embedded checkpoints whole: their chat_template.jinja decides the prompts the embedded default answers
    embedded = {
        p.relative_to(REPO).as_posix() for p in (REPO / "vistog_bench/demo/checkpoints").rglob("*") if p.is_file()
    }
    assert any(name.endswith("chat_template.jinja") for name in embedded) and embedded <= names, embedded - names

    where = _run(installed, str(installed["python"]), "-c", "import vistog_bench; print(vistog_bench.__file__)")
    assert Path(where.stdout.strip()).parent == installed["purelib"] / "vistog_bench", where.stderr

    path = _run(installed, str(installed["bin"] / "vistog-bench"), "tasks", "--path")
    assert path.returncode == 0, path.stderr
    assert Path(path.stdout.strip()) == installed["purelib"] / "vistog_bench" / "tasks"
    assert (Path(path.stdout.strip()) / "shapes" / "shapes_vqa.yaml").is_file()


def test_tasks_command_knows_shapes_vqa_from_an_empty_folder(installed):
    out = _run(installed, str(installed["python"]), "-m", "vistog_bench.cli", "tasks", "--filter", "shapes")
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line.split() for line in out.stdout.splitlines() if line.strip()}
    assert rows["shapes_vqa"][1:] == ["python_task", "vistog-bench"]
    assert rows["shapes"][1:] == ["group", "vistog-bench"]
    assert "gqa_local" not in rows  # --filter applied


def test_embedded_run_from_an_empty_folder(installed):
    results = installed["root"] / "results"
    out = _run(
        installed,
        str(installed["bin"] / "vistog-bench"),
        "run",
        "--tasks",
        "shapes_vqa",
        "--limit",
        "2",
        "--method",
        "none",
        "--budgets",
        "64",  # the embedded default's full budget, where `none` runs (its other budgets are VisToG's)
        "--no-report",
        "--output",
        str(results),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (run_dir,) = results.iterdir()
    (cell,) = json.loads((run_dir / "metrics.json").read_text())
    assert (cell["task"], cell["status"], cell["n_samples"]) == ("shapes_vqa", "ok", 2)
    assert 0.0 <= cell["metrics"]["exact_match,none"] <= 1.0
    assert list(installed["cwd"].iterdir()) == []  # nothing written into the working folder
