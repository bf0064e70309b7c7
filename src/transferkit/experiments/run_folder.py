"""The run folder: the one place that knows its layout and its rules.

    RUN_DIR/
      status.json        running (phase) | interrupted | failed (error) | complete
      results.json       configuration, data set, environment, one record per phase; history.csv beside it
                         (a study's: study.json, with its points, and study.csv; a rank's: rank.json too)
      weights/<phase>.safetensors + <phase>.json   each finished phase's network (the spec is also inside the
                                                   safetensors metadata); results.json["model"] names the one
                                                   `transferkit predict` uses
      checkpoint.safetensors   the phase under way, after every epoch; deleted once the run is complete
                               (a study in parallel processes: checkpoint-unit=N.safetensors, one per unit
                               of work under way)
      *.png, report.html
      rank.json          `transferkit rank`'s table, best first (everything else of a rank is in results.json)

Rank 0 alone writes. On the other ranks of a torchrun run, and for a run without a folder (`save=False`),
every write is skipped, so experiments never ask which rank they are on.
"""

from __future__ import annotations

import contextlib
import re
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from matplotlib.figure import Figure
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..errors import UserError, first_line
from ..jsonfile import strict_json
from ..reporting import read_results, read_status, save_model, write_results, write_status
from ..reporting.figures import save_figures
from ..reporting.report import write_report
from ..reporting.results import HISTORY_FILE, RESULTS_FILE, STUDY_FILE, results_file, write_text_atomic
from ..reporting.status import STATUS_FILE, recording_status
from ..reporting.tracking import Tracking, TrackSpec, open_tracking
from ..training.checkpoint import CHECKPOINT_FILE, Checkpointer
from ..training.distributed import Distributed, on_main

WEIGHTS_DIR = "weights"
RANK_FILE = "rank.json"  # `transferkit rank`'s table, best first

# Options added after runs were saved, and what those runs did without them: such a run resumes as it began.
# Run folders made before --min-steps and --patience trained exactly their epochs: 0 and 0 say so, and the
# refusal to resume one with today's defaults names those two options.
BEFORE_THE_OPTION = {"lr_schedule": "constant", "train_batchnorm": True, "stream": "never", "class_weights": "none",
                     "min_steps": 0, "patience": 0}
# Options that change what is measured after training, not the training: a resumed run may differ in them (its
# phases still to finish follow the new choice).
EVALUATION_ONLY = {"calibrate", "tta"}
# Configuration keys that are no option's name: how the command line gives them (see _repeat).
NOT_OPTIONS = {"kind": "transferkit study {}", "dataset": "the data set argument {}"}


class RunFolder:
    """A run's folder (or none, with `save=False`): status, results, weights, figures, report, checkpoint.

    `results` is the dict written as results.json; a resumed run starts from the one it left (`resumed`).
    """

    def __init__(self, path: Path | None, writes: bool, results: dict | None = None):
        self.path = path
        self.writes = writes and path is not None
        self.resumed = results is not None
        self.results: dict = results or {}
        self.checkpoints = Checkpointer(path / CHECKPOINT_FILE) if path is not None else None
        self.tracks: tuple[TrackSpec, ...] = ()
        self.tracking = Tracking()  # opened by begin, on the rank that writes

    @classmethod
    def resume(cls, path: str | Path, config: dict, ranks: Distributed) -> RunFolder:
        """The folder of an interrupted run, refused when `config` or the number of processes differs."""
        return cls(Path(path), ranks.is_main, resumable(Path(path), config, ranks.world_size))

    @classmethod
    def create(cls, ranks: Distributed, name: str, out: str | Path | None = None, force: bool = False,
               save: bool = True) -> RunFolder:
        """A new folder (`out`, or runs/<UTC time>-<name>) that rank 0 creates, or none (`save=False`)."""
        if not save:
            return cls(None, False)

        def create() -> Path:  # by rank 0: the default name follows its clock
            new = Path(out) if out is not None else Path("runs") / f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{folder_name(name)}"
            prepare_run_dir(new, force)
            write_status(new, "running", phase="setup")
            return new

        return cls(on_main(create), ranks.is_main)

    def track(self, specs: tuple[TrackSpec, ...]) -> RunFolder:
        """The experiment trackers (`--track`) `begin` opens, besides those a resumed run was tracked by."""
        self.tracks = specs
        return self

    def begin(self, results: dict, distributed: dict) -> dict:
        """The results to fill in: the interrupted run's, or `results`, written at once so that the run can be
        resumed from its first epoch. `distributed` describes the processes (kept from the first start).
        The trackers open here (continuing a resumed run's), their ids kept in results.json."""
        if not self.resumed:
            self.results = results
        self.results.setdefault("distributed", distributed)
        if self.writes:
            self.tracking = open_tracking(self.tracks, self.path, self.results, self.resumed)
        if self.resumed:
            self.status("running", phase="setup")  # no longer interrupted: at work again
            if self.tracking:  # a tracker added on this start: its id kept before anything is logged twice
                self.save_results()
        else:
            self.save_results()
        return self.results

    # --- writing (rank 0 of a run with a folder; elsewhere nothing happens) ---

    def status(self, status: str, **details: object) -> None:
        if self.writes:
            write_status(self.path, status, **details)

    def save_results(self) -> None:
        if self.writes:
            write_results(self.path, self.results)

    def save_rank(self, table: list[dict]) -> None:
        if self.writes:
            path = self.path / RANK_FILE
            write_text_atomic(path, strict_json(table, what=str(path)) + "\n")

    def save_figures(self, figures: dict[str, Figure]) -> None:
        if self.writes:
            save_figures(figures, self.path)

    def save_report(self) -> None:
        if self.writes:
            write_report(self.path)

    def save_weights(self, phase: str, model: nn.Module, class_names: list[str], preprocessing: dict,
                     temperature: float | None = None) -> None:
        if self.writes:
            save_model(self.path / WEIGHTS_DIR, weights_file(self.path, phase).stem, model, class_names, preprocessing,
                       temperature)

    def save_phase(self, phase: str, model: nn.Module, class_names: list[str], preprocessing: dict,
                   redrawn: dict[str, Figure], last: bool) -> None:
        """After a phase (recorded in `results`): its weights (with the temperature it was calibrated with),
        results.json, the figures it changed, and the report, except after the last phase, whose report says the
        run is complete (`complete`)."""
        self.save_weights(phase, model, class_names, preprocessing, self.temperature(phase))
        self.tracking.phase_done(phase, self.results["phases"][phase])
        self.save_results()
        self.save_figures(redrawn)
        if not last:
            self.save_report()

    @contextlib.contextmanager
    def recording(self):
        """Training inside: status.json says interrupted or failed (with the error) when it ends early; the
        trackers close (an interrupted run's MLflow run stays RUNNING until it is resumed and completes)."""
        try:
            with recording_status(self.path if self.writes else None):
                yield
        finally:
            self.tracking.close()

    def complete(self) -> None:
        """status complete, the checkpoint deleted (every phase's weights are saved), the report written, the
        trackers given the figures and files and closed."""
        if self.writes:
            write_status(self.path, "complete")
            (self.path / CHECKPOINT_FILE).unlink(missing_ok=True)
            write_report(self.path)
            self.tracking.finish(self.path, self.results)

    # --- reading (every rank) ---

    def temperature(self, phase: str) -> float | None:
        """The calibration temperature recorded for a finished phase, or None when it was not calibrated."""
        return self.results["phases"][phase].get("calibration", {}).get("temperature")

    def finished(self, phase: str) -> bool:
        """Whether `phase` finished before the run was interrupted (its record and weights are saved)."""
        return phase in self.results.get("phases", {})

    def load_weights(self, phase: str, into: nn.Module) -> None:
        """A finished phase's saved weights, read again into its network."""
        weights = weights_file(self.path, phase)
        try:
            into.load_state_dict(load_file(str(weights)))
        except (OSError, RuntimeError, ValueError, SafetensorError) as e:  # missing, cut short, another network's
            raise UnreadableWeights(weights, phase, first_line(e)[:120]) from None


class UnreadableWeights(UserError):
    """A finished phase's weights that cannot be read again (missing, cut short, another network's): a study
    trains that network again (the same one, from its seed); any other run is started anew."""

    def __init__(self, path: Path, phase: str, reason: str):
        super().__init__(f"{path}: cannot read phase {phase}'s weights again ({reason}); start a new run")
        self.path, self.reason = path, reason


def worker_checkpoints(run_dir: Path) -> list[Path]:
    """A study trained in parallel processes checkpoints each unit's point under way in its own file
    (checkpoint-unit=N; checkpoint-seed=N before units were smaller than a seed)."""
    return sorted(Path(run_dir).glob("checkpoint-*=*.safetensors"))


def weights_entry(phase: str) -> str:
    """Where a phase's weights lie in the run folder, as results.json names them ("model"); a study's phase
    `baseA/seed=0` is the file baseA-seed=0."""
    return f"{WEIGHTS_DIR}/{phase.replace('/', '-')}.safetensors"


def weights_file(run_dir: Path, phase: str) -> Path:
    return Path(run_dir) / weights_entry(phase)


def model_file(run_dir: Path) -> Path:
    """The model a run folder offers for prediction (results.json names it)."""
    run_dir = Path(run_dir)
    if not (run_dir / RESULTS_FILE).is_file():
        raise UserError(f"{run_dir}: not a transferkit run folder (no {RESULTS_FILE}); give the folder of a run")
    model = read_results(run_dir).get("model", weights_entry("transfer"))
    if not isinstance(model, str) or PurePosixPath(model).is_absolute() or ".." in PurePosixPath(model).parts:
        raise UserError(f"{run_dir / RESULTS_FILE}: \"model\" must name a file in the run folder, such as "
                        f"{weights_entry('model')}, got {model!r:.60}; the run's weights are in {run_dir / WEIGHTS_DIR}")
    return run_dir / model


def backbone_source(run_dir: Path, option: str) -> Path:
    """The model of a finetune run folder whose backbone a new run continues from. A `transferkit run` folder is
    refused by name: its transfer model's features are the frozen weights it started from (or the seed
    network), nothing to continue from."""
    if not weights_file(run_dir, "model").is_file() and (run_dir / WEIGHTS_DIR / "transfer.json").is_file():
        raise UserError(f"{option} {run_dir}: a `transferkit run` folder, whose frozen features are the weights "
                        "it started from; give a finetune run folder, or those weights (imagenet or a file)")
    return weights_file(run_dir, "model")


def weights_source(weights: str, option: str = "--weights") -> str:
    """`--weights` as load_backbone_weights takes it: a finetune run folder stands for its model file."""
    return str(backbone_source(Path(weights), option)) if Path(weights).is_dir() else weights


def prepare_run_dir(out: Path, force: bool) -> None:
    """A new or empty folder; an existing run is pointed to --resume, anything else needs --force."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file; give a folder for the run")
    if out.is_dir() and any(out.iterdir()) and not force:
        if (out / STATUS_FILE).is_file() or results_file(out).is_file():
            raise UserError(f"--out {out}: holds a run already; continue it with --resume {out}, "
                            "or choose a new --out")
        raise UserError(f"--out {out}: folder exists and is not empty; choose a new folder, or --force to write into it")
    try:
        # --force into an earlier run's folder: its record and checkpoint go, or they would be read as this run's
        # (a checkpoint of a phase of the same name would be restored into it).
        for name in (STATUS_FILE, RESULTS_FILE, STUDY_FILE, HISTORY_FILE, CHECKPOINT_FILE):
            (out / name).unlink(missing_ok=True)
        for checkpoint in worker_checkpoints(out):
            checkpoint.unlink()
        (out / WEIGHTS_DIR).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create the run folder ({e.strerror})") from None


def folder_name(name: str) -> str:
    """`name` (a data set's, as the user spelt its path) made safe for a default folder name: letters, digits,
    '.', '_', '-' kept, anything else (a newline, a space, a slash) as '_', at most 80 characters."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "run"
    return safe[:80]


def resumable(run_dir: Path, config: dict, world_size: int = 1) -> dict:
    """The results of the run to continue; refused when its configuration or its number of processes differs."""
    if not run_dir.is_dir():
        raise UserError(f"--resume {run_dir}: no such run folder")
    status = read_status(run_dir)
    if status is None or not results_file(run_dir).is_file():
        raise UserError(f"--resume {run_dir}: not a transferkit run folder (no {STATUS_FILE} / {RESULTS_FILE})")
    if status["status"] == "complete":
        raise UserError(f"--resume {run_dir}: this run is complete already; nothing to resume")
    try:
        previous = read_results(run_dir)
    except ValueError:
        raise UserError(f"--resume {run_dir}: {results_file(run_dir).name} is damaged; start a new run") from None
    differences = config_differences(previous["config"], config)
    if differences:
        raise UserError(f"--resume {run_dir}: this run was made with another configuration ({'; '.join(differences)}); "
                        "repeat its original options or start a new run")
    before = previous.get("distributed", {}).get("world_size", 1)
    if before != world_size:  # each rank's shard and its batch order depend on the world size
        raise UserError(f"--resume {run_dir}: this run was trained by {before} process(es), now {world_size}; "
                        f"resume it with as many (torchrun --nproc-per-node ... in all {before})")
    return previous


def config_differences(saved: dict, now: dict, prefix: str = "") -> list[str]:
    """`key was A, now B` for each setting of `now` that differs from `saved` (nested keys dotted),
    settings that only change the evaluation (EVALUATION_ONLY) left out; a key `saved` predates counts as the
    value it had before the option existed (BEFORE_THE_OPTION)."""
    out = []
    for key, value in now.items():
        if key in EVALUATION_ONLY:
            continue
        old = saved.get(key, BEFORE_THE_OPTION.get(key))
        if isinstance(value, dict) and isinstance(old, dict):
            out += config_differences(old, value, f"{prefix}{key}.")
        elif old != value:
            out.append(f"{prefix}{key} was {old!r}, now {value!r}" + _repeat(key, old))
    return out


def _repeat(key: str, old: object) -> str:
    """The option that gives `key` its old value again, where it is a plain one (' (--class-weights none)');
    a value given as a command or an argument, not an option, as that (' (transferkit study shots)')."""
    plain = isinstance(old, (str, int, float)) and not isinstance(old, bool)  # flags are spelt per option
    return f" ({NOT_OPTIONS.get(key, '--' + key.replace('_', '-') + ' {}').format(old)})" if plain else ""

