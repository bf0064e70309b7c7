"""How an option is declared once: a config dataclass field whose metadata holds its help, choices and how the
command line shows it (`declare`). cli_options.py builds the click options from these fields; the API reads the
same fields' defaults. Torch-free and click-free: config.py imports it."""

from __future__ import annotations

from dataclasses import MISSING, Field, dataclass, field, fields, replace

TYPES = {"int": int, "float": float, "str": str, "bool": bool}


@dataclass(frozen=True)
class Option:
    """An option's command-line side. `type`: when the annotation does not say (parsed from its first name);
    `name`: the option's name when not the field's (--timeout for timeout_s); `shown`: the default as the help
    states it, where the value alone would not say (data dependent, or computed later); `unset`: the command
    line passes None when not given, so that the API tells "not given" from "given the default" (shown then
    states the default); `negatable`: --x/--no-x for a flag whose default is not True; `path`: a file or
    folder (click.Path); `multiple`: repeatable."""

    help: str = ""
    choices: tuple | None = None
    type: type | None = None
    metavar: str | None = None
    name: str | None = None
    shown: str | None = None
    unset: bool = False
    negatable: bool = False
    multiple: bool = False
    path: bool = False

    def but(self, **changes: object) -> Option:
        """This option with a few attributes changed (a shared option's per-command help)."""
        return replace(self, **changes)


def declare(default: object = MISSING, spec: Option = Option(), **changes: object) -> Field:
    """A dataclass field that is an option: `default` written once, `spec` (a shared Option) with `changes`."""
    return field(default=default, metadata={"option": spec.but(**changes) if changes else spec})


def take(cls: type, options: dict):
    """An instance of dataclass `cls` from those of its fields among an entry point's keyword arguments, removed
    from `options` (the rest configure the experiment); the others at their defaults."""
    return cls(**{f.name: options.pop(f.name) for f in fields(cls) if f.name in options})


def option_of(f: Field) -> Option | None:
    """The field's Option, or None for a field that is no option (set by code, not by the user)."""
    return f.metadata.get("option")


def declared(cls: type) -> list[Field]:
    """The fields of config dataclass `cls` that are options, in their order."""
    return [f for f in fields(cls) if option_of(f) is not None]


def value_type(f: Field) -> type | None:
    """The option's type: its Option's, else the annotation's first name (`int | None` -> int)."""
    spec = option_of(f)
    if spec.type is not None:
        return spec.type
    annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
    return TYPES.get(annotation.split("|")[0].split("[")[0].strip())


def shown(value: object) -> str:
    """A default as help states it: 0.001 rather than 0.0010000, 1 for 1.0."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def default_text(name: str, default: object, variants: dict[str, dict]) -> str:
    """"128; with --backbone: 32": field `name`'s default, then each variant's (a preset: label -> its values)
    where it sets one, variants of the same value named together ("cifar10 and --backbone: adam")."""
    by_value: dict[str, list[str]] = {}
    for label, preset in variants.items():
        if name in preset:
            by_value.setdefault(shown(preset[name]), []).append(label)
    parts = [shown(default)]
    for value, labels in by_value.items():
        named = " and ".join(labels)
        parts.append(f"{'with ' if named.startswith('--') else ''}{named}: {value}")
    return "; ".join(parts)
