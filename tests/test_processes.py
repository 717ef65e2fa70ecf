import os

import pytest
import torch

from tcbm.processes import run_in_processes


def _where(value: int, position: int) -> tuple[int, int, int, int]:
    return value, position, torch.get_num_threads(), os.getpid()


def _second_fails(position: int) -> int:
    if position == 1:
        raise ValueError(f"bad input in call {position}")
    return position


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
