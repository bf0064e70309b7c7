"""The options every experiment's life takes, the same for run, finetune, rank and study: where its folder
goes or which one it continues, whether it prints, and on what device it trains. Each default is written here
once; the entry points take them as keyword arguments and hand them over with RunOptions.take."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from rich.console import Console

from ..errors import UserError
from ..reporting.tracking import parse_track
from ..training.distributed import Distributed
from .run_folder import RunFolder
from .runtime import start


@dataclass(frozen=True)
class RunOptions:
    """`out`: the new run folder (default runs/<UTC time>-<name>); `resume`: an interrupted run folder to
    continue from its last checkpoint, with the same configuration; `force`: replace a non-empty `out`;
    `save` False: write nothing; `verbose` False: print nothing; `device`: auto, cpu, cuda or cuda:N;
    `track`: experiment trackers, "tensorboard[=DIR]" and/or "mlflow[=URI]" (a string or a list;
    reporting/tracking.py)."""

    out: str | Path | None = None
    resume: str | Path | None = None
    force: bool = False
    save: bool = True
    verbose: bool = True
    device: str = "auto"
    track: str | tuple[str, ...] | list[str] | None = ()

    def __post_init__(self):
        if parse_track(self.track) and not self.save:
            raise UserError("--track: a run without a folder (save=False) tracks nothing; drop save=False or --track")

    @classmethod
    def take(cls, options: dict) -> RunOptions:
        """The run options among an entry point's keyword arguments, removed from `options` (the rest
        configure the experiment)."""
        return cls(**{f.name: options.pop(f.name) for f in fields(cls) if f.name in options})

    def start(self) -> tuple[Distributed, Console]:
        """This process's place in the run (torchrun's ranks, the device) and its console."""
        return start(self.device, self.verbose)

    def resumed(self, config: dict, ranks: Distributed) -> RunFolder | None:
        """The folder `resume` names, refused when `config` differs from the one it ran with; None to create."""
        if self.resume is None:
            return None
        return RunFolder.resume(self.resume, config, ranks).track(parse_track(self.track))

    def created(self, ranks: Distributed, name: str) -> RunFolder:
        """A new run folder (`out`, or runs/<UTC time>-<name>), or none when `save` is False."""
        return RunFolder.create(ranks, name, self.out, self.force, self.save).track(parse_track(self.track))
