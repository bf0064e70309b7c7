"""Progress inside an epoch in logs (stdout not a terminal): a line now and then, with steps and images/s."""

import io

import torch
from rich.console import Console
from torch import nn

from transferkit.reporting.console import ConsoleProgress
from transferkit.training import FitHooks, FitPlan, TensorBatches, fit


def _log(every: float) -> str:
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=120)
    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    model = nn.Linear(4, 2)
    fit(model, torch.optim.SGD(model.parameters(), lr=0.1), TensorBatches(x, y, 16, seed=0), x, y, FitPlan(epochs=2),
        hooks=FitHooks(progress=ConsoleProgress(console, "source", every=every)))
    return out.getvalue()


def test_logs_get_progress_lines_inside_an_epoch():
    lines = _log(every=0.0).splitlines()
    inside = [line for line in lines if "images/s" in line]
    # Each epoch's first step starts the clock; every later one is past the (zero) interval here.
    assert len(inside) == 2 * 3
    assert inside[0].startswith("source epoch 1/2: step 2/4, ") and inside[-1].startswith("source epoch 2/2: step 4/4, ")
    assert sum("val_loss" in line for line in lines) == 2


def test_short_epochs_print_only_their_line():
    assert "images/s" not in _log(every=60.0)


def test_the_results_table_says_test_only_for_a_test_split():
    from transferkit.reporting.console import comparison_table

    phase = {"classes": ["a"], "train_samples": 1, "test_accuracy": 1.0, "test_loss": 0.0, "train_seconds": 1.0,
             "params": {"trainable": 1, "total": 1, "non_trainable": 0}}

    def header(split):
        out = io.StringIO()
        Console(file=out, width=200).print(comparison_table({"p": {**phase, "validated_on": split}}))
        return out.getvalue()

    assert "val acc" in header("val") and "test" not in header("val")
    assert "test acc" in header("test") and "val acc" not in header("test")
