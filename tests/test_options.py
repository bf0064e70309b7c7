"""Every option's default written once: each command's click defaults, and the defaults its help states, are the
ones the API function and its config use when the option is not given."""

import inspect
import re
from pathlib import Path

import click
import pytest

from transferkit import finetune, predict, rank, run_split
from transferkit.cli import cli
from transferkit.command_options import CompareOptions, StudyOptions
from transferkit.config import (
    DEFAULT_LR,
    HEAD_MIN_STEPS,
    OPTIMIZERS,
    STUDY_SEEDS,
    AuditConfig,
    FinetuneConfig,
    ModelConfig,
    RankConfig,
    RunOptions,
    ServeConfig,
    SplitConfig,
    Stopping,
    TrainConfig,
)
from transferkit.deploy import export
from transferkit.experiments import audit, make_split_config, study
from transferkit.experiments.study_plan import StudyConfig
from transferkit.options import shown

CLI_SOURCE = Path(__file__).resolve().parents[1] / "src" / "transferkit" / "cli.py"
OUTPUT_FLAGS = {"as_json", "as_csv", "quiet", "open_page", "help"}  # how results print, no API default
SPLIT = [SplitConfig, TrainConfig, ModelConfig, RunOptions]
# command -> the API function it calls, then the configs that take the options it passes on as **options
API = {
    "run": (run_split, SPLIT),
    "finetune": (finetune, [FinetuneConfig, RunOptions]),
    "rank": (rank, [RankConfig, RunOptions]),
    "audit": (audit, [AuditConfig]),
    "study shots": (study, [StudyOptions, *SPLIT]),
    "study freeze": (study, [StudyOptions, *SPLIT]),
    "predict": (predict, []),
    "export": (export, []),
    "serve": (ServeConfig, []),
    "compare": (CompareOptions, []),
    "report": (None, []),
}
# What study() makes of None (STUDY_SEEDS[kind], StudyConfig's shots), which the CLI passes as the value itself.
RESOLVED = {("study shots", "seeds"): STUDY_SEEDS["shots"], ("study freeze", "seeds"): STUDY_SEEDS["freeze"],
            ("study shots", "shots"): StudyConfig.shots}


def commands(group=cli, prefix=""):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from commands(command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", command


def api_default(path: str, name: str) -> object:
    """The default the API uses for option `name` of command `path`: its function's keyword, else its configs'."""
    function, configs = API[path]
    for source in [function, *configs]:
        parameters = inspect.signature(source).parameters if source is not None else {}
        if name in parameters and parameters[name].default is not inspect.Parameter.empty:
            return parameters[name].default
    raise AssertionError(f"{path} --{name}: no default in {function} nor in {configs}")


def stated(option: click.Option) -> str | None:
    found = re.search(r"\[default: (.*)\]\s*$", option.help or "", re.S)
    return " ".join(found.group(1).split()) if found else None


def test_every_command_is_in_the_table():
    assert {path for path, _ in commands()} == set(API)


@pytest.mark.parametrize("path, command", list(commands()), ids=[p for p, _ in commands()])
def test_click_defaults_are_the_apis(path, command):
    for option in command.params:
        if not isinstance(option, click.Option) or option.name in OUTPUT_FLAGS:
            continue
        expected = RESOLVED.get((path, option.name), api_default(path, option.name))
        if path.startswith("study") and option.name == "shots":  # the CLI's text, study()'s numbers
            assert tuple(0 if n == "all" else int(n) for n in option.default.split(",")) == expected
        elif option.multiple:
            assert tuple(option.default or ()) == tuple(expected or ()), option.name
        elif option.default is None and expected is not None:  # passed only when given: the help states it
            assert (stated(option) or "").startswith(shown(expected)), (path, option.name, option.help)
        else:
            assert option.default == expected, (path, option.name)


def options_of(path: str) -> dict[str, click.Option]:
    command = dict(commands())[path]
    return {p.name: p for p in command.params if isinstance(p, click.Option)}


def labelled(text: str) -> tuple[str, dict[str, str]]:
    """"128; with --backbone: 32" -> ("128", {"--backbone": "32"})."""
    base, *rest = text.split("; ")
    values = {}
    for part in rest:
        labels, _, value = part.partition(": ")
        for label in labels.removeprefix("with ").split(" and "):
            values[label] = value
    return base, values


@pytest.mark.parametrize("path", ["run", "study shots", "study freeze"])
@pytest.mark.parametrize("dataset, backbone", [("mnist", None), ("cifar10", None), ("mnist", "efficientnet_lite0"),
                                               ("cifar10", "efficientnet_lite0")])
def test_data_dependent_defaults_stated_are_make_split_configs(path, dataset, backbone):
    config = make_split_config(dataset, backbone=backbone)
    checked = 0
    for name, option in options_of(path).items():
        owner = next((c for c in (config.train, config.model, config) if name in c.__dataclass_fields__), None)
        if option.default is not None or stated(option) is None or owner is None or getattr(owner, name) is None:
            continue
        base, values = labelled(stated(option))
        # make_split_config's order: --backbone's preset over the data set's over the dataclass default
        want = values["--backbone"] if backbone and "--backbone" in values else values.get(dataset, base)
        assert want == shown(getattr(owner, name)), (name, dataset, backbone, option.help)
        checked += 1
    assert checked >= 4  # epochs, batch size, optimizer, filters at least


def test_learning_rates_stated_are_the_optimizers():
    text = stated(options_of("run")["lr"])
    for optimizer in OPTIMIZERS:
        assert f"{optimizer} {TrainConfig(optimizer=optimizer).learning_rate:g}" in text
    assert set(DEFAULT_LR) == set(OPTIMIZERS)


@pytest.mark.parametrize("path, least", [("run", TrainConfig().stopping().min_steps),
                                         ("finetune", FinetuneConfig("x").train.stopping(HEAD_MIN_STEPS).min_steps),
                                         ("rank", RankConfig("x").train.stopping(HEAD_MIN_STEPS).min_steps)])
def test_stopping_defaults_stated_are_the_phases(path, least):
    options = options_of(path)
    assert re.match(rf"{least}\b", stated(options["min_steps"]))
    patience = TrainConfig().stopping()
    assert stated(options["patience"]).startswith(f"{patience.patience} epochs and at least "
                                                  f"{patience.patience_steps} steps")


def test_serve_options_are_serve_configs_fields():
    assert {p.name for p in options_of("serve").values()} - {"help"} == set(ServeConfig.__dataclass_fields__)
    assert ServeConfig.top_k == inspect.signature(predict).parameters["top_k"].default


def test_cli_types_no_default():
    """cli.py builds every option from a declaration (cli_options.config_options): no default typed there."""
    source = CLI_SOURCE.read_text(encoding="utf-8")
    assert "[default:" not in source and "show_default" not in source
    assert re.findall(r"default=(?!SplitConfig\.dataset\b)", source) == []


def passed(monkeypatch, module: str, name: str, args: list[str]) -> dict:
    """The keyword arguments `transferkit ARGS` calls module.name with (checked against its signature), the
    call itself stubbed out."""
    import importlib

    target = importlib.import_module(module)
    api, calls = getattr(target, name), []

    def stub(*given, **keywords):
        inspect.signature(api).bind(*given, **keywords)  # a keyword the API does not take fails here
        calls.append(keywords)
        raise click.exceptions.Exit(0)

    monkeypatch.setattr(target, name, stub)
    cli.main(args=args, prog_name="transferkit", standalone_mode=False)
    return calls[0]


def configured(options: dict) -> dict:
    """The options an experiment configures, without the run's life (RunOptions)."""
    return {k: v for k, v in options.items() if k not in RunOptions.__dataclass_fields__}


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_run_without_options_configures_as_the_api_without_options(monkeypatch, dataset):
    options = passed(monkeypatch, "transferkit.experiments", "run_split", ["run", dataset])
    assert make_split_config(dataset, **configured(options)) == make_split_config(dataset)
    with_backbone = passed(monkeypatch, "transferkit.experiments", "run_split", ["run", dataset, "--backbone",
                                                                                 "efficientnet_lite0"])
    assert (make_split_config(dataset, **configured(with_backbone))
            == make_split_config(dataset, backbone="efficientnet_lite0"))


def test_finetune_and_rank_without_options_configure_as_the_api(monkeypatch):
    options = configured(passed(monkeypatch, "transferkit.experiments", "finetune", ["finetune", "photos"]))
    head, workers = (options.pop("head_units"), options.pop("head_dropout")), options.pop("workers")
    assert FinetuneConfig("photos", **Stopping.given_epochs(options)) == FinetuneConfig("photos")
    signature = inspect.signature(finetune).parameters
    assert head == (signature["head_units"].default, signature["head_dropout"].default) and workers is None
    options = configured(passed(monkeypatch, "transferkit.experiments", "rank", ["rank", "photos"]))
    assert RankConfig("photos", **Stopping.given_epochs(options)) == RankConfig("photos")


@pytest.mark.parametrize("args, module, name", [
    (["study", "shots", "mnist"], "transferkit.experiments.study", "study"),
    (["audit", "photos"], "transferkit.experiments", "audit"),
    (["predict", "run", "a.png"], "transferkit.inference", "predict"),
    (["export", "run"], "transferkit.deploy", "export"),
])
def test_the_other_commands_pass_only_what_their_api_takes(monkeypatch, args, module, name):
    assert passed(monkeypatch, module, name, args)
