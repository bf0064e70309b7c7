"""The command line: parses options and calls the library. `transferkit --help` lists the commands."""

from __future__ import annotations

import os
import shlex
import sys
import warnings
from pathlib import Path

import click

from . import __version__
from .cli_options import config_options
from .command_options import (
    STUDY_SPLIT_OPTIONS,
    CompareOptions,
    ExportOptions,
    FreezeOptions,
    Loading,
    ShotsOptions,
    StudyOptions,
)
from .config import (
    AuditConfig,
    FinetuneConfig,
    HeadConfig,
    ModelConfig,
    PredictOptions,
    RankConfig,
    RunOptions,
    ServeConfig,
    SplitConfig,
    TrainConfig,
    preset_variants,
)
from .errors import Interrupted, UserError
from .jsonfile import strict_json


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="transferkit")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
def cli(debug: bool) -> None:
    """Transfer learning for image classification: fast, measurable, reproducible."""
    # --debug is read by main(), which decides how errors are shown.


def _output_options(command):
    """--quiet and --json, for run and finetune."""
    command = click.option("--json", "as_json", is_flag=True,
                           help="Print results.json to stdout and nothing else (for scripts).")(command)
    return click.option("--quiet", "-q", is_flag=True, help="Print only the final results table.")(command)


def _run_options(folder: str, resumes: str = "from its last checkpoint (same options as the original run)"):
    """--out, --force, --resume, --device and --track, every command's run-life options (config.RunOptions):
    `folder` names the default folder's tail, `resumes` what --resume continues."""
    return config_options(RunOptions, fill={"folder": folder, "resumes": resumes})


def _closing_output(results: dict, quiet: bool, as_json: bool, summary=None) -> None:
    """What --json and --quiet print once the run is over (without them, the experiment printed everything):
    the record as strict JSON, or the `summary()` renderable (default: the phases' results table)."""
    if as_json:
        click.echo(strict_json(results, what="--json output"))
    elif quiet:
        from .reporting.console import comparison_table, make_console

        make_console().print(summary() if summary is not None else comparison_table(results["phases"]))


@cli.command("run")
@click.argument("dataset", default=SplitConfig.dataset)
@config_options(SplitConfig, TrainConfig, ModelConfig, presets=preset_variants())
@_run_options("<dataset>")
@_output_options
def run_command(dataset: str, out: str | None, force: bool, resume: str | None, quiet: bool, as_json: bool,
                **options: object) -> None:
    """The split-class transfer experiment on DATASET: train on --source classes, freeze the convolutional
    features, fine-tune the classifier on --target classes, and train the same network from scratch as the
    control. DATASET is mnist (shipped), cifar10, or a folder / .zip / .tar.gz of class folders.

    \b
    Examples:
      transferkit run mnist
      transferkit run mnist --source 5-9 --target 0-4
      transferkit run mnist --limit 2000 --epochs 1 --out runs/quick
      transferkit run cifar10 --data ../shared/data/cifar10-jpg.zip
      transferkit run photos/ --source cat,dog --target fox,wolf
      transferkit run cifar10 --data ../shared/data/cifar10-jpg.zip --backbone efficientnet_lite0 --shots 500
    """
    from .experiments import run_split  # torch loads here, not for --help

    result = _resumable(run_split, dataset, out=out, resume=resume, force=force, verbose=not (quiet or as_json),
                        **options)
    _closing_output(result.results, quiet, as_json)


def _resumable(command, *args, out: str | None, resume: str | None, **kwargs):
    """Run an experiment and return its result; on Ctrl-C (SIGTERM) print the command that resumes it and exit
    130 (143), as a process ended by that signal would."""
    if resume is not None and out is not None:
        raise UserError("--resume continues the given run folder; drop --out")
    try:
        return command(*args, out=out, resume=resume, **kwargs)
    except Interrupted as stop:
        if stop.run_dir is not None:  # rank 0 (the one that writes) tells how to resume
            saved = "checkpoint saved in" if stop.checkpointed else "what was recorded is in"
            click.echo(f"interrupted ({stop}); {saved} {stop.run_dir}. Resume with:\n"
                       f"  {_launcher()}transferkit {_resume_command(stop.run_dir)}", err=True)
        raise click.exceptions.Exit(128 + int(stop.signal)) from None


def _launcher() -> str:
    """How the run was started: torchrun's processes resume under torchrun, with as many processes."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    return f"torchrun <the same options: {world_size} processes in all> -m " if world_size > 1 else ""


def _resume_command(run_dir: object) -> str:
    """The command line that was run, with --out / --force / --resume replaced by --resume RUN_DIR."""
    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg in ("--out", "--resume"):
            skip = True
        elif arg != "--force" and not arg.startswith(("--out=", "--resume=")):
            args.append(arg)
    return shlex.join([*args, "--resume", str(run_dir)])


@cli.command("finetune")
@click.argument("data", type=click.Path())
@config_options(FinetuneConfig, (HeadConfig, "head_"), Loading)
@_run_options("finetune-<data>")
@_output_options
def finetune_command(data: str, out: str | None, force: bool, resume: str | None, quiet: bool, as_json: bool,
                     **options: object) -> None:
    """Fine-tune a pretrained backbone on your image folders (train/ and val/ of class folders, one folder of
    class folders, or a .zip / .tar.gz of either): a new head on the frozen backbone, then optionally the
    whole network. The run folder holds the model for `transferkit predict`.

    \b
    Examples:
      transferkit finetune photos/
      transferkit finetune photos/ --backbone efficientnet_lite2
      transferkit finetune photos.zip --backbone efficientnet_b0 --augment --unfreeze-epochs 3
      transferkit finetune photos/ --backbone resnet18 --weights none --image-size 64 --epochs 1
    """
    from .experiments import finetune

    result = _resumable(finetune, data, out=out, resume=resume, force=force, verbose=not (quiet or as_json),
                        **options)
    _closing_output(result.results, quiet, as_json)


@cli.group("study")
def study_group() -> None:
    """Transfer studies: many trainings of the split experiment, summarised over seeds with 95% intervals.

    \b
      shots   with how little target data does transfer pay? transfer vs scratch per shot count
      freeze  how deep to freeze? Yosinski et al.'s baseB, BnB, BnB+, AnB, AnB+ at every cut
    """


def _study_options(command):
    """The options both studies take: the data, the classes, the seeds, the split experiment's training."""
    options = [
        click.argument("dataset", default=SplitConfig.dataset),
        config_options(SplitConfig, TrainConfig, ModelConfig, only=STUDY_SPLIT_OPTIONS, presets=preset_variants()),
        config_options(StudyOptions),
        click.option("--json", "as_json", is_flag=True, help="Print study.json to stdout and nothing else."),
        click.option("--quiet", "-q", is_flag=True, help="Print only the findings."),
    ]
    for option in reversed(options):
        command = option(command)
    return _run_options("study-<kind>-<dataset>", "from the points it finished (same options)")(command)


@study_group.command("shots")
@_study_options
@config_options(ShotsOptions)
def study_shots_command(**options: object) -> None:
    """With how little target data does transfer pay? For every shot count and seed: the transfer arm (the
    source network's frozen features, its classifier trained on, as `run`'s transfer phase) and the scratch arm,
    on the same images, tested on the whole target test set. With --backbone: a new head on the pretrained
    backbone's frozen features (computed once for the whole study), against the same network from scratch.

    \b
    Examples:
      transferkit study shots mnist
      transferkit study shots mnist --shots 1,10,100,all --seeds 3 --limit 5000
      transferkit study shots photos/ --backbone efficientnet_lite0 --shots 1,10,100 --seeds 3
    """
    _study("shots", **options)


@study_group.command("freeze")
@_study_options
@config_options(FreezeOptions)
def study_freeze_command(**options: object) -> None:
    """How deep to freeze? Yosinski et al. (NIPS 2014): baseB, and at every cut BnB / BnB+ (baseB's first layers,
    frozen / fine-tuned) and AnB / AnB+ (the source network's), all trained on the target classes. With
    --backbone, A is its ImageNet training and the cuts are its stages.

    \b
    Examples:
      transferkit study freeze mnist
      transferkit study freeze cifar10 --data ../shared/data/cifar10-jpg.zip --limit 5000 --epochs 5
      transferkit study freeze photos/ --backbone efficientnet_lite0 --cuts 1,5,9 --limit 1000 --epochs 3
    """
    _study("freeze", **options)


def _study(kind: str, dataset: str, out: str | None, force: bool, resume: str | None, quiet: bool, as_json: bool,
           **options: object) -> None:
    from .experiments.study import study

    result = _resumable(study, kind, dataset, out=out, resume=resume, force=force,
                        verbose=not (quiet or as_json), **options)
    _closing_output(result.results, quiet, as_json, lambda: "\n".join(result.results["findings"]))
@cli.command("rank")
@click.argument("data", type=click.Path())
@config_options(RankConfig)
@_run_options("rank-<data>", "(same options): candidates scored before are kept")
@_output_options
def rank_command(data: str, out: str | None, force: bool, resume: str | None, quiet: bool, as_json: bool,
                 **options: object) -> None:
    """Score pretrained backbones on your image folders before fine-tuning: for each, one frozen feature pass
    (from the feature store when done before), then LogME, k-nearest-neighbour accuracy and a linear probe's
    accuracy on its features. Prints the ranked table and writes a run folder (results.json, rank.json,
    rank.png, report.html).

    \b
    Examples:
      transferkit rank photos/
      transferkit rank photos/ --backbones efficientnet_lite0,efficientnet_lite2,resnet50 --verify
      transferkit rank photos/ --backbones efficientnet_lite0 --layers
    """
    from .experiments import rank
    from .reporting.rank import rank_table

    result = _resumable(rank, data, out=out, resume=resume, force=force, verbose=not (quiet or as_json), **options)
    _closing_output(result.results, quiet, as_json, lambda: rank_table(result.table, result.results.get("kendall_tau"),
                                                                     result.results.get("kendall_tau_with_failed")))


@cli.command("audit")
@click.argument("data", type=click.Path())
@config_options(AuditConfig)
@config_options(RunOptions, only={"out": {"help": "Folder for audit.json, issues.csv and report.html (new or empty; an "
                                               "audit is no run: no status or checkpoints). Default: runs/<UTC "
                                               "time>-{folder}."}, "force": {}, "device": {}},
                fill={"folder": "audit-<data>"})
@_output_options
def audit_command(data: str, quiet: bool, as_json: bool, **options: object) -> None:
    """Check an image folder data set before training: exact and near duplicates (across train / val / test:
    leakage), likely label errors (out-of-fold linear probes on frozen features, cleanlab's confident learning),
    outliers, and the facts (images per class and split, sizes, modes, formats, unreadable files). Files are
    only read; writes audit.json, issues.csv and report.html. Needs pip install "transferkit[audit]".

    \b
    Examples:
      transferkit audit photos/
      transferkit audit photos.zip --out audit-photos
    """
    from .experiments import audit

    result = audit(data, verbose=not (quiet or as_json), **options)
    _closing_output(result.results, quiet, as_json, result.summary)


@cli.command("report")
@click.argument("run_dir", type=click.Path())
@click.option("--open", "open_page", is_flag=True, help="Open the report in the default web browser.")
def report_command(run_dir: str, open_page: bool) -> None:
    """Write RUN_DIR/report.html again from the run folder's files (runs write it themselves after each phase;
    this also makes one for runs from transferkit versions without reports).

    \b
    Examples:
      transferkit report runs/20261123T101200Z-mnist --open
    """
    from .reporting.report import write_report

    path = write_report(Path(run_dir))
    click.echo(f"report: {path}")
    if open_page:
        _open(path)


@cli.command("compare")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path())
@config_options(CompareOptions)
@click.option("--open", "open_page", is_flag=True, help="Open the page in the default web browser.")
def compare_command(run_dirs: tuple[str, ...], out: str, open_page: bool) -> None:
    """Compare run folders: their metrics per phase and configuration differences as console tables, and one
    HTML page with the validation curves of every run overlaid.

    \b
    Examples:
      transferkit compare runs/head-reuse runs/head-reset
      transferkit compare runs/* --out comparison.html --open
    """
    from .reporting.compare import differences_table, metrics_table, write_comparison
    from .reporting.console import make_console

    path, view = write_comparison(list(run_dirs), Path(out))
    console = make_console()
    console.print(metrics_table(view))
    if view.differences:
        console.print(differences_table(view))
    click.echo(f"comparison: {path}")
    if open_page:
        _open(path)


def _open(path: Path) -> None:
    from .reporting.html import open_in_browser

    if not open_in_browser(path):
        click.echo(f"no web browser found; open {path.resolve()} yourself", err=True)


@cli.command("predict")
@click.argument("run_dir", type=click.Path())
@click.argument("images", nargs=-1, required=True)
@config_options(PredictOptions)
@click.option("--json", "as_json", is_flag=True, help="Print JSON (a list, one object per image).")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV: path, rank, class, probability, error.")
def predict_command(run_dir: str, images: tuple[str, ...], top_k: int, tta: bool, as_json: bool,
                    as_csv: bool, precision: str, engine: str) -> None:
    """Predict the classes of IMAGES (files or folders) with the model of RUN_DIR (from `run` or `finetune`), or
    with a file written by `transferkit export` (.onnx in ONNX Runtime, .torchscript.pt in TorchScript).

    \b
    Examples:
      transferkit predict runs/20261123T101200Z-mnist digit.png
      transferkit predict runs/my-finetune photos/new/ --top-k 1 --csv
      transferkit predict runs/my-finetune/export/model.onnx photos/new/
    """
    import csv

    from rich.table import Table
    from rich.text import Text

    from .inference import predict
    from .reporting.console import make_console

    if as_json and as_csv:
        raise click.UsageError("--json and --csv print different formats; give one of them")
    predictions = predict(run_dir, list(images), top_k=top_k, tta=tta, precision=precision, engine=engine,
                          notice=lambda text: click.echo(text, err=True))
    top_k = max([1, *(len(p.top) for p in predictions)])  # no empty columns past the model's classes
    if as_json:
        click.echo(strict_json([p.to_dict() for p in predictions], what="--json output"))
    elif as_csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["path", "rank", "class", "probability", "error"])
        for p in predictions:
            rows = [[p.path, r + 1, c, f"{prob:.6f}", ""] for r, (c, prob) in enumerate(p.top)]
            writer.writerows(rows or [[p.path, "", "", "", p.error]])
    else:
        table = Table(title_justify="left")
        for col in ("image", *(f"#{i + 1}" for i in range(top_k))):
            table.add_column(col, overflow="fold")
        for p in predictions:
            cells = [f"{c} {prob:.1%}" for c, prob in p.top] if not p.error else [Text(p.error, style="red")]
            table.add_row(p.path, *cells)
        make_console().print(table)
    failed = sum(1 for p in predictions if p.error)
    if failed:  # an error when nothing could be read (exit status 1), else a warning
        click.echo(f"{'error' if failed == len(predictions) else 'warning'}: {failed} of {len(predictions)} "
                   "file(s) could not be read", err=True)
    if failed < len(predictions):
        click.echo(f"{len(predictions) - failed} image(s) at {predictions.images_per_second:.1f} images/s "
                   "(reading, decoding and the network)", err=True)
    if failed == len(predictions):
        raise click.exceptions.Exit(1)


@cli.command("export")
@click.argument("run_dir", type=click.Path())
@config_options(ExportOptions)
def export_command(run_dir: str, check: tuple[str, ...], calibrate: tuple[str, ...], **options: object) -> None:
    """Export the model of RUN_DIR (a finished `run` or `finetune`) as a file that takes uint8 images (N, H, W, C)
    and gives class probabilities, with the class names and preprocessing in its metadata and in a .json
    sidecar. It is checked against PyTorch first (largest probability difference at most 1e-4, the same
    top-1 class on every image); a failed check writes nothing.

    \b
    Examples:
      transferkit export runs/my-finetune
      transferkit export runs/my-finetune --format torchscript --out model.pt
      transferkit export runs/20261123T101200Z-mnist --check digits/
      transferkit export runs/my-finetune --int8
    """
    from .deploy import export

    result = export(run_dir, check=list(check) or None, calibrate=list(calibrate) or None, **options)
    click.echo(f"checked on {result.check.summary()}")
    if result.int8:
        click.echo(result.int8.summary())
    click.echo(f"exported: {result.path} ({result.format}); description and check: {result.sidecar}")


@cli.command("serve")
@click.argument("source", metavar="RUN_DIR | MODEL.onnx | MODEL.torchscript.pt", type=click.Path())
@config_options(ServeConfig)
def serve_command(source: str, **options: object) -> None:
    """Serve the model of RUN_DIR (from `run` or `finetune`), or a file written by `transferkit export`, over
    HTTP: a page at / to try it in a browser, POST /predict (predict --json's answer), GET /health and
    GET /metadata. Requests that arrive together run as one batch. Ctrl-C or SIGTERM finish the requests in
    flight, then stop. Needs the serve extra: pip install "transferkit[serve]".

    \b
    Examples:
      transferkit serve runs/my-finetune
      curl -F file=@photo.jpg http://127.0.0.1:8000/predict
      transferkit serve runs/my-finetune/export/model.onnx --port 8080 --max-batch 64
    """
    import logging

    from .deploy.serve import serve

    config = ServeConfig(**options)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    log = logging.getLogger("transferkit.serve")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    serve(source, config, notice=lambda text: click.echo(text, err=True))


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    click.echo(f"warning: {message}", err=True)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user mistakes become one line on stderr and exit status 2 (tracebacks with --debug)."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        with warnings.catch_warnings():
            if not debug:  # a warning is one line for the user, as errors are; --debug shows where it came from
                warnings.showwarning = _one_line_warning
            code = cli.main(args=args, prog_name="transferkit", standalone_mode=False)
        if isinstance(code, int) and code:  # click returns, rather than raises, Exit(code) in this mode
            sys.exit(code)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.UsageError as e:  # a bad option or argument: one line, as for other user mistakes
        command = e.ctx.command_path if e.ctx is not None else "transferkit"
        click.echo(f"error: {e.format_message()} (see '{command} --help')", err=True)
        sys.exit(2)
    except click.ClickException as e:  # click's own e.show() would say "Error:"; every message says "error:"
        click.echo(f"error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except UserError as e:
        if debug:
            raise
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted; finished phases are saved in the run folder", err=True)
        sys.exit(130)
