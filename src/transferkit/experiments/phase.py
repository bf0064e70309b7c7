"""A phase: one network trained for some epochs and recorded. Every experiment is a list of phases; this module
trains one, or reads it again when it finished before an interruption."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..config import Stopping
from ..models import LayerRow, count_params
from ..reporting import PhaseResult
from ..reporting.console import ConsoleProgress, describe_stopping, planned_length
from ..training import FitHooks, FitPlan, FitState, fit
from ..training.batches import ShuffledBatches
from ..training.class_weights import ClassWeights
from ..training.distributed import gather_everywhere, gather_to_main
from ..training.metrics import calibrate
from ..training.predictions import Mistakes, confusion_over_ranks, find_mistakes, logits_and_labels
from .run_folder import RunFolder
from .runtime import Runtime


@dataclass
class PhaseInputs:
    """What `fit` trains and validates: the whole network, or its head on cached features, and its inputs."""

    trained: nn.Module
    batches: ShuffledBatches
    val_x: torch.Tensor | Iterable  # a tensor (labels `val_y`), or a stream of (x, y) batches (`val_y` None)
    val_y: torch.Tensor | None
    # Positions in val_x -> indices in the whole validation set (a rank's share, a stream's readable files).
    index_of: Callable[[np.ndarray], np.ndarray] = np.asarray
    feature_seconds: float | None = None  # the frozen features' pass, part of the phase's time
    feature_pass: dict | None = None  # a pretrained backbone's pass, for results.json: images, seconds, store


@dataclass
class Phase:
    """One phase as an experiment describes it. `inputs()` is called only when the phase trains (a frozen
    feature pass in it counts toward the phase's time); a phase that finished before is read again instead."""

    name: str
    model: nn.Module  # the whole network: its weights are saved as weights/<name>.safetensors
    optimizer: torch.optim.Optimizer
    inputs: Callable[[], PhaseInputs]
    epochs: int
    lr_schedule: str
    classes: list[str]
    layers: list[LayerRow]  # the parameter summary, as trained
    val_images: Callable[[np.ndarray], np.ndarray]  # validation images by index, as people see them
    samples: Callable[[], tuple[int, int]]  # training and validation images used (known after a stream's pass)
    weights: bool = True  # saved with the run, so read again when the phase finished before (a study's points: no)
    class_weights: ClassWeights | None = None  # the training loss's (None: unweighted, nothing said)
    # Fit a temperature on the validation images after training, naming them so ("validation"); None: no
    # calibration (where the images validated on are a test split, which must fit nothing).
    calibration: str | None = None
    # How long it trains (config.Stopping); None: exactly `epochs`, the last kept (a study's points).
    stopping: Stopping | None = None
    # What it validates on: "val" (held out from training) or "test", a test split, which must select nothing:
    # no early stopping and no best epoch on it. None: not said (a study's points, tested on the test split).
    validation_split: str | None = None


def train_phase(phase: Phase, run: RunFolder, runtime: Runtime) -> tuple[PhaseResult, Mistakes | None]:
    """Train `phase` with a checkpoint after every epoch and return its record and mistakes; a phase recorded
    as finished is read again instead: its weights into `phase.model`, its examples for the report."""
    if run.finished(phase.name):
        if phase.weights:
            run.load_weights(phase.name, into=phase.model)
        result = PhaseResult.from_dict(phase.name, run.results["phases"][phase.name])
        runtime.console.print(f"phase {phase.name}: finished before, {accuracy_name(phase.validation_split)} "
                              f"{result.accuracy:.4f}")
        mistakes = None if result.misclassified is None else Mistakes.from_examples(
            result.misclassified, result.confusion_matrix, phase.val_images, phase.classes)
        return result, mistakes
    run.status("running", phase=phase.name)
    if phase.class_weights is not None:
        runtime.console.print(f"phase {phase.name}: class weights {phase.class_weights.reason}")
    start = time.perf_counter()
    inputs = phase.inputs()
    checkpoints = run.checkpoints
    state, before = (checkpoints.restore(phase.name, phase.model, phase.optimizer, inputs.batches, runtime.console)
                     if checkpoints is not None else (None, 0.0))
    state = state if state is not None else FitState()

    def checkpoint(fit_state: FitState) -> None:
        if checkpoints is not None:
            checkpoints.save(phase.name, phase.model, phase.optimizer, inputs.batches, fit_state,
                             before + time.perf_counter() - start)

    plan = StopPlan.of(phase, len(inputs.batches), resumed_without=not state.tracks_best)
    if plan.stopping is not None:
        runtime.console.print(plan.describe_start(phase.name))
    split = "test" if phase.validation_split == "test" else "val"
    weights = phase.class_weights and phase.class_weights.tensor(runtime.device)
    fit_plan = FitPlan(plan.epochs, runtime.eval_batch_size, runtime.autocast_dtype, phase.lr_schedule, weights,
                       plan.patience, phase.name)
    progress = run.tracking.listener(phase.name, ConsoleProgress(runtime.console, phase.name, split=split),
                                     phase.optimizer, runtime.ranks.world_size)
    hooks = FitHooks(progress, checkpoint, runtime.should_stop)
    history = fit(runtime.ranks.wrap(inputs.trained), phase.optimizer, inputs.batches, inputs.val_x, inputs.val_y,
                  fit_plan, state=state, hooks=hooks)
    seconds = before + time.perf_counter() - start
    stopping = plan.record(state)
    if stopping is not None:
        runtime.console.print(f"{phase.name}: {describe_stopping(stopping)}")
    kept = history[stopping["kept_epoch"] - 1] if stopping is not None else history[-1]
    # On what validation ran on (cached features where there are, this rank's share of the images), so no
    # second pass through a backbone; the confusion matrix is summed over the ranks.
    logits, truth = logits_and_labels(inputs.trained, inputs.val_x, inputs.val_y, runtime.eval_batch_size,
                                      runtime.autocast_dtype)
    predicted = logits.argmax(1) if len(logits) else np.zeros(0, dtype=np.int64)
    mistakes = find_mistakes(predicted, truth, phase.val_images, phase.classes, index_of=inputs.index_of)
    calibration = None
    if phase.calibration is not None:  # on every rank's logits, so every rank holds the same temperature
        shares = [share for share in gather_everywhere((logits, truth)) if len(share[1])]
        if shares:  # none when no validation image could be read (a stream's files all failed to decode)
            calibration = calibrate(np.concatenate([z for z, _ in shares]), np.concatenate([y for _, y in shares]),
                                    phase.calibration)
            runtime.console.print(f"phase {phase.name}: {calibration.describe()}")
    train_samples, held_out_samples = phase.samples()
    if inputs.feature_pass is not None:
        run.results["feature_pass"] = inputs.feature_pass
    run.results["distributed"].setdefault("steps_per_rank", {})[phase.name] = gather_to_main(state.steps)
    return PhaseResult(
        name=phase.name, classes=list(phase.classes), train_samples=train_samples,
        held_out_samples=held_out_samples, epochs=len(history), train_seconds=seconds, loss=kept.val_loss,
        accuracy=kept.val_accuracy, params=count_params(phase.model), history=history,
        feature_cache_seconds=inputs.feature_seconds, layers=phase.layers,
        confusion_matrix=confusion_over_ranks(mistakes.confusion).tolist(), misclassified=mistakes.examples(),
        class_weights=phase.class_weights and phase.class_weights.to_dict(),
        calibration=calibration and calibration.to_dict(), stopping=stopping,
        validated_on=phase.validation_split,
    ), mistakes


def accuracy_name(split: str | None) -> str:
    """What the accuracy a phase reports is called: on a validation split, never 'test'."""
    return "validation accuracy" if split == "val" else "test accuracy"


@dataclass(frozen=True)
class StopPlan:
    """A phase's training length, once its steps per epoch are known: the epochs planned, and whether the best
    epoch (by validation loss) is kept and with what patience."""

    stopping: Stopping | None
    steps_per_epoch: int
    epochs: int
    patience: int  # 0: every planned epoch trains and the last is kept
    note: str | None = None  # why early stopping cannot apply here, where it was asked for

    @classmethod
    def of(cls, phase: Phase, steps_per_epoch: int, resumed_without: bool = False) -> StopPlan:
        """`resumed_without`: the phase continues from a checkpoint written before early stopping, which kept
        no best epoch: it goes on as it started, to its epochs, the last kept."""
        s = phase.stopping
        if s is None:
            return cls(None, steps_per_epoch, phase.epochs, 0)
        note = None
        if phase.validation_split == "test":  # choosing an epoch on it would make its accuracy optimistic
            note = "validated on the test split: last epoch kept"
        elif resumed_without:
            note = "resumed from a checkpoint made before early stopping: last epoch kept"
        return cls(s, steps_per_epoch, s.planned_epochs(steps_per_epoch), 0 if note else s.patience_epochs(steps_per_epoch),
                   note)

    def describe_start(self, name: str) -> str:
        length = planned_length(self.epochs, self.stopping.min_steps, self.steps_per_epoch)
        if self.note is not None:
            return f"{name}: {length}; {self.note} (no early stopping)"
        stop = f", stopping after {self.patience} epochs without a lower validation loss" if self.patience else ""
        if self.patience >= self.epochs:  # the patience (at least patience_steps) outlasts a short plan
            stop = (f", the best epoch by validation loss kept (a patience of {self.patience} epochs is longer than "
                    "the plan: every planned epoch trains)")
        return f"{name}: {length}{stop}"

    def record(self, state: FitState) -> dict | None:
        """results.json's `stopping` block of the phase, once it trained."""
        if self.stopping is None:
            return None
        if self.note is not None:
            reason = self.note
        elif state.stopped:
            reason = "patience"
        else:
            reason = "given" if self.stopping.given else "epochs"
        best = state.best_epoch if self.patience and state.best_epoch else None
        trained = len(state.history)
        return {"epochs_planned": self.epochs, "epochs_trained": trained, "best_epoch": best,
                "kept_epoch": best or trained, "reason": reason, "min_steps": self.stopping.min_steps,
                "patience": self.patience, "steps_per_epoch": self.steps_per_epoch}
