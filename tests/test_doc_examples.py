"""Every command the docs show is a command that works: the README, docs/*.md and the package's docstrings.

`vistog-bench ...` lines go through the real argument parser. `python -m lmms_eval eval --model vistog ...` lines go
through lmms-eval's own parser and then build the model exactly as lmms-eval's evaluator does
(`models.get_model(name, force_simple).create_from_arg_string(model_args, {batch_size, max_batch_size, device})`),
with the checkpoint path replaced by a tiny one and GPU settings by CPU ones: an example that puts `batch_size` in
`--model_args` dies here with lmms-eval's duplicate-keyword TypeError, as it would for a user.
"""

from __future__ import annotations

import ast
import re
import shlex
import sys
from pathlib import Path

import pytest
from testers import save_tiny_llava

import vistog_bench
from vistog_bench.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(vistog_bench.__file__).parent
COMMAND = re.compile(
    r"^(?:\$ )?(?:[A-Z_]+=\S+ )*((?:vistog-bench|python -m lmms_eval|accelerate launch [^`]*?-m lmms_eval) .*)$"
)  # an environment assignment before the command (VISTOG_DATA_DIR=...) is not part of it


def _docstrings(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)))]
    return [doc for doc in (ast.get_docstring(n, clean=True) for n in nodes) if doc]


def _commands(text: str) -> list[str]:
    """Command lines (continuations joined) at the start of a line or in a code block."""
    found, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if pending:
            pending += " " + line.rstrip("\\").strip()
            if not line.endswith("\\"):
                found.append(pending)
                pending = ""
            continue
        match = COMMAND.match(line)
        if match:
            if line.endswith("\\"):
                pending = match.group(1).rstrip("\\").strip()
            else:
                found.append(match.group(1))
    return found


def examples() -> list[tuple[str, str]]:
    sources = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    found = [(str(p.relative_to(ROOT)), c) for p in sources for c in _commands(p.read_text())]
    for path in sorted(PACKAGE.rglob("*.py")):
        for doc in _docstrings(path):
            found += [(str(path.relative_to(PACKAGE.parent)), c) for c in _commands(doc)]
    return found


def _argv(command: str) -> list[str]:
    command = command.split("  #", 1)[0].split(" # ", 1)[0]  # trailing comments
    command = re.sub(r'"?\$\(vistog-bench tasks --path\)"?', str(PACKAGE / "tasks"), command)
    return shlex.split(command)


EXAMPLES = examples()


def test_the_docs_show_examples_of_both_kinds():
    kinds = {c.split()[0] for _, c in EXAMPLES}
    assert {"vistog-bench", "python"} <= kinds and len(EXAMPLES) > 20 and len(LMMS_EVAL_EXAMPLES) >= 3


@pytest.mark.parametrize("where,command", [e for e in EXAMPLES if e[1].startswith("vistog-bench")])
def test_vistog_bench_examples_parse(where, command):
    argv = [t.strip("[]") for t in _argv(command)[1:]]  # a synopsis' [--option VALUE] parses as given
    argv = [t for i, t in enumerate(argv) if not (t == "..." and not argv[i - 1].startswith("-"))]  # "profile ..."
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        assert exc.code == 0, f"{where}: `{command}` is rejected by the parser"


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return save_tiny_llava(tmp_path_factory.mktemp("doc-example"))


# (the multi-GPU one-liner elides its model_args as `...`: there is nothing in it to build)
LMMS_EVAL_EXAMPLES = [e for e in EXAMPLES if "lmms_eval" in e[1] and "--model vistog" in e[1] and " ... " not in e[1]]


@pytest.mark.parametrize("where,command", LMMS_EVAL_EXAMPLES)
def test_lmms_eval_examples_build_the_model_as_lmms_eval_does(where, command, tiny_checkpoint, monkeypatch):
    from lmms_eval import models
    from lmms_eval.__main__ import parse_eval_args

    argv = _argv(command)
    argv = argv[argv.index("lmms_eval") + 1 :]
    argv = argv[1:] if argv and argv[0] == "eval" else argv
    monkeypatch.setattr(sys, "argv", ["lmms_eval", *argv])
    _, args = parse_eval_args()
    model_args = re.sub(r"pretrained=[^,]+", f"pretrained={tiny_checkpoint}", args.model_args)
    model_args = model_args.replace("device=cuda", "device=cpu").replace("dtype=float16", "dtype=float32")
    # the tiny checkpoint is stock LLaVA: the example's method is checked, then built at the stock budget
    assert re.search(r"method=(\w+)", model_args) is None or re.search(r"method=(\w+)", model_args).group(1) in (
        "vistog",
        "none",
        "pool",
        "random",
        "tome",
        "visionzip",
        "prumerge",
        "fastv",
    )
    model_args = re.sub(r"method=\w+", "method=none", model_args)
    model_args = re.sub(r"budget=\d+", "budget=576", model_args)
    if "method=" not in model_args:
        model_args += ",method=none,budget=576"
    lm = models.get_model(args.model, args.force_simple).create_from_arg_string(
        model_args,
        {
            "batch_size": args.batch_size,
            "max_batch_size": args.max_batch_size,
            "device": "cpu" if args.device else None,
        },
    )
    assert lm.batch_size == int(args.batch_size) and lm.method == "none"
