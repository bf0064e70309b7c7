"""Files transferkit wrote, read back as input: a JSON object checked field by field (type and range), so a
file of the wrong shape is one line naming the file and the field, never a KeyError or TypeError later."""

from __future__ import annotations

import math

from .errors import UserError


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class Fields:
    """One JSON object of file `where`; each accessor checks its field and returns it. `hint` ends the error:
    what the user can do about a damaged file."""

    def __init__(self, where: object, obj: object, hint: str, prefix: str = ""):
        self.where, self.hint, self.prefix = where, hint, prefix
        if not isinstance(obj, dict):
            self.fail(prefix.rstrip(".") or "its content", "a JSON object", obj)
        self.obj: dict = obj

    def __contains__(self, key: str) -> bool:
        return key in self.obj

    def fail(self, key: str, expected: str, value: object) -> None:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise UserError(f"{self.where}: {key} must be {expected}, got {shown}; {self.hint}")

    def get(self, key: str) -> object:
        if key not in self.obj:
            raise UserError(f"{self.where}: {self.prefix}{key} is missing; {self.hint}")
        return self.obj[key]

    def sub(self, key: str) -> Fields:
        """The object in field `key`, to be read field by field."""
        return Fields(self.where, self.get(key), self.hint, f"{self.prefix}{key}.")

    def subs(self, key: str) -> list[Fields]:
        """The list of objects in field `key`."""
        value = self.get(key)
        if not isinstance(value, list):
            self.fail(self.prefix + key, "a list", value)
        return [Fields(self.where, v, self.hint, f"{self.prefix}{key}[{i}].") for i, v in enumerate(value)]

    def integer(self, key: str, low: int = 0, high: int | None = None) -> int:
        value = self.get(key)
        if not (is_int(value) and low <= value and (high is None or value <= high)):
            self.fail(self.prefix + key, f"an integer from {low}" + (f" to {high}" if high is not None else " up"),
                      value)
        return value

    def number(self, key: str, low: float = -math.inf, high: float = math.inf, high_open: bool = False) -> float:
        value = self.get(key)
        if not (is_number(value) and low <= value <= high and not (high_open and value == high)):
            bounds = f" in [{low:g}, {high:g}{')' if high_open else ']'}" if math.isfinite(high) or low > -math.inf else ""
            self.fail(self.prefix + key, "a finite number" + bounds, value)
        return float(value)

    def text(self, key: str) -> str:
        value = self.get(key)
        if not isinstance(value, str):
            self.fail(self.prefix + key, "a string", value)
        return value

    def boolean(self, key: str) -> bool:
        value = self.get(key)
        if not isinstance(value, bool):
            self.fail(self.prefix + key, "true or false", value)
        return value

    def choice(self, key: str, choices: tuple) -> object:
        value = self.get(key)
        if not isinstance(value, (str, int)) or value not in choices:
            self.fail(self.prefix + key, "one of " + ", ".join(map(str, choices)), value)
        return value

    def texts(self, key: str, length: int | None = None) -> list[str]:
        value = self.get(key)
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)
                and (length is None or len(value) == length)):
            self.fail(self.prefix + key, "a list of " + (f"{length} " if length is not None else "") + "strings", value)
        return value

    def numbers(self, key: str, length: int | None = None, low: float = -math.inf, high: float = math.inf) -> list:
        value = self.get(key)
        if not (isinstance(value, list) and (length is None or len(value) == length)
                and all(is_number(v) and low <= v <= high for v in value)):
            self.fail(self.prefix + key, "a list of " + (f"{length} " if length is not None else "")
                      + f"numbers in [{low:g}, {high:g}]", value)
        return value

    def integers(self, key: str, length: int | None = None, low: int = 0) -> list[int]:
        value = self.get(key)
        if not (isinstance(value, list) and (length is None or len(value) == length)
                and all(is_int(v) and v >= low for v in value)):
            self.fail(self.prefix + key, "a list of " + (f"{length} " if length is not None else "")
                      + f"integers of at least {low}", value)
        return value

    def only(self, known: set[str]) -> None:
        """No field beyond `known` (a setting this version does not have)."""
        unknown = sorted(set(self.obj) - known)
        if unknown:
            self.fail(self.prefix + unknown[0], "absent (not a setting of this version)", self.obj[unknown[0]])
