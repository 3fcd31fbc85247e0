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


def test_the_search_command_parses_its_flags_without_loading_torch_ray_or_mlflow():
    """`python -m tune_ct.search --help` and a flag mistake answer at once: the command's module loads torch, timm,
    Ray and MLflow only once the search runs (they took 5 s of every --help)."""
    import subprocess
    import sys

    code = ("import sys, tune_ct.commands.search as s\n"
            "s.parse_args(['--space', 'x.yaml', '--sampler', 'tpe', '--scheduler', 'none'])\n"
            "print(sorted(m for m in ('torch', 'timm', 'ray', 'mlflow', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout
