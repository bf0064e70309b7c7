"""A unit trained away from the study folder (a Ray task, a SLURM job): nothing written to disk; each training
sent back as a message with the network it saved, which the study process writes; a finished base network the
unit needs read by the study process and sent with the unit. Shared by study_ray.py and study_slurm.py."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from torch import nn

from ..errors import UserError, first_line
from ..reporting.console import make_console
from ..training.distributed import Distributed
from ..training.memory import keep_freed_memory
from .executors import StudyWork, UnitJob, process_name
from .run_folder import RunFolder, UnreadableWeights, weights_entry, weights_file
from .runtime import Runtime
from .study_plan import Point, Unit
from .study_trainer import Trainer

Base = tuple[str, str, bytes | None]  # a finished base network: its name, its file on the study's machine, the bytes


def shipped_base(unit: Unit, run: RunFolder) -> Base | None:
    """The unit's base network where it finished before (a resumed study): its name, its file's path on this
    machine and the file's bytes (None where missing: the task trains it again), read here for the task."""
    if unit.base is None or run.path is None or not run.finished(Point(unit.base, unit.seed).name):
        return None
    name = Point(unit.base, unit.seed).name
    path = weights_file(run.path, name)
    try:
        return name, str(path), path.read_bytes()
    except OSError:
        return name, str(path), None


class ShippedFolder(RunFolder):
    """A Ray task's or SLURM job's view of the study folder, which lies on the study's machine: nothing is
    written; the network a training saves is kept for its message back (`take_saved`); the finished base network
    it reads came with the unit (`base`). No checkpoint: a cancelled or lost unit trains again from its start."""

    def __init__(self, results: dict, base: Base | None):
        super().__init__(None, False, results)
        self.base, self.saved = base, None

    def save_weights(self, phase: str, model: nn.Module, class_names: list[str], preprocessing: dict,
                     temperature: float | None = None) -> None:
        # A copy as it is now: a SLURM job sends its messages when the unit ends, after the points used it.
        self.saved = (phase, copy.deepcopy(model), class_names, preprocessing, temperature)

    def take_saved(self) -> tuple | None:
        saved, self.saved = self.saved, None
        return saved

    def load_weights(self, phase: str, into: nn.Module) -> None:
        name, path, data = self.base if self.base is not None else (phase, weights_entry(phase), None)
        if name != phase or data is None:
            raise UnreadableWeights(Path(path), phase, "not found")
        try:
            into.load_state_dict(load_safetensors(data))
        except (RuntimeError, ValueError, SafetensorError) as e:  # cut short, another network's
            raise UnreadableWeights(Path(path), phase, first_line(e)[:120]) from None


def train_unit(job: UnitJob, unit: Unit, base: Base | None) -> Iterator[tuple]:
    """`unit` trained in this process (a Ray worker, a SLURM job) with the job's threads, yielding ("started",
    where) and then ("trained", where, record, saved) a training at a time (`saved`: the network to write, or
    None)."""
    torch.set_num_threads(job.threads)  # as many as the --jobs workers: the same last digits
    keep_freed_memory()
    # On Ray the data set's arrays come read-only from the object store (no copy per task); nothing writes them.
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    where = process_name()
    yield ("started", where)
    folder = ShippedFolder(copy.deepcopy(job.results), base)
    outbox: list[tuple] = []
    runtime = Runtime(Distributed(device=torch.device(job.device)), job.precision, make_console(quiet=True),
                      lambda: False, job.eval_batch_size)  # stopped from outside (ray.cancel, scancel)
    trainer = Trainer(job.config, job.image_shape, job.a, job.b, folder, runtime,
                      lambda *record: outbox.append((record, folder.take_saved())))
    for _ in trainer.trainings(unit):
        while outbox:
            yield ("trained", where, *outbox.pop(0))


def record_message(message: object, i: int, work: StudyWork) -> str:
    """Unit i's message recorded: ("started", where), or ("trained", where, record, saved), the network `saved`
    written first (into the study folder, here). Returns where the unit trains. A message of another shape, or
    naming a training that is not the unit's, is one line (it came over the network, or from a shared disk)."""
    trainings = work.units[i].trainings
    shaped = isinstance(message, tuple) and len(message) >= 2 and isinstance(message[1], str)
    if shaped and message[0] == "started" and len(message) == 2:
        return message[1]
    if shaped and message[0] == "trained" and len(message) == 4:
        _, where, record, saved = message
        if (isinstance(record, tuple) and len(record) == 5 and record[0] in trainings and isinstance(record[1], dict)
                and (saved is None or (isinstance(saved, tuple) and saved and saved[0] in trainings))):
            if saved is not None:
                work.run.save_weights(*saved)
            work.recorder.record(*record)
            return where
    raise UserError(f"unit {i} ({', '.join(trainings[:3])}): its worker sent a message that is none of its "
                    f"trainings' ({type(message).__name__}); nothing of it is recorded. Run the study again with "
                    "--resume and the same transferkit on every machine")
