"""`tune-ct COMMAND` (tune_ct/commands/cli.py): usage, unknown commands, dispatch."""

from __future__ import annotations

import pytest

from tune_ct.commands.cli import COMMANDS, main


def test_no_command_prints_usage_and_returns_2(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    assert out.startswith("usage: tune-ct COMMAND")
    for name in COMMANDS:
        assert f"  {name} " in out


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_returns_0(capsys, flag):
    assert main([flag]) == 0
    assert "usage: tune-ct COMMAND" in capsys.readouterr().out


def test_unknown_command_returns_2_and_names_it(capsys):
    assert main(["serch", "--space", "x.yaml"]) == 2
    captured = capsys.readouterr()
    assert "unknown command 'serch'" in captured.err and "usage:" in captured.err and captured.out == ""


def test_a_command_gets_the_rest_of_the_arguments(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["data", "--help"])  # argparse of `python -m tune_ct.data` answers, not the dispatcher
    assert exit_.value.code == 0
    assert "python -m tune_ct.data" in capsys.readouterr().out
