"""The baseline: a plain, eager PyTorch port of the Keras seed script (mnist_transfer_cnn), as a user would write it.

DataLoader over a TensorDataset, nn.Dropout, NCHW, torch.optim.Adadelta with its default implementation,
frozen layers recomputed every epoch, validation at batch 128 (Keras' default). Written for the benchmark only.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def seed_model(num_classes: int) -> tuple[nn.Sequential, nn.Sequential, nn.Sequential]:
    features = nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25),
        nn.Flatten())
    classifier = nn.Sequential(nn.Linear(4608, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, num_classes))
    model = nn.Sequential(features, classifier)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return model, features, classifier


def to_tensors(x: np.ndarray, y: np.ndarray) -> TensorDataset:
    return TensorDataset(torch.from_numpy(x).float().div(255).unsqueeze(1), torch.from_numpy(y).long())


def train_phase(model: nn.Module, train: TensorDataset, test: TensorDataset, epochs: int = 5,
                bf16: bool = False) -> dict:
    """Keras' model.fit(..., validation_data=test) followed by evaluate; returns seconds and test metrics."""
    optimizer = torch.optim.Adadelta([p for p in model.parameters() if p.requires_grad], lr=1.0, rho=0.95, eps=1e-7)
    loss_fn = nn.CrossEntropyLoss()
    loader = DataLoader(train, batch_size=128, shuffle=True)
    cast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            optimizer.zero_grad()
            with cast():
                out = model(x)
            loss = loss_fn(out.float(), y)
            loss.backward()
            optimizer.step()
        loss, acc = evaluate(model, test, cast)
    return {"train_seconds": time.perf_counter() - start, "test_loss": loss, "test_accuracy": acc}


@torch.no_grad()
def evaluate(model: nn.Module, test: TensorDataset, cast) -> tuple[float, float]:
    model.eval()
    total, correct = 0.0, 0
    for x, y in DataLoader(test, batch_size=128):
        with cast():
            out = model(x).float()
        total += nn.functional.cross_entropy(out, y, reduction="sum").item()
        correct += (out.argmax(1) == y).sum().item()
    return total / len(test), correct / len(test)


def run(mnist: dict, seed: int = 0, epochs: int = 5, bf16: bool = False, limit: int | None = None) -> dict:
    """Source (0-4, all layers) then transfer (5-9, features frozen), as in the seed script."""
    torch.manual_seed(seed)
    lt5_train, lt5_test = mnist["y_train"] < 5, mnist["y_test"] < 5
    sets = {
        "source": (to_tensors(mnist["x_train"][lt5_train][:limit], mnist["y_train"][lt5_train][:limit]),
                   to_tensors(mnist["x_test"][lt5_test][:limit], mnist["y_test"][lt5_test][:limit])),
        "transfer": (to_tensors(mnist["x_train"][~lt5_train][:limit], mnist["y_train"][~lt5_train][:limit] - 5),
                     to_tensors(mnist["x_test"][~lt5_test][:limit], mnist["y_test"][~lt5_test][:limit] - 5)),
    }
    model, features, _ = seed_model(5)
    source = train_phase(model, *sets["source"], epochs=epochs, bf16=bf16)
    features.requires_grad_(False)
    transfer = train_phase(model, *sets["transfer"], epochs=epochs, bf16=bf16)
    return {"source": source, "transfer": transfer}
