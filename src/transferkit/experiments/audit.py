"""`transferkit audit`: know a folder data set before training on it. One frozen feature pass of a pretrained
backbone (from the feature store when done before), then exact and near duplicates within and across splits (the
cross-split ones are leakage), likely label errors (out-of-fold probes, cleanlab's confident learning), outliers,
and the folder's facts. Writes audit.json, issues.csv and report.html; never moves or deletes a file."""

from __future__ import annotations

import importlib.util
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import AuditConfig, RunOptions
from ..data.preprocess import InputTransform
from ..errors import UserError
from ..models import BackboneClassifier, load_backbone_weights
from ..reporting import describe_environment
from ..reporting.audit import write_audit
from ..training import freeze, images_to_tensor, resolve_precision
from . import audit_checks as checks
from .audit_files import AuditFiles, read_audit_files
from .feature_pass import backbone_identity, frozen_features
from .run_folder import folder_name
from .runtime import running, start


@dataclass
class AuditResult:
    """The audit's record (audit.json's content) and the folder it was written to (None with save=False)."""

    results: dict
    out_dir: Path | None

    @property
    def findings(self) -> dict[str, list]:
        return self.results["findings"]

    def summary(self) -> str:
        counts = self.results["counts"]
        return ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in counts.items())


def audit(data: str | Path, *, backbone: str = AuditConfig.backbone, out: str | Path | None = RunOptions.out,
          force: bool = RunOptions.force, save: bool = RunOptions.save, verbose: bool = RunOptions.verbose,
          device: str = RunOptions.device, **options: object) -> AuditResult:
    """Check the image folder data set `data` and return the findings; `options` are AuditConfig fields
    (`image_size`, `near_threshold`, `pixel_threshold`, `folds`, `seed`, `precision`). Files are only read."""
    config = AuditConfig(data=str(data), backbone=backbone, **options)
    if importlib.util.find_spec("cleanlab") is None:
        raise UserError('transferkit audit needs cleanlab: pip install "transferkit[audit]"')
    out_dir = None
    if save:
        out_dir = Path(out) if out is not None else Path("runs") / (
            f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-audit-{folder_name(Path(config.data).stem)}")
        _check_out(out_dir, force)
    ranks, console = start(device, verbose)
    if ranks.world_size > 1:
        raise UserError("transferkit audit runs in one process; start it without torchrun")
    precision = resolve_precision(config.precision, device=ranks.device)
    started = time.perf_counter()
    model = BackboneClassifier(config.backbone, 2)
    pre = load_backbone_weights(model, "imagenet").at_size(config.image_size)
    console.print(f"transferkit audit {config.data} on frozen {config.backbone} features ({pre.crop} px)")
    t = time.perf_counter()
    files = read_audit_files(config.data, pre.resize)
    seconds = {"read": time.perf_counter() - t}
    freeze(model.features, eval_mode=True)
    identity = backbone_identity(config.backbone, model.features, pre, precision)
    with running(ranks, console, precision) as runtime:
        (features,), record = frozen_features(
            config.backbone, nn.Sequential(InputTransform(pre.crop, pre.mean, pre.std), model.features).to(ranks.device),
            [images_to_tensor(files.pixels, scale=False)], identity, pre.crop, runtime)
    seconds["features"] = record["seconds"]
    results = _findings(files, features, config, seconds)
    results.update({"experiment": "audit", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "config": config.to_dict(), "feature_pass": record,
                    "environment": describe_environment(precision, ranks.device)})
    results["seconds"]["total"] = round(time.perf_counter() - started, 3)
    # Key order for the reader: what, then the findings, then how.
    results = {k: results[k] for k in ("experiment", "created", "data", "counts", "findings", "facts",
                                       "thresholds", "config", "feature_pass", "seconds", "environment")}
    if out_dir is not None:
        write_audit(out_dir, results, [im.path for im in files.images], files.pixels)
    for kind, n in results["counts"].items():
        console.print(f"{kind.replace('_', ' ')}: {n}")
    if out_dir is not None:
        console.print(f"audit folder: {out_dir} (audit.json, issues.csv, report.html)")
    return AuditResult(results, out_dir)


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file; give a folder for the audit")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"--out {out}: folder exists and is not empty; choose a new folder, or --force to write into it")


def _findings(files: AuditFiles, features: torch.Tensor, config: AuditConfig, seconds: dict) -> dict:
    """Every check on the read files and their features, as audit.json records them (file paths, not indices)."""
    images, names = files.images, files.class_names
    labels = np.asarray([im.label for im in images], np.int64)
    hashes = [im.pixel_hash for im in images]

    def entry(i: int, **more: object) -> dict:
        return {"path": images[i].path, "split": images[i].split, "label": names[images[i].label], **more}

    t = time.perf_counter()
    indices, similarities = checks.nearest_neighbours(features)
    exact = checks.exact_duplicates(hashes)
    near = checks.near_duplicates(indices, similarities, files.thumbs, hashes, config.near_threshold,
                                  config.pixel_threshold)
    outlier_score, fence = checks.outlier_scores(similarities)
    seconds["neighbours"] = time.perf_counter() - t
    t = time.perf_counter()
    folds = checks.fold_count(labels, names, config.folds, files.origin)
    probabilities = checks.out_of_fold_probabilities(features, labels, len(names), folds, config.seed)
    mislabelled = checks.label_issues(labels, probabilities)
    seconds["label_issues"] = time.perf_counter() - t

    exact_groups = [[entry(i) for i in g] for g in exact]
    near_pairs = [{"images": [entry(a), entry(b)], "feature_similarity": round(s, 4), "pixel_correlation": round(p, 4)}
                  for a, b, s, p in near]
    # Leakage: a duplicate (exact or near) whose copies lie in different splits; the validation or test copy is the
    # one to leave out, so it comes second.
    leakage = []
    for g in exact:
        for i in g[1:]:
            if images[i].split != images[g[0]].split:
                leakage.append(_leak(entry, images, g[0], i, "exact", 1.0))
    for a, b, s, _ in near:
        if images[a].split != images[b].split:
            leakage.append(_leak(entry, images, a, b, "near", round(s, 4)))
    outliers = sorted(np.nonzero(outlier_score > fence)[0].tolist(), key=lambda i: -outlier_score[i])
    facts = _facts(files)
    findings = {
        "leakage": leakage,
        "exact_duplicates": exact_groups,
        "near_duplicates": near_pairs,
        "label_issues": [entry(i, suggested=names[s], label_quality=round(q, 4),
                               given_probability=round(float(probabilities[i, labels[i]]), 4),
                               suggested_probability=round(float(probabilities[i, s]), 4))
                         for i, s, q in mislabelled],
        "outliers": [entry(i, score=round(float(outlier_score[i]), 4),
                           neighbours=[images[j].path for j in indices[i, :3]]) for i in outliers],
        "unreadable": files.unreadable,
    }
    n = len(images)
    return {
        "data": {"origin": files.origin, "class_names": list(names), "images": n, "unreadable": len(files.unreadable),
                 "split_from_train": files.split_from_train},
        "counts": {kind: len(v) for kind, v in findings.items()},
        "findings": findings,
        "facts": facts,
        "thresholds": {"near_threshold": config.near_threshold, "pixel_threshold": config.pixel_threshold,
                       "neighbours": int(indices.shape[1]), "outlier_fence": round(fence, 4),
                       "outlier_fence_rule": f"Q3 + {checks.OUTLIER_FENCE:g} IQR of the mean cosine distance to the "
                                             f"{indices.shape[1]} nearest images", "folds": folds,
                       "probe_accuracy": round(float((probabilities.argmax(1) == labels).mean()), 4)},
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }


def _leak(entry, images, a: int, b: int, kind: str, similarity: float) -> dict:
    order = {"train": 0, "val": 1, "test": 2}
    first, second = sorted((a, b), key=lambda i: order.get(images[i].split, 3))
    return {"kind": kind, "images": [entry(first), entry(second)], "feature_similarity": similarity}


def _facts(files: AuditFiles) -> dict:
    """Images per class and split, the class balance, sizes, modes and formats of the files."""
    splits = sorted({im.split for im in files.images}, key=["train", "val", "test"].index)
    per_class = {c: {s: 0 for s in splits} for c in files.class_names}
    for im in files.images:
        per_class[files.class_names[im.label]][im.split] += 1
    train = [per_class[c].get("train", 0) for c in files.class_names]
    return {
        "images_per_class": per_class,
        "images_per_split": {s: sum(1 for im in files.images if im.split == s) for s in splits},
        "imbalance": round(max(train) / max(min(train), 1), 3),  # largest class over smallest, in train
        "sizes": dict(Counter(f"{im.width}x{im.height}" for im in files.images).most_common(10)),
        "distinct_sizes": len({(im.width, im.height) for im in files.images}),
        "modes": dict(Counter(im.mode for im in files.images).most_common()),
        "formats": dict(Counter(im.format for im in files.images).most_common()),
    }
