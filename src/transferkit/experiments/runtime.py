"""What every phase of a run shares: its processes and device, precision, console, evaluation batch, and
whether it was asked to stop (Ctrl-C or SIGTERM)."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from rich.console import Console

from ..config import EVAL_BATCH_SIZE
from ..errors import Interrupted
from ..reporting.console import make_console
from ..training import Precision
from ..training.distributed import Distributed, any_rank, init_distributed
from ..training.memory import keep_freed_memory


@dataclass(frozen=True)
class Runtime:
    """Handed to each phase instead of its pieces one by one."""

    ranks: Distributed
    precision: Precision
    console: Console
    should_stop: Callable[[], bool]
    eval_batch_size: int = EVAL_BATCH_SIZE  # one rule for every experiment: 128 ran fastest here (config.py)

    @property
    def device(self) -> torch.device:
        return self.ranks.device

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return self.precision.autocast_dtype


def start(device: str, verbose: bool) -> tuple[Distributed, Console]:
    """This process's place in the run and its console (quiet on ranks other than 0)."""
    ranks = init_distributed(device)
    keep_freed_memory()
    return ranks, make_console(quiet=not verbose or not ranks.is_main)


@contextlib.contextmanager
def running(ranks: Distributed, console: Console, precision: Precision,
            eval_batch_size: int = EVAL_BATCH_SIZE) -> Iterator[Runtime]:
    """The Runtime of the phases trained inside, which stop cleanly on Ctrl-C or SIGTERM."""
    with stop_on_interrupt() as should_stop:
        yield Runtime(ranks, precision, console, should_stop, eval_batch_size)


# SIGTERM is what `timeout`, `docker stop`, systemd, Slurm and Kubernetes send: handled as Ctrl-C is.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_on_interrupt() -> Iterator[Callable[[], bool]]:
    """The first Ctrl-C (or SIGTERM) asks training to stop after the current step; a second one stops at once.

    Under torchrun the agent passes the signal on to every rank; the ranks agree to stop after the same step.
    An Interrupted leaving this block carries the signal's number, so the process can exit 128 + it.
    """
    requested: list[int] = []

    def handler(signum, frame):
        if requested:
            raise KeyboardInterrupt
        requested.append(signum)

    try:
        previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    except ValueError:  # not the main thread: leave the signals alone
        yield lambda: False
        return
    try:
        yield lambda: any_rank(bool(requested))
    except Interrupted as stop:
        stop.signal = requested[0] if requested else signal.SIGINT
        raise
    finally:
        for s, before in previous.items():
            signal.signal(s, before)
