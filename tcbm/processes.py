"""Independent pipeline jobs (simulations, trainings) run side by side in spawned processes, each with an
equal share of the CPU threads.  On 2 CPU cores two 1-thread trainings do more work than one 2-thread
training (79 vs 60 samples/s, ``scripts/bench_train.py``), and OpenMM's Reference platform, which small
molecules use, runs on one thread only."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import torch
from tqdm.auto import tqdm


def _exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)  # the process that started this worker is gone (killed): stop instead of working on


def _start_worker(threads: int, lock: Any, parent: int) -> None:
    torch.set_num_threads(threads)
    tqdm.set_lock(lock)  # progress bars of the processes share the terminal without tearing
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True).start()


def run_in_processes(function: Callable[..., Any], calls: Sequence[dict], workers: int) -> list[Any]:
    """``function(**calls[k], position=k)`` for every call, in up to ``workers`` spawned processes at once,
    each with ``torch.get_num_threads() // workers`` threads; returns the results in call order.  ``position``
    is the line of the call's progress bar.  ``workers == 1`` (or a single call) runs them here, one after the
    other.  The first failure is raised (with its worker's traceback) once the running calls have stopped;
    calls not yet started are cancelled; a worker whose parent is killed stops within a second.  ``function``
    and the call arguments must be picklable (module-level function)."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if workers == 1 or len(calls) <= 1:
        return [function(**call, position=0) for call in calls]
    workers = min(workers, len(calls))
    context = multiprocessing.get_context("spawn")  # no forked copies of torch or OpenMM threads
    threads = max(1, torch.get_num_threads() // workers)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                             initargs=(threads, context.RLock(), os.getpid())) as pool:
        futures = [pool.submit(function, **call, position=k) for k, call in enumerate(calls)]
        try:
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise
