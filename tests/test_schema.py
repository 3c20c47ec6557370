"""Result files are read through one schema (pydantic over the dataclasses of vistog_bench.results): the old name of
`execution_path` is still read, and a wrongly typed field is one line naming the file, the record and the field."""

from __future__ import annotations

import dataclasses
import json

import pytest

from vistog_bench import cli
from vistog_bench.errors import UsageError
from vistog_bench.results import PROFILE_FILE, ProfileRecord, RunDir, RunManifest


def record(**changes) -> ProfileRecord:
    fields = {
        "kind": "controlled",
        "method": "none",
        "budget": 64,
        "batch_size": 1,
        "device": "cpu",
        "dtype": "float32",
        "total_ms": 10.0,
    }
    return ProfileRecord(**{**fields, **changes})


def run_with_lines(tmp_path, lines: list[dict]) -> RunDir:
    run = RunDir(tmp_path / "run")
    run.write_manifest(
        RunManifest(
            run_id="run",
            command=[],
            config={},
            git_sha=None,
            versions={},
            device={},
            seed=0,
            started_at="2026-12-01T10:00:00",
        )
    )
    (run.path / PROFILE_FILE).write_text("".join(json.dumps(line) + "\n" for line in lines))
    return run


def test_execution_path_keeps_its_old_name_for_writers_and_files(tmp_path):
    assert record(path="compiled").execution_path == "compiled" and record(path="compiled").path == "compiled"
    assert "path" not in dataclasses.asdict(record())  # written under the new name only
    old = dataclasses.asdict(record())
    old.pop("execution_path")
    old["path"] = "compiled"  # a record written before the rename
    (read,) = run_with_lines(tmp_path, [old]).profile()
    assert read.execution_path == "compiled"


@pytest.mark.parametrize(
    ("field", "value"), [("budget", "64"), ("batch_size", 0), ("total_ms", "fast"), ("flops", {"prefill": "lots"})]
)
def test_a_wrongly_typed_profile_field_is_one_line_naming_it(tmp_path, capsys, field, value):
    line = {**dataclasses.asdict(record()), field: value}
    run = run_with_lines(tmp_path, [dataclasses.asdict(record()), line])
    with pytest.raises(UsageError, match=rf"{PROFILE_FILE}: ProfileRecord record 1: {field}"):
        run.profile()
    assert cli.main(["report", str(run.path), "--out", str(tmp_path / "out"), "--no-reference"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and field in err[0] and "Traceback" not in err[0]
