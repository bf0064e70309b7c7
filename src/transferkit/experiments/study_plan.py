"""What a study is: its configuration, its arms, its points (an arm at a shot count or a cut, for one seed) and
units (the trainings one process takes at a time), and which training images a point sees. study.py runs a
study; study_trainer.py trains a unit; study_backbone.py trains one on a pretrained backbone."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field

import numpy as np

from ..config import STUDY_CUTS, STUDY_MAX_SEEDS, STUDY_MIN_STEPS, STUDY_SHOTS, SplitConfig
from ..errors import UserError
from ..models.registry import architecture
from .seeds import RADIX

STUDY_KINDS = ("shots", "freeze")
ARMS = {"shots": ("transfer", "scratch"), "freeze": ("baseB", "BnB", "BnB+", "AnB", "AnB+")}
# The seed network's weight layers in order: cut n copies the first n (conv1, conv2, dense1; dense2 is the
# output layer, new for the target classes).
WEIGHT_LAYERS = ("features.conv1", "features.conv2", "classifier.dense1")
# A frozen point's frozen layers' output (of every target image) is kept in memory up to this size, in each
# process (seed network at cut 2: 18 KB an MNIST image, 0.6 GB for all of them; EfficientNet-Lite0 at cut 1
# and 32 px: 32 KB an image); beyond it the frozen layers run at every step instead.
PREFIX_CACHE_BYTES = 2 << 30



@functools.cache
def backbone_stages(backbone: str) -> tuple[str, ...]:
    """The backbone's stages in order (cut n copies the first n), e.g. stem, layer1..layer4 for a ResNet, from
    its record (no network built); an unknown name is one line."""
    return architecture(backbone).stages


def check_backbone_study(kind: str, backbone: str, cuts: tuple[int, ...]) -> None:
    """The options that depend on the backbone: it must be known, and a freeze study's cuts within its stages."""
    stages = backbone_stages(backbone)
    bad = [n for n in cuts if not 1 <= n <= len(stages)]
    if kind == "freeze" and (bad or not cuts):
        raise UserError(f"--cuts {bad[0] if bad else ''}: {backbone} has {len(stages)} stages "
                        f"({', '.join(stages)}); give cuts from 1 to {len(stages)}")


@dataclass(frozen=True)
class StudyConfig:
    """A study: the split experiment's configuration, then what varies (shots or cuts), the arms, the seeds."""

    kind: str
    split: SplitConfig = field(default_factory=SplitConfig)
    seeds: int = 3
    shots: tuple[int, ...] = STUDY_SHOTS  # shots study: images per target class (0: all)
    cuts: tuple[int, ...] = STUDY_CUTS  # freeze study: cut after the first n weight layers
    arms: tuple[str, ...] = ()  # default: every arm of the kind
    min_steps: int = STUDY_MIN_STEPS

    def __post_init__(self) -> None:
        if self.kind not in STUDY_KINDS:
            raise UserError(f"study {self.kind!r}: unknown; choose one of {', '.join(STUDY_KINDS)}")
        if self.split.shots is not None or self.split.train_fraction is not None or not self.split.scratch:
            raise UserError("shots, train_fraction and scratch are the study's to vary: give a shots study's "
                            "--shots, and its --arms")
        if self.seeds < 2:
            raise UserError(f"--seeds {self.seeds}: a 95% interval needs 2 seeds or more")
        if self.seeds > STUDY_MAX_SEEDS:  # refused before a plan of that many points is built
            raise UserError(f"--seeds {self.seeds}: at most {STUDY_MAX_SEEDS} (each seed trains every point of the "
                            f"study again); give {STUDY_MAX_SEEDS} or fewer")
        unknown = [a for a in self.arms if a not in ARMS[self.kind]]
        if unknown:
            raise UserError(f"--arms: unknown arm {unknown[0]!r}; the {self.kind} study's arms are "
                            f"{', '.join(ARMS[self.kind])}")
        if self.kind == "shots" and (not self.shots or any(n < 0 for n in self.shots)):
            raise UserError("--shots: give images per class as positive numbers or all, e.g. 1,5,10,all")
        if any(n >= RADIX["size"] for n in self.shots):  # a point's seed holds its shot count as one digit
            raise UserError(f"--shots: at most {RADIX['size'] - 1} images per class; give all for every image")
        if self.split.backbone is not None:  # its stages are the cuts
            check_backbone_study(self.kind, self.split.backbone, self.cuts)
        bad = [n for n in self.cuts if not 1 <= n <= len(WEIGHT_LAYERS)]
        if self.kind == "freeze" and self.split.backbone is None and (bad or not self.cuts):
            raise UserError(f"--cuts {bad[0] if bad else ''}: the seed network has {len(WEIGHT_LAYERS)} weight "
                            f"layers before its output ({', '.join(WEIGHT_LAYERS)}); give cuts from 1 to "
                            f"{len(WEIGHT_LAYERS)}")
        if self.min_steps < 1:
            raise UserError(f"--min-steps must be at least 1, got {self.min_steps}")

    @property
    def chosen_arms(self) -> tuple[str, ...]:
        return self.arms or ARMS[self.kind]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["shots"] = [n or "all" for n in self.shots] if self.kind == "shots" else None
        d["cuts"] = list(self.cuts) if self.kind == "freeze" else None
        d["arms"] = list(self.chosen_arms)
        return d


@dataclass(frozen=True)
class Point:
    """One training of a study: an arm at a shot count (shots) or a cut (freeze), for one seed."""

    arm: str
    seed: int
    shots: int | None = None  # 0: all
    cut: int | None = None

    @property
    def name(self) -> str:
        x = (f"shots={self.shots or 'all'}" if self.shots is not None else
             f"cut={self.cut}" if self.cut is not None else "")
        return "/".join(p for p in (self.arm, x, f"seed={self.seed}") if p)


@dataclass(frozen=True)
class Unit:
    """The trainings one process takes at a time: `base` (baseA or baseB of `seed`, or None), trained first,
    then `points`, which copy from it. Units share nothing but the saved weights of finished trainings."""

    seed: int
    base: str | None
    points: tuple[Point, ...]

    @property
    def trainings(self) -> list[str]:
        """The names of its trainings in order: its base network (where it trains one), then its points."""
        return [Point(self.base, self.seed).name] * (self.base is not None) + [p.name for p in self.points]


def shot_indices(labels: np.ndarray, shots: int, seed: int) -> np.ndarray:
    """`shots` training images of every class (0: all), drawn with `seed`, nested: a seed's 10-shot set holds
    its 5-shot set, so shot counts differ by the images added and not by a new draw."""
    if shots == 0:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(labels == c))[:shots] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep))
