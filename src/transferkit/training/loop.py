"""One training loop: train_one_epoch, evaluate, and fit that records a history per epoch and can stop
between steps and continue from a checkpoint."""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Protocol

import torch
from torch import nn

from ..errors import Interrupted, UserError
from .batches import ShuffledBatches, batches_of
from .distributed import broadcast_from_main, sum_over_ranks, unwrap
from .freezing import train_mode


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    loss: float
    accuracy: float
    val_loss: float
    val_accuracy: float
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FitState:
    """Where fit is: the epoch under way, what finished epochs recorded, the running sums of this epoch."""

    epoch: int = 1
    history: list[EpochRecord] = field(default_factory=list)
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    steps: int = 0  # optimizer steps this process took in the fit, all epochs
    epoch_seconds: float = 0.0  # spent in this epoch before an interruption
    loss_scale: dict | None = None  # fp16's GradScaler state: a resumed fit scales as the uninterrupted one did
    # Early stopping (fit's patience): the epoch of the lowest validation loss so far, that loss, the epochs
    # since, whether the patience ran out, and that epoch's weights (tensors, saved beside the model's).
    best_epoch: int = 0
    best_loss: float | None = None
    since_best: int = 0
    stopped: bool = False
    tracks_best: bool = True  # False: continued from a checkpoint written before early stopping existed
    best_weights: dict[str, torch.Tensor] | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        """The JSON part (best_weights are tensors, which the checkpoint stores as such)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "best_weights"}
        return {**d, "history": [r.to_dict() for r in self.history]}

    @classmethod
    def from_dict(cls, d: dict, best_weights: dict[str, torch.Tensor] | None = None) -> FitState:
        """A fit state from to_dict's JSON; a checkpoint written before early stopping lacks its fields, which
        keep their defaults (nothing kept yet)."""
        return cls(**{"tracks_best": "best_epoch" in d, **d, "history": [EpochRecord(**r) for r in d["history"]]},
                   best_weights=best_weights)


class ProgressListener(Protocol):
    """What the loop tells the outside world; the console progress bar implements it."""

    def epoch_started(self, epoch: int, epochs: int, steps: int) -> None: ...
    def step_done(self, step: int, loss: float, accuracy: float, images: int = 0) -> None: ...
    def epoch_done(self, record: EpochRecord, epochs: int) -> None: ...


class SilentProgress:
    def epoch_started(self, epoch: int, epochs: int, steps: int) -> None:
        pass

    def step_done(self, step: int, loss: float, accuracy: float, images: int = 0) -> None:
        pass

    def epoch_done(self, record: EpochRecord, epochs: int) -> None:
        pass


def autocast(dtype: torch.dtype | None, device_type: str = "cpu"):
    """Autocast to `dtype` (bf16 on a CPU, bf16 or fp16 on a GPU) when one is given, else nothing."""
    return torch.autocast(device_type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def set_cosine_lr(optimizer: torch.optim.Optimizer, step: int, total: int) -> None:
    """Each group's rate at `step` of `total` on a cosine from its initial rate down to 0.

    A function of the step alone (the initial rate is kept in the group, so in the optimizer's state dict):
    a resumed fit continues on the same curve with no scheduler state of its own.
    """
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
        group["lr"] = group["initial_lr"] * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))


def train_one_epoch(model: nn.Module, batches: ShuffledBatches, optimizer: torch.optim.Optimizer,
                    autocast_dtype: torch.dtype | None = None, progress: ProgressListener | None = None,
                    state: FitState | None = None, should_stop: Callable[[], bool] | None = None,
                    scaler: torch.amp.GradScaler | None = None,
                    set_lr: Callable[[int], None] | None = None,
                    class_weights: torch.Tensor | None = None) -> tuple[float, float]:
    """Train over the epoch's remaining batches; returns its mean loss and accuracy (as Keras reports them),
    over all ranks in a distributed run.

    Sums accumulate in `state`, so an epoch stopped by `should_stop` (checked after each step) can continue.
    `scaler` scales the loss for fp16, whose small gradients would otherwise underflow. `set_lr(step)` sets
    the rate before each step (a schedule), `step` counting the fit's steps so far. `class_weights` weigh each
    class's images in the loss (see class_weights.py); the loss reported is the one optimised.
    """
    state = state if state is not None else FitState()
    train_mode(model)
    for x, y in batches:
        if set_lr is not None:
            set_lr(state.steps)
        optimizer.zero_grad(set_to_none=True)
        with autocast(autocast_dtype, batches.device.type):
            logits = model(x)
        loss = nn.functional.cross_entropy(logits.float(), y, weight=class_weights)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        with torch.no_grad():
            value = loss.item()
            check_finite_loss(value, f"training loss in epoch {state.epoch}, step {batches.position}", optimizer)
            state.loss_sum += value * len(y)
            state.correct += int((logits.argmax(1) == y).sum())
        state.seen += len(y)
        state.steps += 1
        if progress is not None:
            progress.step_done(batches.position, state.loss_sum / state.seen, state.correct / state.seen, state.seen)
        if should_stop is not None and should_stop():
            break
    loss_sum, correct, seen = sum_over_ranks([state.loss_sum, state.correct, state.seen])
    return loss_sum / max(seen, 1), correct / max(seen, 1)


def check_finite_loss(value: float, what: str, optimizer: torch.optim.Optimizer) -> None:
    """A loss of nan or inf means training diverged: every later step would be wasted, the results meaningless."""
    if not math.isfinite(value):
        rate = optimizer.param_groups[0].get("initial_lr", optimizer.param_groups[0]["lr"])
        raise Diverged(f"the {what} became {value}: training diverged at learning rate {rate:g}; "
                       "try a smaller --lr")


class Diverged(UserError):
    """A loss became nan or inf; the message says where and suggests a smaller --lr."""


def inference_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` in channels-last layout.

    Forward-only convolutions ran about 1.5x faster channels-last on the CPUs measured (bench/), while
    training steps ran faster in NCHW; a copy gives inference the fast layout without touching the
    parameters the optimizer holds. The copy costs a few milliseconds.
    """
    return copy.deepcopy(model).eval().to(memory_format=torch.channels_last)


def channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor | Iterable, y: torch.Tensor | None, batch_size: int = 128,
             autocast_dtype: torch.dtype | None = None,
             device: torch.device = torch.device("cpu")) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over (x, y), in eval mode, channels-last; `x` may instead be an
    iterable of (x, y) batches (images streamed from disk), with `y` None.

    In a distributed run each rank passes its evaluation shard and all get the figures of the whole set.
    """
    model = inference_copy(model)
    total_loss, correct, n = 0.0, 0, 0
    for xb, yb in batches_of(x, y, batch_size, device):
        with autocast(autocast_dtype, device.type):
            logits = model(channels_last(xb))
        total_loss += nn.functional.cross_entropy(logits.float(), yb, reduction="sum").item()
        correct += (logits.argmax(1) == yb).sum().item()
        n += len(yb)
    total_loss, correct, n = sum_over_ranks([total_loss, correct, n])
    return total_loss / n, correct / n


@dataclass(frozen=True)
class FitPlan:
    """How a fit trains: `epochs` (at most: `patience` may end it sooner), the validation batch, the autocast
    dtype, the rate's schedule, the loss's class weights, and the phase it names in its errors.

    `patience` > 0: early stopping. The weights of the epoch with the lowest validation loss are kept (in the
    FitState) and put back into the model at the end, and the fit ends once `patience` epochs in a row did not
    improve on it (`state.stopped`). 0: every epoch trains and the last one's weights stay. `lr_schedule`:
    constant, or cosine (the rate falls from the optimizer's to 0 over the fit's steps). `class_weights` weigh
    the training loss.
    """

    epochs: int
    eval_batch_size: int = 128
    autocast_dtype: torch.dtype | None = None
    lr_schedule: str = "constant"
    class_weights: torch.Tensor | None = None
    patience: int = 0
    phase: str | None = None


@dataclass(frozen=True)
class FitHooks:
    """Who a fit tells, and who may stop it: `progress` hears every step and epoch; `on_checkpoint(state)`
    runs after every epoch and when `should_stop()` turns true between steps, after which fit raises
    Interrupted."""

    progress: ProgressListener | None = None
    on_checkpoint: Callable[[FitState], None] | None = None
    should_stop: Callable[[], bool] | None = None


def fit(model: nn.Module, optimizer: torch.optim.Optimizer, train: ShuffledBatches,
        val_x: torch.Tensor | Iterable, val_y: torch.Tensor | None, plan: FitPlan, *,
        state: FitState | None = None, hooks: FitHooks | None = None) -> list[EpochRecord]:
    """Train as `plan` says, validating after each epoch; one EpochRecord per epoch.

    `train`: TensorBatches or StreamBatches; `val_x` / `val_y` as `evaluate` takes them. `state` continues an
    interrupted fit. `model` may be wrapped in DistributedDataParallel; validation runs on the module inside.
    A loss that becomes nan or inf ends the fit with Diverged (a UserError naming the plan's phase, the epoch
    and the step).
    """
    try:
        return _fit(model, optimizer, train, val_x, val_y, plan, state if state is not None else FitState(),
                    hooks or FitHooks())
    except Diverged as e:
        raise Diverged(f"phase {plan.phase}: {e}" if plan.phase else str(e)) from None


def _fit(model: nn.Module, optimizer: torch.optim.Optimizer, train: ShuffledBatches, val_x, val_y,
         plan: FitPlan, state: FitState, hooks: FitHooks) -> list[EpochRecord]:
    progress, should_stop, dtype = hooks.progress or SilentProgress(), hooks.should_stop, plan.autocast_dtype
    # fp16 needs loss scaling; the scale travels in the checkpoints with the rest of the fit's state.
    scaler = torch.amp.GradScaler(train.device.type) if dtype == torch.float16 else None
    if scaler is not None and state.loss_scale is not None:
        scaler.load_state_dict(state.loss_scale)

    def save(fit_state: FitState) -> None:
        if scaler is not None:
            fit_state.loss_scale = scaler.state_dict()
        if hooks.on_checkpoint is not None:
            hooks.on_checkpoint(fit_state)

    epochs, total_steps = plan.epochs, plan.epochs * len(train)
    set_lr = ((lambda step: set_cosine_lr(optimizer, step, max(total_steps, 1))) if plan.lr_schedule == "cosine"
              else None)
    while state.epoch <= epochs and not state.stopped:
        start = time.perf_counter()
        progress.epoch_started(state.epoch, epochs, len(train))
        loss, acc = train_one_epoch(model, train, optimizer, dtype, progress, state, should_stop, scaler,
                                    set_lr, plan.class_weights)
        if should_stop is not None and should_stop():
            state.epoch_seconds += time.perf_counter() - start
            save(state)
            raise Interrupted(f"stopped in epoch {state.epoch} after {train.position} of {len(train)} steps")
        val_loss, val_acc = evaluate(unwrap(model), val_x, val_y, plan.eval_batch_size, dtype, train.device)
        check_finite_loss(val_loss, f"validation loss after epoch {state.epoch}", optimizer)
        record = EpochRecord(state.epoch, loss, acc, val_loss, val_acc,
                             state.epoch_seconds + time.perf_counter() - start)
        state.history.append(record)
        progress.epoch_done(record, epochs)
        if plan.patience:
            track_best(state, unwrap(model), val_loss, plan.patience)
        state.epoch, state.loss_sum, state.correct, state.seen, state.epoch_seconds = state.epoch + 1, 0.0, 0, 0, 0.0
        save(state)
    if plan.patience and state.best_weights is not None:
        unwrap(model).load_state_dict(state.best_weights)
    return state.history


def track_best(state: FitState, model: nn.Module, val_loss: float, patience: int) -> None:
    """After an epoch: keep its weights when its validation loss is the lowest yet, else count it; the
    patience runs out after `patience` epochs in a row without improvement.

    Rank 0 decides and every rank follows: the loss is all-reduced already, but one decision broadcast keeps
    every rank on the same epoch count even if their sums were to differ in the last bit.
    """
    improved = broadcast_from_main(state.best_loss is None or val_loss < state.best_loss)
    if improved:
        state.best_epoch, state.best_loss, state.since_best = state.epoch, val_loss, 0
        state.best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    else:
        state.since_best += 1
    state.stopped = state.since_best >= patience
