"""The study's units as SLURM jobs through submitit (--cluster slurm): an executor (executors.py).

Each unit a job of a job array, asking for `threads` CPUs (and a GPU where the study trains on one). SLURM
passes jobs and results through a folder every node sees: submitit's, slurm/ in the study folder, where the
UnitJob (the data set) is written once and read by every job. A job trains its unit as a Ray task does
(shipped_unit.py: nothing written to the study folder; its trainings come back, with the networks they saved,
when the job ends) and this process alone records them. A job that SLURM preempts or times out is requeued
(submitit's checkpoint) and trains its unit again from its start: the same numbers. Ctrl-C or SIGTERM cancels
the jobs (scancel); --resume trains what is not recorded. Where no SLURM is found (no sbatch), submitit runs
the jobs as processes of this machine, one per core at a time: how the tests run it.
"""

from __future__ import annotations

import pickle
import tempfile
import time
from pathlib import Path

from ..errors import UserError
from ..training.batches import usable_cores
from .executors import StudyWork, UnitJob, import_extra, resume_hint, stopped_without_checkpoints
from .shipped_unit import Base, record_message, shipped_base, train_unit
from .study_plan import Unit

JOB_FILE = "unit-job.pickle"  # in submitit's folder: the UnitJob, written once for every job
TIMEOUT_MIN = 24 * 60  # a job's time limit; one that reaches it is requeued (submitit's checkpoint)
POLL_SECONDS = 0.5


class SlurmJobs:
    """Each unit a SLURM job (submitit), or a local process where there is no SLURM."""

    def __init__(self, threads: int, device: str):
        self.submitit = import_extra("submitit", "--cluster slurm", "submitit")
        self.threads, self.device = threads, device

    def describe(self) -> str:
        return f"SLURM jobs (submitit) x {self.threads} thread{'s' if self.threads > 1 else ''}"

    def train(self, work: StudyWork) -> None:
        with tempfile.TemporaryDirectory(prefix="transferkit-slurm-") as spare:
            folder = (work.run.path if work.run.path is not None else Path(spare)) / "slurm"
            executor = self.submitit.AutoExecutor(folder=folder)
            executor.update_parameters(name="transferkit-unit", timeout_min=TIMEOUT_MIN, cpus_per_task=self.threads,
                                       gpus_per_node=1 if self.device == "cuda" else 0)
            on_slurm = executor.cluster == "slurm"
            if on_slurm and work.run.path is None:  # the jobs read and write a folder every node sees
                raise UserError("--cluster slurm: the jobs need the study folder on a disk every node mounts; "
                                "save the study (--out on a shared disk)")
            work.runtime.console.print(f"submitit: {'SLURM' if on_slurm else 'no SLURM here: local processes'}, "
                                       f"jobs in {folder}")
            job_file = folder / JOB_FILE
            job_file.write_bytes(pickle.dumps(work.job))  # once: every job reads it
            # SLURM queues the whole array itself; local processes go a core at a time.
            window = len(work.units) if on_slurm else max(1, usable_cores() // self.threads)
            try:
                self.run_jobs(work, executor, UnitJobRun(str(job_file)), window)
            finally:  # every job ended or cancelled: the data set's copy goes (a resume writes it again)
                job_file.unlink(missing_ok=True)

    def run_jobs(self, work: StudyWork, executor, run_unit: UnitJobRun, window: int) -> None:
        """Submit the units (as arrays of `window`), record each job's trainings as it ends, until all ended."""
        queued, running = list(range(len(work.units))), {}
        work.run.status("running", phase="points as SLURM jobs")
        try:
            while running or queued:
                if work.runtime.should_stop():
                    raise stopped(work)
                batch = queued[:max(0, window - len(running))]
                del queued[:len(batch)]
                if batch:
                    with executor.batch():  # one job array
                        jobs = [executor.submit(run_unit, work.units[i], shipped_base(work.units[i], work.run))
                                for i in batch]
                    running.update({job: i for job, i in zip(jobs, batch, strict=True)})
                for job in [job for job in running if job.done()]:
                    i = running.pop(job)
                    try:
                        messages = job.result()
                    except Exception as e:  # noqa: BLE001 - submitit's errors carry the job's own
                        if work.runtime.should_stop():  # Ctrl-C reached the local jobs too: a stop, not a failure
                            raise stopped(work) from None
                        raise self.failed(i, job, e, work) from None
                    for message in messages if isinstance(messages, list) else [messages]:  # one line if not
                        record_message(message, i, work)
                    for pickled in (job.paths.submitted_pickle, job.paths.result_pickle):  # recorded: the copies
                        pickled.unlink(missing_ok=True)  # of its networks go (its logs stay)
                time.sleep(POLL_SECONDS)
        finally:
            for job in running:  # stopped or failed: what is queued or training goes
                job.cancel(check=False)

    def failed(self, i: int, job, error: Exception, work: StudyWork) -> UserError:
        """A job that failed, in one line: the unit, the job, and its error's last line (the exception)."""
        names = ", ".join(work.units[i].trainings[:3])
        lines = [line for line in str(error).strip().splitlines() if line.strip()]
        return UserError(f"unit {i} ({names}) as job {job.job_id}: {(lines or [type(error).__name__])[-1][:200]}"
                         f"{resume_hint(work.run, ' (--cluster slurm)')}")


def stopped(work: StudyWork) -> Exception:
    """The Interrupted of a study whose jobs were cancelled."""
    return stopped_without_checkpoints(work.recorder, "the jobs cancelled; on resume the points under way train "
                                                      "again from their start")


class UnitJobRun:
    """A job's callable: one unit trained from the UnitJob file. `checkpoint` makes it requeued, not lost, when
    SLURM preempts it or its time runs out: it trains its unit again from its start."""

    def __init__(self, job_file: str):
        self.job_file = job_file

    def __call__(self, unit: Unit, base: Base | None) -> list[tuple]:
        job: UnitJob = pickle.loads(Path(self.job_file).read_bytes())  # written by the study, for its jobs
        return list(train_unit(job, unit, base))

    def checkpoint(self, unit: Unit, base: Base | None):
        import submitit

        return submitit.helpers.DelayedSubmission(UnitJobRun(self.job_file), unit, base)
