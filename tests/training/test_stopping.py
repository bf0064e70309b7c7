"""The training-length rule (config.Stopping, fit's patience): the least steps raise the epochs, the patience
stops a fit whose validation loss no longer falls, and the best epoch's weights are the ones left."""

import pytest
import torch
from torch import nn

from transferkit import UserError
from transferkit.config import HEAD_MIN_STEPS, STUDY_MIN_STEPS, Stopping, TrainConfig, phase_stopping
from transferkit.experiments.phase import Phase, StopPlan
from transferkit.experiments.run_folder import config_differences
from transferkit.reporting.console import describe_stopping
from transferkit.training import FitHooks, FitPlan, FitState, TensorBatches, evaluate, fit
from transferkit.training.checkpoint import Checkpointer


def test_min_steps_raise_the_epochs_to_the_training_sets_size():
    rule = Stopping(epochs=5, min_steps=300, patience=5)
    assert rule.planned_epochs(25) == 12  # digits' source phase: 25 steps an epoch, 300 steps at least
    assert rule.planned_epochs(299) == 5  # 5 epochs of 299 steps are more than 300: the epochs stay
    assert rule.planned_epochs(1) == 300  # a one-batch training set
    assert Stopping(epochs=5, min_steps=0, patience=0).planned_epochs(1) == 5


def test_each_default_is_written_once():
    assert STUDY_MIN_STEPS == Stopping.min_steps == 300 and Stopping.patience == 5 and Stopping.epochs == 5
    assert HEAD_MIN_STEPS > Stopping.min_steps
    assert TrainConfig().stopping() == Stopping(5, 300, 5)
    assert TrainConfig().stopping(HEAD_MIN_STEPS) == Stopping(5, HEAD_MIN_STEPS, 5)
    assert phase_stopping(3, 0, None) == Stopping(3, 0, 5)


def test_epochs_given_train_exactly_that_unless_min_steps_or_patience_are_given_too():
    assert Stopping.given_epochs({"epochs": None, "lr": None}) == {}
    assert Stopping.given_epochs({"epochs": 3}) == {"epochs": 3, "min_steps": 0, "patience": 0}
    assert Stopping.given_epochs({"epochs": 3, "min_steps": 100}) == {"epochs": 3, "min_steps": 100, "patience": 0}
    assert Stopping.given_epochs({"epochs": 3, "patience": 2}) == {"epochs": 3, "min_steps": 0, "patience": 2}
    assert TrainConfig(**Stopping.given_epochs({"epochs": 3})).stopping().given
    with pytest.raises(UserError, match="--patience must be 0 or more"):
        TrainConfig(patience=-1)


def _overfitting():
    """Random labels on random inputs, separate ones for validation: the validation loss falls a little, then rises
    as the model learns the training labels by heart."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 16, generator=g), torch.randint(0, 4, (64,), generator=g)
    val_x, val_y = torch.randn(64, 16, generator=g), torch.randint(0, 4, (64,), generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
    return model, torch.optim.Adam(model.parameters(), lr=0.01), TensorBatches(x, y, 16, seed=0), val_x, val_y


def test_patience_stops_and_the_best_epochs_weights_are_restored():
    model, optimizer, batches, val_x, val_y = _overfitting()
    state = FitState()
    history = fit(model, optimizer, batches, val_x, val_y, FitPlan(epochs=40, patience=3), state=state)
    losses = [r.val_loss for r in history]
    best = losses.index(min(losses)) + 1
    assert state.stopped and len(history) == best + 3 < 40  # three epochs in a row above the best, then stop
    assert state.best_epoch == best
    # The model left (and saved) is the best epoch's: it gives that epoch's validation loss again, exactly.
    assert evaluate(model, val_x, val_y)[0] == losses[best - 1]
    assert evaluate(model, val_x, val_y)[0] < losses[-1]


def test_without_patience_every_epoch_trains_and_the_last_is_kept():
    model, optimizer, batches, val_x, val_y = _overfitting()
    history = fit(model, optimizer, batches, val_x, val_y, FitPlan(epochs=12, patience=0))
    assert len(history) == 12
    assert evaluate(model, val_x, val_y)[0] == history[-1].val_loss


def test_the_checkpoint_keeps_the_best_weights_and_the_count(tmp_path):
    model, optimizer, batches, val_x, val_y = _overfitting()
    saved = {}

    def checkpoint(state):
        if state.epoch == 6:  # after epoch 5, as an interruption would find it
            Checkpointer(tmp_path / "c.safetensors").save("p", model, optimizer, batches, state, 1.0)
            saved.update(state.to_dict())

    fit(model, optimizer, batches, val_x, val_y, FitPlan(epochs=5, patience=50), hooks=FitHooks(on_checkpoint=checkpoint))
    again, optimizer2, batches2, _, _ = _overfitting()
    state, _ = Checkpointer(tmp_path / "c.safetensors").restore("p", again, optimizer2, batches2)
    assert state.to_dict() == saved and state.tracks_best
    assert state.best_weights.keys() == model.state_dict().keys()
    again.load_state_dict(state.best_weights)
    assert evaluate(again, val_x, val_y)[0] == state.best_loss


def test_a_checkpoint_from_before_early_stopping_goes_on_as_it_started():
    old = FitState(epoch=2).to_dict()
    for key in ("best_epoch", "best_loss", "since_best", "stopped", "tracks_best"):
        del old[key]
    state = FitState.from_dict(old)
    assert not state.tracks_best and state.best_epoch == 0
    phase = Phase("p", None, None, None, 5, "constant", [], [], None, None, stopping=Stopping(5, 300, 5),
                  validation_split="val")
    plan = StopPlan.of(phase, 10, resumed_without=not state.tracks_best)
    assert plan.epochs == 30 and plan.patience == 0 and "before early stopping" in plan.note


def test_a_run_folder_from_before_the_options_is_resumed_only_as_it_ran():
    # Saved before --min-steps and --patience: it trained its epochs exactly; the refusal names both options.
    differences = config_differences({"train": {"epochs": 5}}, {"train": {"epochs": 5, "min_steps": None, "patience": None}})
    assert differences == ["train.min_steps was 0, now None (--min-steps 0)",
                           "train.patience was 0, now None (--patience 0)"]
    assert config_differences({"train": {"epochs": 5}}, {"train": {"epochs": 5, "min_steps": 0, "patience": 0}}) == []


@pytest.mark.parametrize("split, reason, kept", [("val", "patience", 7), ("test", "validated on the test split", 10)])
def test_the_test_split_chooses_nothing(split, reason, kept):
    phase = Phase("p", None, None, None, 5, "constant", [], [], None, None, stopping=Stopping(5, 100, 3),
                  validation_split=split)
    plan = StopPlan.of(phase, 10)
    assert plan.epochs == 10
    state = FitState(history=[None] * 10, best_epoch=7, stopped=True) if split == "val" else FitState(
        history=[None] * 10, best_epoch=7)
    record = plan.record(state)
    assert record["reason"].startswith(reason) and record["kept_epoch"] == kept
    assert (record["best_epoch"] is None) == (split == "test")
    line = describe_stopping(record)
    assert line.startswith("10 epochs planned (100 steps at least, 10 an epoch)")
    assert ("last epoch kept" in line) == (split == "test")


def test_a_patience_longer_than_the_plan_is_said_so():
    # 1 step an epoch: 300 epochs planned, and a patience of 500 steps is 500 epochs, which never runs out.
    s = Stopping()
    plan = StopPlan(s, 1, s.planned_epochs(1), s.patience_epochs(1))
    line = plan.describe_start("source")
    assert line.startswith("source: 300 epochs planned") and "stopping after" not in line
    assert "a patience of 500 epochs is longer than the plan: every planned epoch trains" in line
    short = StopPlan(s, 32, s.planned_epochs(32), s.patience_epochs(32))  # 10 epochs planned, patience 16
    assert "longer than the plan" in short.describe_start("frozen")
    long = StopPlan(Stopping(epochs=100), 32, 100, Stopping(epochs=100).patience_epochs(32))
    assert f"stopping after {long.patience} epochs without a lower validation loss" in long.describe_start("x")
