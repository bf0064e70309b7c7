"""The command line: parses options and calls the library. `transferkit --help` lists the commands."""

from __future__ import annotations

import sys

import click

from . import __version__
from .config import HEADS, OPTIMIZERS, PRECISIONS, DEFAULT_LR
from .data import DATASETS
from .errors import UserError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="transferkit")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Transfer learning for image classification: fast, measurable, reproducible."""
    ctx.obj = {"debug": debug}


@cli.command("run")
@click.argument("dataset", type=click.Choice(sorted(DATASETS)), default="mnist")
@click.option("--data", type=click.Path(), help="Your own copy: an .npz (x_train, y_train, x_test, y_test) "
              "or a folder with the four IDX files. Default: the copy shipped with transferkit.")
@click.option("--source", default="0-4", show_default=True,
              help="Classes of the source phase: names, indices, ranges, comma lists (0-4, 5,7,9).")
@click.option("--target", default="5-9", show_default=True, help="Classes of the transfer and scratch phases.")
@click.option("--head", type=click.Choice(HEADS), default="reuse", show_default=True,
              help="Transfer phase: keep the source-trained classifier weights (as the seeds do) or reset them.")
@click.option("--scratch/--no-scratch", default=True, show_default=True,
              help="Train the scratch control on the target classes (without it nobody can tell what transfer bought).")
@click.option("--epochs", type=int, default=5, show_default=True, help="Epochs per phase.")
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default="adadelta", show_default=True)
@click.option("--lr", type=float, default=None,
              help="Learning rate. Default: " + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items())
              + " (Adadelta's is Keras 2's; Keras 3's 0.001 is why seed 003 reaches only ~70%).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for initialisation, shuffling, dropout.")
@click.option("--limit", type=int, default=None, help="Use at most N images per split (quick runs).")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help="auto: bf16 autocast where the CPU has native bf16 (AVX512-BF16, AMX), else fp32.")
@click.option("--feature-cache/--no-feature-cache", default=True, show_default=True,
              help="Compute the frozen features once for the transfer phase instead of every epoch.")
@click.option("--filters", type=int, default=32, show_default=True, help="Filters per conv layer.")
@click.option("--kernel-size", type=int, default=3, show_default=True)
@click.option("--pool-size", type=int, default=2, show_default=True)
@click.option("--dense-units", type=int, default=128, show_default=True)
@click.option("--feature-dropout", type=float, default=0.25, show_default=True)
@click.option("--classifier-dropout", type=float, default=0.5, show_default=True)
@click.option("--out", type=click.Path(), default=None,
              help="Run folder (must be new or empty). Default: runs/<UTC time>-<dataset>.")
def run_command(dataset: str, out: str | None, **options: object) -> None:
    """The split-class transfer experiment: train on --source classes, freeze the convolutional features,
    fine-tune the classifier on --target classes, and train the same network from scratch as the control.

    \b
    Examples:
      transferkit run mnist
      transferkit run mnist --source 5-9 --target 0-4
      transferkit run mnist --limit 2000 --epochs 1 --out runs/quick
    """
    from .experiments import run_split  # torch loads here, not for --help

    run_split(dataset, out=out, **options)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user mistakes become one line on stderr and exit status 2 (tracebacks with --debug)."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="transferkit", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except UserError as e:
        if debug:
            raise
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted; finished phases are saved in the run folder", err=True)
        sys.exit(130)
