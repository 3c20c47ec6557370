"""The sweep's output redirection (vistog_bench/run/console.py)."""

import sys

from vistog_bench.run.console import third_party_output_to


def test_streams_kept_by_a_library_still_write_after_the_sweep(tmp_path, capsys):
    """A library imported during a sweep may keep sys.stdout / sys.stderr (nltk keeps stderr); after the sweep those
    objects write to the restored streams, not to the closed run log."""
    log = tmp_path / "run.log"
    with third_party_output_to(log):
        kept_out, kept_err = sys.stdout, sys.stderr
        print("inside")
        kept_err.write("warning inside\n")
    kept_out.write("stdout after\n")
    kept_err.write("stderr after\n")
    captured = capsys.readouterr()
    assert "inside\n" in log.read_text() and "warning inside" in log.read_text()
    assert "stdout after" in captured.out and "stderr after" in captured.err
    assert "after" not in log.read_text()
