"""Checkpoints: everything needed to continue a phase exactly, in one safetensors file written atomically.

Tensors (model, optimizer state, RNG states, the epoch's batch order) are safetensors tensors; the rest
(phase, epoch, history, optimizer hyper-parameters, Python and NumPy RNG) is JSON in the file's metadata.
Nothing is ever unpickled, so a checkpoint cannot carry code.

In a distributed run every rank holds the same model, optimizer and batch generator (DDP keeps them equal),
so rank 0 writes them once; only the running sums of an epoch stopped half-way differ per rank, and the
file keeps each rank's.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..atomic import write_atomic
from ..errors import UserError
from ..fields import Fields
from ..jsonfile import parse_json, strict_json
from .distributed import current_rank, gather_to_main
from .loop import FitState

CHECKPOINT_FILE = "checkpoint.safetensors"
_META_KEY = "transferkit_checkpoint"


def capture_rng() -> tuple[dict[str, torch.Tensor], dict]:
    """The global RNG states (torch, the GPU's if one is in use, NumPy, Python) as tensors and JSON."""
    np_state = np.random.get_state()
    tensors = {"rng.torch": torch.get_rng_state(), "rng.numpy": torch.from_numpy(np_state[1].astype(np.int64))}
    meta = {"numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": _python_state_to_json(random.getstate())}
    if torch.cuda.is_initialized():  # dropout on a GPU draws from the current GPU's generator
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    name, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))


def _python_state_to_json(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer's state_dict into tensors and JSON (hyper-parameters, scalar state)."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{index}.{name}"] = value.contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for key, value in meta["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write through a temporary file, fsync and rename: the previous checkpoint stays whole until then."""
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata={
        _META_KEY: strict_json(meta, what=str(path), indent=None)}))


class UnreadableCheckpoint(UserError):
    """A checkpoint file that cannot be read (cut short, not a checkpoint): a study deletes it and trains its
    point from the start; any other run is started again."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: not a readable transferkit checkpoint ({reason}); it may be truncated: start "
                         "the run again without --resume")
        self.path, self.reason = path, reason


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint written by save_checkpoint; anything else is refused with a clear error."""
    if not path.is_file():
        raise UserError(f"{path}: no checkpoint here; --resume needs a run folder that was interrupted")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = parse_json((f.metadata() or {})[_META_KEY])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    # RuntimeError: safetensors' word for a file shorter than its header says (cut off after the header).
    except (SafetensorError, OSError, KeyError, ValueError, RuntimeError) as e:
        raise UnreadableCheckpoint(path, str(e).splitlines()[0][:120] if str(e).strip() else type(e).__name__) from None
    return tensors, meta


def _check_fit(path: Path, fit: object) -> None:
    """The fit state's fields by type: a checkpoint that loads but holds `"epoch": "two"` is refused here, not
    a crash inside the training loop."""
    fields = Fields(path, fit, "start the run again without --resume", "fit.")
    for key in ("epoch", "correct", "seen", "steps"):
        fields.integer(key)
    for key in ("loss_sum", "epoch_seconds"):
        fields.number(key, low=0)
    if "best_epoch" in fields:  # written since early stopping (older checkpoints resume without it)
        fields.integer("best_epoch", low=0)
        fields.integer("since_best", low=0)
        fields.boolean("stopped")
        if fit.get("best_loss") is not None:
            fields.number("best_loss")
    for record in fields.subs("history"):
        record.integer("epoch", low=1)
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "seconds"):
            record.number(key)


class Checkpointer:
    """Saves and restores one phase's training state (model, optimizer, batch order, RNGs, fit state).

    Every rank of a distributed run calls save and restore; rank 0 alone writes the file, every rank reads
    it (so a run across machines keeps its run folder on a file system they share).
    """

    def __init__(self, path: Path):
        self.path = path

    def save(self, phase: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches, fit_state,
             elapsed: float) -> None:
        fits = gather_to_main(fit_state.to_dict())
        if current_rank() != 0:
            return
        optim_tensors, optim_meta = optimizer_to_tensors(optimizer)
        batch_tensors, batch_meta = batches.state_dict()
        rng_tensors, rng_meta = capture_rng()
        best = {f"best.{k}": v for k, v in (fit_state.best_weights or {}).items()}  # the same on every rank
        tensors = {**{f"model.{k}": v for k, v in model.state_dict().items()}, **optim_tensors, **batch_tensors,
                   **rng_tensors, **best}
        meta = {"phase": phase, "fit": fits[0], "optimizer": optim_meta, "batches": batch_meta,
                "rng": rng_meta, "elapsed_seconds": elapsed}
        if len(fits) > 1:
            meta["rank_fits"] = fits
        save_checkpoint(self.path, tensors, meta)

    def phase(self) -> str | None:
        """The phase the last checkpoint was written in, if there is one (reads the metadata only)."""
        if not self.path.is_file():
            return None
        try:
            with safe_open(str(self.path), framework="pt") as f:
                return parse_json((f.metadata() or {})[_META_KEY]).get("phase")
        except (SafetensorError, OSError, KeyError, ValueError):
            return None  # restore() names the problem when it reads the whole file

    def restore(self, phase: str, model, optimizer, batches, console=None):
        """Load the checkpoint into these objects if it was written in `phase`: (FitState, seconds before)."""
        if not self.path.is_file():
            return None, 0.0
        tensors, meta = load_checkpoint(self.path)
        if meta.get("phase") != phase:
            return None, 0.0
        try:
            model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
            optimizer_from_tensors(optimizer, tensors, meta["optimizer"])
            batches.load_state_dict(tensors, meta["batches"])
            restore_rng(tensors, meta["rng"])
            fit = meta.get("rank_fits", [meta["fit"]])[current_rank()]
            _check_fit(self.path, fit)
            best = {k[len("best."):]: v for k, v in tensors.items() if k.startswith("best.")}
            state = FitState.from_dict(fit, best or None)
            if state.best_epoch and state.best_weights is None:
                raise ValueError(f"it names best epoch {state.best_epoch} but holds no weights of it")
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise UserError(f"{self.path}: does not fit this run ({str(e).splitlines()[0][:160]}); "
                            "start a new run") from None
        if console is not None:
            console.print(f"resuming phase {phase} at epoch {state.epoch}, step {batches.position}")
        return state, meta["elapsed_seconds"]
