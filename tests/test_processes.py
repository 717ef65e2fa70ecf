import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tcbm.processes import run_in_processes


def _where(value: int, position: int) -> tuple[int, int, int, int]:
    return value, position, torch.get_num_threads(), os.getpid()


def _second_fails(position: int) -> int:
    if position == 1:
        raise ValueError(f"bad input in call {position}")
    return position


def _report_and_sleep(path: str, position: int) -> None:
    Path(path).write_text(str(os.getpid()))
    time.sleep(120)


def _running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (Linux /proc)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def test_calls_run_in_other_processes_with_a_share_of_the_threads_and_results_in_order(two_threads):
    results = run_in_processes(_where, [dict(value=v) for v in (5, 6, 7)], workers=2)
    assert [(value, position) for value, position, _, _ in results] == [(5, 0), (6, 1), (7, 2)]
    assert all(threads == 1 for _, _, threads, _ in results)
    assert os.getpid() not in {pid for *_, pid in results}


def test_one_worker_runs_here_with_all_threads(two_threads):
    assert run_in_processes(_where, [dict(value=1), dict(value=2)], workers=1) == [(1, 0, 2, os.getpid()),
                                                                                   (2, 0, 2, os.getpid())]


def test_a_failing_call_is_raised_with_its_message(two_threads):
    with pytest.raises(ValueError, match="bad input in call 1"):
        run_in_processes(_second_fails, [{}, {}, {}], workers=2)
    with pytest.raises(ValueError, match="workers must be at least 1"):
        run_in_processes(_where, [dict(value=1)], workers=0)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the workers' process states from Linux /proc")
def test_workers_stop_when_their_parent_is_killed(tmp_path):
    files = [tmp_path / f"worker{k}.pid" for k in range(2)]
    script = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
              "from test_processes import _report_and_sleep; from tcbm.processes import run_in_processes; "
              f"run_in_processes(_report_and_sleep, [dict(path={str(files[0])!r}), dict(path={str(files[1])!r})], 2)")
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 120
        while not all(f.exists() and f.read_text() for f in files):
            assert time.monotonic() < deadline and parent.poll() is None, "workers did not start"
            time.sleep(0.2)
        workers = [int(f.read_text()) for f in files]
        assert all(_running(pid) for pid in workers)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 10
    while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_running(pid) for pid in workers)
