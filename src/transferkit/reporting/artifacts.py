"""Trained weights as safetensors (never pickle) beside a JSON that rebuilds the network."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..atomic import write_atomic
from ..errors import UserError, first_line
from ..jsonfile import read_json, strict_json
from ..models import BackboneClassifier, SeedCNN
from ..models.backbones import SPEC_KEY
from ..models.spec import check_shapes, check_spec
from .results import write_text_atomic

ARCHITECTURES = {"seed_cnn": SeedCNN, "backbone": BackboneClassifier}


def save_model(directory: Path, name: str, model: nn.Module, class_names: list[str], preprocessing: dict,
               temperature: float | None = None) -> Path:
    """Write `<name>.safetensors` and `<name>.json` (architecture, class names, preprocessing, and the
    calibration temperature the logits are divided by before the softmax, when one was fitted)."""
    directory.mkdir(parents=True, exist_ok=True)
    spec = {**model.spec(), "class_names": list(class_names), "preprocessing": preprocessing}
    if temperature is not None:
        spec["temperature"] = temperature
    weights = directory / f"{name}.safetensors"
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}  # from a GPU too
    spec_file = directory / f"{name}.json"
    write_atomic(weights, lambda tmp: save_file(state, str(tmp), metadata={SPEC_KEY: strict_json(
        spec, what=str(spec_file), indent=None)}))
    write_text_atomic(spec_file, strict_json(spec, what=str(spec_file)) + "\n")
    return weights


def load_model(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild a saved network from `<name>.safetensors` (or its .json); returns (model in eval mode, spec)."""
    path = Path(path)
    weights, spec_file = path.with_suffix(".safetensors"), path.with_suffix(".json")
    for f in (weights, spec_file):
        if not f.is_file():
            raise UserError(f"{f}: not found; point at a <phase>.safetensors in a run's weights/ folder")
    try:
        spec = read_json(spec_file)
    except (ValueError, OSError) as e:  # UnicodeDecodeError is a ValueError
        raise UserError(f"{spec_file}: not a transferkit model description ({type(e).__name__}: "
                        f"{first_line(e)[:120]})") from None
    check_spec(spec, spec_file)
    build = partial(ARCHITECTURES[spec["architecture"]].from_spec, spec)
    check_shapes(build, _tensor_shapes(weights, spec["architecture"]), spec_file, weights)
    model = build()  # now known to be the size of the weights file
    try:
        model.load_state_dict(load_file(str(weights)))
    except (SafetensorError, RuntimeError, OSError) as e:
        raise UserError(f"{weights}: cannot load these weights into {spec['architecture']} ({first_line(e)})") from None
    model.eval()
    return model, spec


def _tensor_shapes(weights: Path, architecture: str) -> dict[str, tuple[int, ...]]:
    """The shape of each tensor in a safetensors file, from its header (no tensor is read)."""
    try:
        with safe_open(str(weights), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, RuntimeError, OSError) as e:
        raise UserError(f"{weights}: cannot load these weights into {architecture} ({first_line(e)})") from None

