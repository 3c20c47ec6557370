"""What a run's manifest says about the code that made it: the git commit, package versions, the time.

pytorch/benchmark's userbenchmark writes the same facts into each run's JSON (environment: versions, git sha).
"""

from __future__ import annotations

import datetime as dt
import platform
import subprocess
from pathlib import Path

# Distribution names whose versions a manifest records (importlib.metadata normalises - and _ alike).
RECORDED_PACKAGES = ("vistog-bench", "torch", "transformers", "lmms_eval", "datasets", "accelerate", "nvidia-ml-py")
GIT_TIMEOUT_S = 10


def git_sha() -> str | None:
    """HEAD of the repository this package lives in; None outside a git checkout or without git."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (result.stdout.strip() or None) if result.returncode == 0 else None


def package_versions() -> dict[str, str]:
    """{"python": ..., package: version} for the RECORDED_PACKAGES that are installed."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in RECORDED_PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


__all__ = ["git_sha", "package_versions", "now", "RECORDED_PACKAGES"]
