"""The study's units as Ray tasks (--cluster ray): an executor (executors.py), for a cluster of one machine or
many.

The UnitJob (the data set, the configuration, the record so far) is put in Ray's object store once and every
task gets its reference. A task trains its unit in a Ray worker and yields each training as it finishes (a Ray
streaming generator: one message a training), with the network the training saves: the workers need no share of
the driver's disk, and only the study process writes the study folder. A unit whose base network finished
before gets that network's file from the driver with the task. Ray retries a task whose worker died (max_retries;
the retried unit trains again from its start, the same numbers, since every seed derives from the point's name)
and the console says so. Ctrl-C or SIGTERM cancels the tasks: what was recorded stays, and a resumed study
trains the rest, the points under way from their start (a Ray task keeps no checkpoint).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

from ..errors import UserError, first_line
from ..training.batches import usable_cores
from .executors import StudyWork, UnitJob, import_extra, resume_hint, stopped_without_checkpoints
from .runtime import STOP_SIGNALS
from .shipped_unit import Base, record_message, shipped_base, train_unit
from .study_plan import Unit

RETRIES = 3  # a task whose worker died is run again this many times (Ray's max_retries), then the study fails
LOCAL_STORE_BYTES = 256 << 20  # a local cluster's object store at least (the data set goes in once)
REACH_SECONDS = 5.0  # --cluster's address must answer within this before the study starts
IN_FLIGHT_PER_CPU = 2  # tasks handed to Ray at a time per CPU of the cluster: the rest wait here, cheap to cancel


class RayCluster:
    """Each unit a Ray task of `threads` CPUs (and a GPU where the study trains on one), on the cluster `address`
    names: "ray" (RAY_ADDRESS's, else `ray start`'s on this machine, else a new local one) or ray://HOST:PORT
    (Ray Client, which has no streaming generators: each unit's trainings come back when it ends)."""

    def __init__(self, address: str, threads: int, device: str):
        self.ray = import_extra("ray", f"--cluster {address}", "Ray")
        self.address, self.threads, self.device = address, threads, device
        self.where: dict[int, str] = {}  # the process each unit trains in, as its task said

    def describe(self) -> str:
        return f"Ray tasks x {self.threads} thread{'s' if self.threads > 1 else ''}"

    def train(self, work: StudyWork) -> None:
        with self.connected(work) as client:
            job = self.ray.put(work.job)  # once: every task gets the reference, not a copy of the data
            task = self.ray.remote(train_unit if not client else train_unit_whole).options(
                num_cpus=self.threads, num_gpus=1 if self.device == "cuda" else 0, max_retries=RETRIES,
                name="transferkit-unit", **({} if client else {"num_returns": "streaming"}))
            self.run_tasks(work, lambda i: task.remote(job, work.units[i], shipped_base(work.units[i], work.run)))

    def run_tasks(self, work: StudyWork, submit) -> None:
        """Hand the units over a few at a time and record what comes back until every task has ended."""
        ray, run, units = self.ray, work.run, work.units
        window = max(1, int(ray.cluster_resources().get("CPU", 1) // self.threads)) * IN_FLIGHT_PER_CPU
        running, queued = {}, list(range(len(units)))
        run.status("running", phase="points as Ray tasks")
        try:
            while running or queued:
                if work.runtime.should_stop():
                    raise self.stopped(running, work)
                while queued and len(running) < window:
                    i = queued.pop(0)
                    running[submit(i)] = i
                ready, _ = ray.wait(list(running), num_returns=1, timeout=0.2)
                for handle in ready:
                    i = running[handle]
                    try:
                        messages, ended = self.next_messages(handle)
                    except ray.exceptions.RayError as e:
                        if work.runtime.should_stop():  # Ctrl-C reached the task too: a stop, not a failure
                            running.pop(handle)
                            raise self.stopped(running, work) from None
                        raise self.failed(i, e, work) from None
                    for message in messages:
                        self.receive(i, message, work)
                    if ended:
                        del running[handle]
        finally:
            for handle in running:  # stopped or failed: what is still queued or training goes
                ray.cancel(handle)

    def stopped(self, running: dict, work: StudyWork) -> Exception:
        """On a stop: the trainings the tasks have sent and the study has not read yet recorded first (a finished
        training is not lost to a stop), then the Interrupted the study raises; the tasks are cancelled after."""
        for handle, i in list(running.items()):
            with contextlib.suppress(self.ray.exceptions.RayError):  # a task failing now: stopped all the same
                ended = False
                while not ended and self.ray.wait([handle], num_returns=1, timeout=0)[0]:
                    messages, ended = self.next_messages(handle)
                    for message in messages:
                        self.receive(i, message, work)
        return stopped_without_checkpoints(work.recorder, "the Ray tasks cancelled; on resume the points under way "
                                                          "train again from their start")

    def next_messages(self, handle) -> tuple[list[tuple], bool]:
        """What a ready task sent: a streaming generator's next message, or a whole task's list (Ray Client); and
        whether the task has ended."""
        if isinstance(handle, self.ray.ObjectRefGenerator):
            try:
                return [self.ray.get(next(handle))], False
            except StopIteration:
                return [], True
        return self.ray.get(handle), True

    def receive(self, i: int, message: tuple, work: StudyWork) -> None:
        """A task's message recorded (record_message), and said where it comes from another worker than before."""
        before, where = self.where.get(i), message[1]
        if before is not None and before != where:  # Ray ran the task again: its first worker was lost
            work.runtime.console.print(f"unit {i} ({', '.join(work.units[i].trainings[:3])}): its Ray worker "
                                       f"({before}) was lost; Ray ran it again from its start ({where})")
        self.where[i] = record_message(message, i, work)

    def failed(self, i: int, error: Exception, work: StudyWork) -> Exception:
        """A task that failed, in one line naming its unit: its own error, or its workers lost too often."""
        names = ", ".join(work.units[i].trainings[:3])
        cause = getattr(error, "cause", None)
        if isinstance(cause, UserError):
            return UserError(f"unit {i} ({names}) on Ray: {first_line(cause)}")
        if isinstance(error, self.ray.exceptions.RayTaskError):  # a bug: Ray printed the task's traceback
            return RuntimeError(f"unit {i} ({names}) on Ray: {type(cause).__name__}: {first_line(cause)}")
        return UserError(f"unit {i} ({names}) on Ray: {type(error).__name__} ({first_line(error)[:160]}; a task "
                         f"whose worker was lost is retried {RETRIES} times){resume_hint(work.run, ' (--cluster ray)')}")

    @contextlib.contextmanager
    def connected(self, work: StudyWork) -> Iterator[bool]:
        """Ray connected to the cluster inside (a Ray this process started already is used as it is); whether
        through Ray Client. The study's Ctrl-C and SIGTERM handlers are kept: ray.init sets its own."""
        ray = self.ray
        from ray.util.client import ray as client  # Ray Client's side of the API (ray://)

        if ray.is_initialized():
            yield client.is_connected()
            return
        handlers = {s: signal.getsignal(s) for s in STOP_SIGNALS}
        try:
            # ray://HOST:PORT, else RAY_ADDRESS's cluster, else `ray start`'s on this machine (not "auto": that
            # takes any Ray process on the machine, another user's local one too), else a local one of this
            # machine's cores, its node at 127.0.0.1 (Ray 2.60's servers listen on every interface whatever the
            # node's address: its token authentication, on by default, guards them).
            address = self.address if self.address != "ray" else os.environ.get("RAY_ADDRESS") or ray_start_address()
            if address is not None:
                ray.init(address, logging_level="warning")
            else:
                ray.init(address="local", num_cpus=usable_cores(), include_dashboard=False,
                         _node_ip_address="127.0.0.1", logging_level="warning",
                         object_store_memory=max(LOCAL_STORE_BYTES, 3 * job_bytes(work.job)))
        except BaseException as e:  # a start half done (a local cluster's processes) goes with it
            ray.shutdown()
            if not isinstance(e, ConnectionError):
                raise
            where = self.address if self.address != "ray" else f"ray (RAY_ADDRESS={os.environ.get('RAY_ADDRESS')})"
            raise UserError(f"--cluster {where}: cannot connect ({first_line(e)[:160]}); start the cluster "
                            "(docs/distributed.md, Studies on a cluster) or give another address") from None
        finally:
            for s, handler in handlers.items():
                if handler is not None:
                    signal.signal(s, handler)
        try:
            work.runtime.console.print(f"Ray: {describe_cluster(ray)}")
            yield client.is_connected()
        finally:
            ray.shutdown()


def check_reachable(cluster: str) -> None:
    """Where --cluster names a cluster (ray://HOST:PORT, RAY_ADDRESS, `ray start`'s), something answers at its
    address: checked before the study folder is made, so that a wrong address leaves none behind. Nothing to
    check where a local cluster is started."""
    address = cluster if cluster != "ray" else os.environ.get("RAY_ADDRESS") or ray_start_address()
    if address is None or address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=REACH_SECONDS).close()
    except (OSError, ValueError) as e:
        where = cluster if cluster != "ray" else f"ray ({address})"
        raise UserError(f"--cluster {where}: nothing answers at {address} ({first_line(e)[:80]}); start the "
                        "cluster (docs/distributed.md, Studies on a cluster) or give another address") from None


def ray_start_address() -> str | None:
    """The address of the cluster `ray start` runs on this machine, from the file it writes for its drivers
    (RAY_TMPDIR, else /tmp, then ray/ray_current_cluster), or None. Only a file of this user's that no one else
    may write: /tmp is everyone's, and another user's file would send the data set to their cluster and have
    this process unpickle what comes back."""
    path = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster"
    try:
        facts = path.stat()
        if facts.st_uid != os.getuid() or facts.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return None
        return path.read_text().strip() or None
    except OSError:
        return None


def describe_cluster(ray) -> str:
    """The cluster's size in one line: nodes, CPUs, GPUs."""
    resources, nodes = ray.cluster_resources(), [n for n in ray.nodes() if n.get("Alive")]
    gpus = f", {resources['GPU']:.0f} GPUs" if resources.get("GPU") else ""
    return f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}, {resources.get('CPU', 0):.0f} CPUs{gpus}"


def job_bytes(job: UnitJob) -> int:
    """The data set's arrays in a UnitJob, in bytes: what the object store holds once."""
    return sum(array.nbytes for split in (job.a, job.b) if split is not None
               for array in (split.x_train, split.y_train, split.x_test, split.y_test))


def train_unit_whole(job: UnitJob, unit: Unit, base: Base | None) -> list[tuple]:
    """train_unit's messages all at once, when the unit ends (Ray Client runs no streaming generators)."""
    return list(train_unit(job, unit, base))
