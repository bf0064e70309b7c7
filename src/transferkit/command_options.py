"""The options of the entry points that are no experiment configuration (config.py holds those): the studies'
own, finetune's DataLoader workers, export's and compare's. Declared as config's are (options.declare), so that
the CLI and the API functions read each default from one place. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass

from .config import (
    EXPORT_FORMATS,
    INT8_CALIBRATION_IMAGES,
    INT8_MAX_DROP,
    STUDY_CUTS,
    STUDY_MAX_SEEDS,
    STUDY_MIN_STEPS,
    STUDY_SEEDS,
    STUDY_SHOTS,
)
from .options import Option, declare, take


@dataclass(frozen=True)
class Loading:
    """finetune's DataLoader processes: how streamed images are decoded, which changes no result."""

    workers: int | None = declare(None, type=int, help=(
        "DataLoader processes decoding streamed images. Default: one per core; 0 decodes in the main process "
        "(debugging)."))


# The split experiment's options a study takes (SplitConfig, TrainConfig, ModelConfig fields), in --help's order,
# each with what differs from run's: help, and unset where the study must tell "not given" (refused with
# --backbone).
STUDY_SPLIT_OPTIONS: dict[str, dict] = {
    "data": {"help": "As for `run`: the data set's file or folder."},
    "source": {"help": "Source classes (A).", "shown": "the first half; none with --backbone"},
    "target": {"help": "Target classes (B).", "shown": "the second half"},
    "epochs": {"help": "Epochs per point."},
    "batch_size": {"help": "At most a point's training images."},
    "optimizer": {},
    "lr": {"help": "Learning rate (the optimizer's, as `run`)."},
    "head": {"help": "Transfer arm: as `run --head` (the seed network's; not with --backbone).", "unset": True},
    "filters": {},
    "backbone": {"help": "A pretrained backbone instead of the seed network (as `run --backbone`): the source is its "
                         "ImageNet training, so no source network is trained (see the README's studies)."},
    "weights": {"metavar": "imagenet|none|FILE"},
    "image_size": {"help": "Folder data sets (cifar10 from its jpg zip too): resize images to this square size, the "
                           "size the scratch arm and every freeze arm train at.", "shown": None},
    "seed": {"help": "Base seed: each point's seeds derive from it and the seed number (0 to --seeds - 1)."},
    "limit": {},
    "precision": {},
    "class_weights": {"help": "Weigh the training loss by inverse class frequency: auto does when the largest class "
                              "has more than twice the training images of the smallest (the choice is printed), none "
                              "never. Per point, on its training images."},
}


@dataclass(frozen=True)
class StudyOptions:
    """Both studies' own options (experiments.study's keywords): which arms, how long a point trains at least, and
    the worker processes."""

    arms: str | None = declare(None, type=str, help="A comma list of the study's arms (default: all of them).")
    min_steps: int = declare(STUDY_MIN_STEPS, help=(
        "Every point trains at least this many optimizer steps, spread over its epochs, so that a few images are "
        "trained to convergence too."))
    jobs: int | None = declare(None, type=int, help=(
        "Worker processes training the study's units side by side on the CPU (a seed's source network with the "
        "points that copy it, or a scratch point), each with cores / N threads (capped at the usable cores); 1: "
        "every point in this process, with every thread."), shown=(
        "one per usable core: on 2 cores, 2 processes x 1 thread ran a shots study in less time than 1 process x 2 "
        "threads (README, Studies)"))
    cluster: str | None = declare(None, type=str, metavar="ray|ray://HOST:PORT|slurm", help=(
        "Train each unit elsewhere, one CPU and one thread each: as a Ray task (ray: RAY_ADDRESS's cluster, else "
        "`ray start`'s on this machine, else a new local one; ray://HOST:PORT: a remote head, through Ray Client) or "
        "as a SLURM job (slurm, through submitit; the study folder on a disk the nodes share). Needs the cluster "
        "extra; see docs/distributed.md."))

    @classmethod
    def take(cls, options: dict) -> StudyOptions:
        """The study's own options among study()'s keyword arguments, removed from `options`."""
        return take(cls, options)


SEEDS = Option(f"Seeds per point (2 to {STUDY_MAX_SEEDS}).")


@dataclass(frozen=True)
class ShotsOptions:
    """The shots study's: the shot counts, the seeds."""

    shots: str = declare(",".join(str(n or "all") for n in STUDY_SHOTS), help=(
        "Training images per target class at each point (all: every image)."))
    seeds: int = declare(STUDY_SEEDS["shots"], SEEDS)


@dataclass(frozen=True)
class FreezeOptions:
    """The freeze study's: the cuts, the seeds."""

    cuts: str | None = declare(None, type=str, help=(
        "Cut n copies the first n weight layers (conv1, conv2, dense1); with --backbone, its first n stages (e.g. "
        "stem, layer1..layer4 for resnet18)."), shown=",".join(map(str, STUDY_CUTS)) + "; with --backbone: every stage")
    seeds: int = declare(STUDY_SEEDS["freeze"], SEEDS)


@dataclass(frozen=True)
class ExportOptions:
    """`transferkit export`'s options (deploy.export's keywords)."""

    format: str = declare("onnx", choices=EXPORT_FORMATS, help=(
        "onnx (ONNX Runtime and other runtimes; needs the export extra) or torchscript (torch.jit.load)."))
    out: str | None = declare(None, type=str, path=True, help="The file to write.", shown=(
        "RUN_DIR/export/<model>.onnx or <model>.torchscript.pt"))
    force: bool = declare(False, help="Replace --out (and its .json sidecar) when it exists.")
    check: tuple[str, ...] | None = declare(None, type=str, multiple=True, metavar="IMAGES", help=(
        "Check on these image files or folders (repeatable) instead of the run's validation images."))
    int8: bool = declare(False, help=(
        "ONNX, quantized to int8 by ONNX Runtime (static, QDQ, per-channel weights), calibrated on the run's training "
        "images and compared with fp32 on its held-out images: accuracy, same top-1, images/s.  [default file: "
        "RUN_DIR/export/<model>.int8.onnx]"))
    max_drop: float = declare(INT8_MAX_DROP, help="With --int8: accuracy points int8 may lose against fp32; more "
                                                  "writes nothing.")
    calibration_images: int = declare(INT8_CALIBRATION_IMAGES, help=(
        "With --int8: training images to calibrate on, spread evenly over the classes (fixed seed)."))
    calibrate: tuple[str, ...] | None = declare(None, type=str, multiple=True, metavar="IMAGES", help=(
        "With --int8: calibrate on these image files or folders (repeatable) instead of the run's training images."))


@dataclass(frozen=True)
class CompareOptions:
    """`transferkit compare`'s page."""

    out: str = declare("compare.html", path=True, help="The HTML page to write (a folder: compare.html inside it).")
