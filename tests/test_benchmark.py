import shlex
import sys

from tcbm.benchmark import command_line


def test_command_line_pastes_back_into_a_shell(monkeypatch):
    argv = ["scripts/benchmark_cln.py", "--variant", "aligned prior, energy 0.001=model.loss.energy.final=0.001"]
    monkeypatch.setattr(sys, "argv", argv)
    assert shlex.split(command_line()) == ["python", *argv]


def test_compared_marks_what_the_bootstrap_resolves():
    from tcbm.analysis.uncertainty import PairedBlockBootstrap
    from tcbm.benchmark import compared

    def errors(metrics, name):
        return {"x": metrics["datasets"][name]["x"], "y": metrics["datasets"][name]["y"]}

    def bootstrap(estimate, replicas):
        fitted = PairedBlockBootstrap()
        fitted.estimate, fitted.replicas = estimate, replicas
        return fitted

    metrics = {"datasets": {"ours": {"x": 1.0, "y": 2.0}, "theirs": {"x": 2.0, "y": 1.9}}}
    # replicas: x always better for "ours"; y worse in some replicas, better in others
    replicas = [{"ours": {"x": 1.0 + e, "y": 2.0 + e}, "theirs": {"x": 2.0, "y": 1.9}} for e in (-0.2, 0.0, 0.2)]
    texts, worse = compared(errors, metrics, bootstrap(metrics["datasets"], replicas), "ours", "theirs")
    assert texts[0] == "x 1 vs 2 (difference [-1.2, -0.81])"  # basic interval from three replicas' 2.5/97.5 %
    assert worse == ["y (within the scatter)"]
    far = [{"ours": {"x": 1.0, "y": 2.0 + e}, "theirs": {"x": 2.0, "y": 1.0}} for e in (-0.2, 0.0, 0.2)]
    assert compared(errors, metrics, bootstrap({"ours": {"x": 1, "y": 2.0}, "theirs": {"x": 2, "y": 1.0}}, far),
                    "ours", "theirs")[1] == ["y (resolved)"]
    assert compared(errors, metrics, None, "ours", "theirs") == (["x 1 vs 2", "y 2 vs 1.9"], ["y"])
