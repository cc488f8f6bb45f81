"""Peak memory while something runs: RSS sampled in a thread on CPU, the allocator's peak on CUDA; and
``run_isolated``, which runs a measurement in a fresh process so its RSS holds nothing an earlier one left."""

from __future__ import annotations

import multiprocessing
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import psutil
import torch


class PeakMemory:
    """``with PeakMemory() as m: ...`` then ``m.peak_rss_mb`` (and ``m.peak_cuda_mb`` with CUDA).

    RSS is sampled every ``interval`` seconds, so a spike shorter than that can be missed;
    5 ms is far below the length of one forward pass of any model here.
    """

    def __init__(self, interval: float = 0.005) -> None:
        self.process, self.interval = psutil.Process(), interval
        self.peak_rss, self.start_rss, self.peak_cuda = 0, 0, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        self.start_rss = self.peak_rss = self.process.memory_info().rss
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, self.process.memory_info().rss)
        if torch.cuda.is_available():
            self.peak_cuda = torch.cuda.max_memory_allocated()

    @property
    def peak_rss_mb(self) -> float:
        return self.peak_rss / 2**20

    @property
    def start_rss_mb(self) -> float:
        return self.start_rss / 2**20

    @property
    def peak_cuda_mb(self) -> float | None:
        return None if self.peak_cuda is None else self.peak_cuda / 2**20


def run_isolated(fn, *args):
    """``fn(*args)`` in a fresh Python process (spawned, not forked), its return value sent back and its exception
    raised here. A process's RSS keeps pages its allocator freed but did not hand back, so a model measured after
    another one in the same process read as holding the first one's memory as well. ``fn`` must be importable
    (a module-level function) and its arguments and result picklable. A child that dies without an answer (killed,
    a crash inside a native library) is a RuntimeError, not a hang."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            return pool.submit(fn, *args).result()
        except BrokenProcessPool:
            raise RuntimeError(f"the process running {getattr(fn, '__qualname__', fn)} died before it answered "
                               "(killed for memory, or a crash in a native library); run it again, or on its own to "
                               "see its error") from None
