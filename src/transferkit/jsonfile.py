"""The one JSON writer and reader of transferkit: strict both ways.

Every JSON text transferkit writes (results.json, study.json, status.json, rank.json, weights' and exports'
descriptions, checkpoint and ONNX metadata, `--json` output) comes from `strict_json`, which refuses NaN and
Infinity instead of writing them: they are not JSON, and JavaScript, jq and most languages' parsers reject the
file. A non-finite number reaching the writer is a bug in what computed it; the error names the field, so the
run can say failed with that message rather than hide the value. `read_json` refuses them on the way in too, as
every file read back may have been damaged or written by someone else.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .errors import UserError


class NonFiniteNumber(UserError):
    """A NaN or infinite number on its way into a JSON file: a bug where it was computed, named by its field."""


def strict_json(data: object, *, what: str = "JSON", indent: int | None = 2) -> str:
    """`data` as JSON text; a NaN or infinite float anywhere in it raises NonFiniteNumber naming its field
    (`what` names the file or record, for the message)."""
    _check_finite(data, what, "")
    return json.dumps(data, indent=indent, allow_nan=False)


def _check_finite(data: object, what: str, field: str) -> None:
    if isinstance(data, float) and not math.isfinite(data):
        raise NonFiniteNumber(f"{what}: field {field or '(top level)'} is {data}, which JSON cannot hold; nothing "
                              "was written. This is a bug in transferkit: please report it (rerun with --debug "
                              "for the traceback)")
    if isinstance(data, dict):
        for key, value in data.items():
            _check_finite(value, what, f"{field}.{key}" if field else str(key))
    elif isinstance(data, (list, tuple)):
        for i, value in enumerate(data):
            _check_finite(value, what, f"{field}[{i}]")


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(text: str) -> object:
    """Parse JSON text strictly: NaN, Infinity and -Infinity (which Python's json accepts) are refused with a
    ValueError, as every other parser refuses them."""
    return json.loads(text, parse_constant=_refuse_constant)


def read_json(path: Path) -> object:
    """The JSON value in `path`, parsed strictly; OSError or ValueError (a UnicodeDecodeError, a syntax error, a
    NaN) for the caller to turn into its one-line message."""
    return parse_json(Path(path).read_text(encoding="utf-8"))
