"""`--track tensorboard[=DIR]`: event files that `tensorboard --logdir DIR` shows, written with
torch.utils.tensorboard's SummaryWriter.

Each phase is a TensorBoard run of its own (DIR/<phase>), so the transfer phase and its scratch control are
two curves on one chart per figure (epoch/val_accuracy, ...), the step the epoch. DIR defaults to the run
folder's tensorboard/; a DIR given is shared by runs, each in DIR/<run folder's name>.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .tracker import Tracker

DEFAULT_DIR = "tensorboard"  # inside the run folder


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def __init__(self, where: str | None, run_dir: Path, state: dict | None, resumed: bool):
        from torch.utils.tensorboard import SummaryWriter  # the tensorboard extra, checked by TrackSpec.parse

        self.writer_class = SummaryWriter
        if state is not None:  # a resumed run writes where it wrote before
            self.root = Path(state["dir"])
        else:
            self.root = (run_dir / DEFAULT_DIR) if where is None else Path(where).resolve() / run_dir.name
        self.root.mkdir(parents=True, exist_ok=True)
        self.resumed, self.writers = resumed, {}

    def state(self) -> dict:
        return {"dir": str(self.root)}

    def _writer(self, run: str, step: int | None = None):
        """The writer of `run` (a phase, or "run" for the whole run's). A phase's, opened by a resumed run at
        the step it continues from (`step`): `purge_step` makes TensorBoard drop what an earlier start logged
        from that step on (an epoch logged before a kill and trained again), so no step is there twice."""
        if run not in self.writers:
            purge = step if self.resumed else None
            self.writers[run] = self.writer_class(str(self.root / run), purge_step=purge, flush_secs=30)
        return self.writers[run]

    def params(self, params: dict[str, str]) -> None:
        table = "| option | value |\n| --- | --- |\n" + "\n".join(f"| {k} | {v} |" for k, v in params.items())
        writer = self._writer("run")
        writer.add_text("config", table, 0)
        writer.flush()

    def epoch(self, phase: str, step: int, values: dict[str, float]) -> None:
        writer = self._writer(phase, step)
        for key, value in values.items():
            writer.add_scalar(f"epoch/{key}", value, step)
        writer.flush()  # a killed run keeps every epoch it logged (the writer's thread would wait 30 s)

    def finals(self, phase: str, step: int, values: dict[str, float]) -> None:
        writer = self._writer(phase, step)
        for key, value in values.items():
            writer.add_scalar(f"final/{key}", value, step)
        writer.flush()

    def child(self, name: str, values: dict[str, float]) -> None:
        writer = self._writer(name)
        for key, value in values.items():
            writer.add_scalar(f"final/{key}", value, 0)

    def finish(self, run_dir: Path, figures: list[Path]) -> None:
        from PIL import Image

        writer = self._writer("run")
        for png in figures:
            with Image.open(png) as image:
                writer.add_image(f"figures/{png.stem}", np.asarray(image.convert("RGB")), 0, dataformats="HWC")
        self.close()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers = {}
