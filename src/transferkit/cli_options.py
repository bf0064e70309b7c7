"""Click options built from config dataclass fields (options.declare): each option's name, type, choices, default
and help come from its field, so that cli.py restates none of them."""

from __future__ import annotations

from dataclasses import Field

import click

from .options import declared, default_text, option_of, shown, value_type


def config_options(*sources: type | tuple[type, str], only: dict[str, dict] | None = None,
                   presets: dict[str, dict] | None = None, fill: dict[str, str] | None = None):
    """A decorator adding the options of `sources`' declared fields (config dataclasses, or (dataclass, prefix):
    HeadConfig's units as --head-units), in field order; or those named in `only`, in its order, each with its
    changes to the field's Option (a command's own help). `presets` (label -> values, config.preset_variants):
    an option they set is passed as None when not given, and its help states each default. `fill`: the values
    of {placeholders} in the help texts."""
    found: dict[str, Field] = {}
    for source in sources:
        cls, prefix = source if isinstance(source, tuple) else (source, "")
        for f in declared(cls):
            found.setdefault(prefix + f.name, f)
    names = list(found) if only is None else list(only)
    built = [click_option(name, found[name], (only or {}).get(name, {}), presets or {}, fill) for name in names]

    def decorate(command):
        for option in reversed(built):
            command = option(command)
        return command

    return decorate


def stated_default(f: Field, changes: dict, presets: dict[str, dict]) -> tuple[object, str | None]:
    """The click default of field `f` and the default its help states (None: click shows the default itself, or
    there is none to state)."""
    spec = option_of(f).but(**changes)
    if any(f.name in preset for preset in presets.values()):  # the data decides: make_split_config chooses
        return None, default_text(f.name, f.default, presets)
    if spec.unset:
        return None, spec.shown if spec.shown is not None else shown(f.default)
    return f.default, spec.shown


def click_option(name: str, f: Field, changes: dict, presets: dict[str, dict], fill: dict[str, str] | None):
    """The click option of field `f` (parameter `name`)."""
    spec = option_of(f).but(**changes)
    default, stated = stated_default(f, changes, presets)
    text = spec.help.format(**fill) if fill else spec.help
    if stated is not None:
        text = f"{text}  [default: {stated}]".strip()
    flag = "--" + (spec.name or name).replace("_", "-")
    kind = spec.type or value_type(f)
    settings: dict = {"default": default, "help": text, "metavar": spec.metavar}
    if kind is bool and (spec.negatable or f.default is True):
        return click.option(f"{flag}/--no-{flag[2:]}", name, show_default=default is not None, **settings)
    if kind is bool:
        return click.option(flag, name, is_flag=True, **settings)
    settings["type"] = click.Choice(spec.choices) if spec.choices else click.Path() if spec.path else kind
    return click.option(flag, name, multiple=spec.multiple,
                        show_default=default is not None and not spec.multiple, **settings)
