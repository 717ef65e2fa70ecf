import shlex
import sys

from tcbm.benchmark import command_line


def test_command_line_pastes_back_into_a_shell(monkeypatch):
    argv = ["scripts/benchmark_cln.py", "--variant", "aligned prior, energy 0.001=model.loss.energy.final=0.001"]
    monkeypatch.setattr(sys, "argv", argv)
    assert shlex.split(command_line()) == ["python", *argv]
