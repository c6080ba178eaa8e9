"""bench/common.write_result: every results file carries its rerun command, machine and date."""

import datetime
import sys

from bench.common import write_result


def test_write_result_records_command_machine_and_date(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench/default_run.py", "--seeds", "0"])
    path = write_result(str(tmp_path / "results" / "x.md"), "Title", "How it was run.", "| a |\n|---|\n| 1 |")
    text = open(path).read()
    assert text.startswith("# Title\n")
    assert "python bench/default_run.py --seeds 0`" in text
    assert "CPUs" in text and datetime.date.today().isoformat() in text
    assert text.rstrip().endswith("| 1 |")
    assert "| 1 |" in capsys.readouterr().out
