"""The worker pool of the data stage (scan and decode): one rule, in one place."""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor


def worker_pool(workers: int) -> Executor:
    """The pool for decoding many files: forked processes, or threads once TensorFlow is loaded.

    Forking a process in which TensorFlow has started its threads can deadlock, and a ``spawn`` pool re-imports
    the caller's ``__main__``, which breaks every user script without an ``if __name__ == "__main__":`` guard. So
    once TensorFlow is imported (training) the pool is threads: Pillow releases the GIL while it decodes and
    resizes, and on a loaded 2-core machine threads decoded 5,000 PNGs faster than a spawn pool (1,115 vs 601
    images/s, see bench/RESULTS-data.md).
    """
    if "tensorflow" in sys.modules:
        return ThreadPoolExecutor(max_workers=workers)
    return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork"))


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))
