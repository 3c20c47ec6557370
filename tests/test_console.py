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


def test_kept_streams_follow_the_streams_of_the_moment(tmp_path, monkeypatch):
    """What was sys.stderr when the sweep began may itself be closed later (pytest closes each test's capture; a
    caller may swap streams): a kept stand-in writes to today's sys.stderr / sys.stdout."""
    import io

    first_err, first_out = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first_err)
    monkeypatch.setattr(sys, "stdout", first_out)
    with third_party_output_to(tmp_path / "run.log"):
        kept_out, kept_err = sys.stdout, sys.stderr
    first_err.close()
    first_out.close()
    later_err, later_out = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", later_err)
    monkeypatch.setattr(sys, "stdout", later_out)
    kept_err.write("[nltk_data] a late warning\n")
    kept_out.write("a late print\n")
    assert later_err.getvalue() == "[nltk_data] a late warning\n" and later_out.getvalue() == "a late print\n"
