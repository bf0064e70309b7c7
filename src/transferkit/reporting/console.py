"""Console output: a Keras-like progress bar per epoch, parameter summaries, the closing comparison table."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ..config import LOG_PROGRESS_SECONDS
from ..models import LayerRow, ParamCounts
from ..training import EpochRecord
from ..training.metrics import class_metrics
from .results import held_out, transfer_gain


def make_console(quiet: bool = False) -> Console:
    """The console every command prints on. Text is printed as it is: names of classes, files and folders are
    the user's data, never markup (a folder named `[bold]` or `[/x]` prints as such). Logs get wide tables."""
    return Console(quiet=quiet, highlight=False, markup=False, width=None if sys.stdout.isatty() else 120)


class ConsoleProgress:
    """One progress bar per epoch (steps, ETA, running loss and accuracy), then a line with validation. In logs
    (not a terminal) no redraws: a line every LOG_PROGRESS_SECONDS inside an epoch, then the epoch's line."""

    def __init__(self, console: Console, phase: str, every: float = LOG_PROGRESS_SECONDS, split: str = "val"):
        self.console, self.phase, self.every = console, phase, every
        self.split = split  # what validation runs on: "val", or "test" (a test split), as the epoch line names it
        self._progress: Progress | None = None
        self._task = None
        self._epoch = (0, 0, 0)  # epoch, epochs, steps
        self._since: tuple[float, int] | None = None  # (time, images) at the epoch's first step here
        self._logged = 0.0

    def epoch_started(self, epoch: int, epochs: int, steps: int) -> None:
        self._epoch, self._since = (epoch, epochs, steps), None
        if not self.console.is_terminal:  # logs and CI: a line now and then, no redraws
            return
        self._progress = Progress(
            TextColumn(f"[bold]{self.phase}[/] epoch {epoch}/{epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[metrics]}"),
            console=self.console,
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=steps, metrics="")

    def step_done(self, step: int, loss: float, accuracy: float, images: int = 0) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step, metrics=f"loss {loss:.4f} acc {accuracy:.4f}")
            return
        now = time.monotonic()
        if self._since is None:
            self._since, self._logged = (now, images), now
        elif now - self._logged >= self.every:
            self._logged = now
            epoch, epochs, steps = self._epoch
            rate = (images - self._since[1]) / max(now - self._since[0], 1e-9)
            self.console.print(f"{self.phase} epoch {epoch}/{epochs}: step {step}/{steps}, {rate:.0f} images/s - "
                               f"loss {loss:.4f} acc {accuracy:.4f}", highlight=False, soft_wrap=True)

    def epoch_done(self, record: EpochRecord, epochs: int) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        self.console.print(
            f"{self.phase} epoch {record.epoch}/{epochs} {record.seconds:.1f}s - loss {record.loss:.4f} "
            f"acc {record.accuracy:.4f} - {self.split}_loss {record.val_loss:.4f} {self.split}_acc "
            f"{record.val_accuracy:.4f}",
            highlight=False, soft_wrap=True,
        )


def planned_length(epochs: int, min_steps: int, steps_per_epoch: int) -> str:
    """'12 epochs planned (300 steps at least, 25 an epoch)', or '5 epochs as given'."""
    if min_steps == 0:
        return f"{epochs} epoch{'s' if epochs != 1 else ''} as given"
    return f"{epochs} epochs planned ({min_steps} steps at least, {steps_per_epoch} an epoch)"


def describe_stopping(record: dict) -> str:
    """A phase's `stopping` block in words: '12 epochs planned (300 steps at least, 25 an epoch), stopped at 9,
    best epoch 4 by validation loss' (the console's line and the report's)."""
    trained = record["epochs_trained"]
    done = f"stopped at {trained} (patience {record['patience']})" if record["reason"] == "patience" else f"trained {trained}"
    if record["best_epoch"] is not None:
        kept = f"best epoch {record['best_epoch']} by validation loss"
    else:
        kept = record["reason"] if ":" in record["reason"] else "last epoch kept"
    return f"{planned_length(record['epochs_planned'], record['min_steps'], record['steps_per_epoch'])}, {done}, {kept}"


def print_summary(console: Console, title: str, rows: list[LayerRow], counts: ParamCounts) -> None:
    """Keras' model.summary(): a layer table, then total / trainable / non-trainable parameters."""
    table = Table(title=title, title_justify="left", show_lines=False)
    table.add_column("Layer (type)")
    table.add_column("Output shape")
    table.add_column("Param #", justify="right")
    table.add_column("Trainable")
    for r in rows:
        table.add_row(f"{r.name} ({r.kind})", str((None, *r.output_shape)), f"{r.params:,}",
                      "" if r.params == 0 else ("yes" if r.trainable else "no"))
    console.print(table)
    console.print(f"Total params: {counts.total:,}\nTrainable params: {counts.trainable:,}\n"
                  f"Non-trainable params: {counts.non_trainable:,}", highlight=False)


def comparison_table(phases: dict[str, dict]) -> Table:
    """Per phase: training images, validation (or test) accuracy, balanced accuracy and macro-F1, loss,
    training time, trainable parameters. "test" only where the phases were measured on a test split."""
    table = Table(title="Results", title_justify="left")
    split = split_label(phases)
    for col in ("phase", "classes", "images", f"{split} acc", "balanced", "macro F1", f"{split} loss", "time",
                "trainable"):
        table.add_column(col, justify="left" if col in ("phase", "classes") else "right", no_wrap=True)
    for name, p in phases.items():
        metrics = _metrics(p)
        table.add_row(name, ",".join(p["classes"]), str(p["train_samples"]), f"{held_out(p, 'accuracy'):.4f}",
                      *(f"{metrics[k]:.4f}" if k in metrics else "-" for k in ("balanced_accuracy", "macro_f1")),
                      f"{held_out(p, 'loss'):.4f}", f"{p['train_seconds']:.1f} s", f"{p['params']['trainable']:,}")
    return table


def split_label(phases: dict[str, dict]) -> str:
    """'test' where every phase says it was measured on a test split, else 'val'."""
    return "test" if phases and all(p.get("validated_on") == "test" for p in phases.values()) else "val"


def class_table(phase: str, p: dict) -> Table | None:
    """Per class of a phase: precision, recall, F1 and the images it was measured on."""
    metrics = _metrics(p)
    if not metrics:
        return None
    table = Table(title=f"Per class ({phase})", title_justify="left")
    for col in ("class", "precision", "recall", "F1", "images"):
        table.add_column(col, justify="left" if col == "class" else "right", no_wrap=True)
    per_class = metrics["per_class"]
    for i, name in enumerate(p["classes"]):
        table.add_row(name, *(f"{per_class[k][i]:.4f}" for k in ("precision", "recall", "f1")),
                      str(per_class["support"][i]))
    return table


def _metrics(p: dict) -> dict:
    """A phase's per-class metrics, computed from its confusion matrix where a run recorded none (older runs)."""
    if "metrics" in p:
        return p["metrics"]
    matrix = p.get("confusion_matrix")
    return class_metrics(matrix) if matrix is not None and len(matrix) == len(p["classes"]) else {}


def transfer_verdict(phases: dict[str, dict]) -> str | None:
    """One line: what transfer bought over scratch in accuracy and time."""
    gain = transfer_gain(phases)
    if gain is None:
        return None
    t, s = phases["transfer"], phases["scratch"]
    return (f"transfer vs scratch on {','.join(t['classes'])}: accuracy {held_out(t, 'accuracy'):.4f} vs "
            f"{held_out(s, 'accuracy'):.4f} ({gain.points:+.2f} points), time {t['train_seconds']:.1f} s vs "
            f"{s['train_seconds']:.1f} s ({gain.pace})")


def print_closing(console: Console, phases: dict[str, dict], summary: str, run_dir: Path | None,
                  then: str = "", model: str | None = None) -> None:
    """The end of a run: the results table, the per-class table of the phase whose model the run offers
    (`model`; default the last phase), its one-line summary, where its folder and report are."""
    console.print(comparison_table(phases))
    shown = model if model in phases else list(phases)[-1]
    per_class = class_table(shown, phases[shown])
    if per_class is not None:
        console.print(per_class)
    console.print(summary, soft_wrap=True)
    if run_dir is not None:
        console.print(f"run folder: {run_dir}\nreport: {run_dir / 'report.html'}" + (f"\n{then}" if then else ""))


@contextlib.contextmanager
def feature_pass_progress(console: Console, total: int) -> Iterator[Callable[[int], None]]:
    """A bar over the backbone's pass (minutes on a CPU); in logs a line every 20%. `advance(done)` takes the
    images passed so far, all data sets together."""
    last_logged = [0]

    def advance(done: int) -> None:
        if progress is not None:
            progress.update(task, completed=done)
        elif done * 5 // total > last_logged[0]:
            last_logged[0] = done * 5 // total
            console.print(f"feature pass: {done}/{total} images")

    progress = task = None
    if console.is_terminal:
        progress = Progress(TextColumn("[bold]feature pass[/]"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
                            transient=True)
        task = progress.add_task("features", total=total)
        progress.start()
    try:
        yield advance
    finally:
        if progress is not None:
            progress.stop()
