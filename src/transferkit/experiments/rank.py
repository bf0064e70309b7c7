"""`transferkit rank`: which pretrained backbone (or, with --layers, which of its stages) suits the user's
images, scored on frozen features (LogME, kNN, a linear probe) and, with --verify, checked against heads
trained as finetune trains them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from rich.console import Console
from rich.text import Text
from torch import nn

from ..config import EVAL_BATCH_SIZE, HEAD_MIN_STEPS, RankConfig, RunOptions, Stopping
from ..data.archive import open_tree
from ..data.folders import find_layout
from ..data.preprocess import InputTransform
from ..errors import UserError
from ..models import BackboneClassifier, count_params, layer_rows, load_backbone_weights, new_head
from ..models.stages import PooledStages
from ..reporting.rank import RankRow, rank_figure, rank_table, recommendation
from ..scores import SCORES, kendall_tau, order_by_scores, score_features
from ..training import Precision, TensorBatches, freeze, images_to_tensor, make_optimizer
from ..training.distributed import Distributed
from .candidates import Candidate, plan_candidates
from .feature_pass import backbone_identity, frozen_features
from .image_data import ImageData, read_image_data
from .phase import Phase, PhaseInputs, train_phase
from .run_folder import RunFolder, weights_source
from .runtime import Runtime
from .spine import run_experiment


@dataclass
class RankResult:
    config: RankConfig
    results: dict
    table: list[RankRow]  # best first
    recommendation: str
    figures: dict[str, Figure]
    run_dir: Path | None

    def summary(self) -> str:
        return self.recommendation


def rank(data: str | Path, *, backbones: str | list[str] | tuple[str, ...] | None = None,
         **options: object) -> RankResult:
    """Score pretrained backbones on the image folder data set `data` and return the table, best first.

    `backbones`: names (a list, or one string separated by commas), each optionally `name:weights` (imagenet,
    none, a file); default: every backbone whose weights are here. `options` are RankConfig fields
    (`layers=True`, `verify=True`, `epochs=5`, `limit=500`, `control=False`), and RunOptions (`out`,
    `resume`, `force`, `save`, `verbose`, `device`, `track`) as for run_split.
    """
    life = RunOptions.take(options)
    if isinstance(backbones, str):
        backbones = [b.strip() for b in backbones.split(",") if b.strip()]
    config = RankConfig(data=str(data), backbones=None if backbones is None else tuple(backbones),
                        **Stopping.given_epochs(options))
    return run_experiment(RankExperiment(config), life)


class RankExperiment:
    """rank on the spine (spine.py): each candidate backbone's frozen features scored (and, with verify, a
    head trained on them), one candidate at a time, so a resumed rank scores only the ones left."""

    eval_batch_size = EVAL_BATCH_SIZE

    def __init__(self, config: RankConfig):
        self.config, self.precision = config, config.precision
        self.folder_name = f"rank-{Path(config.data).stem}"

    def prepare(self, ranks: Distributed, resumed: RunFolder | None) -> None:
        if ranks.world_size > 1:
            raise UserError("transferkit rank runs in one process; start it without torchrun")
        self.candidates, self.skipped = plan_candidates(self.config)
        if resumed is None:  # the data's layout is read before the folder exists, so a data error leaves no folder
            _check_layout(self.config)

    def header(self, console: Console, precision: Precision) -> None:
        config = self.config
        console.print(Text.assemble(("transferkit rank", "bold"), f" {len(self.candidates)} candidate(s) on "
                                    f"{config.data}{' by stage' if config.layers else ''}, precision {precision.name}"))
        for s in self.skipped:
            console.print(f"skipped {s['backbone']}: {s['reason']}")

    def record(self, precision: Precision, ranks: Distributed) -> tuple[dict, dict]:
        config = self.config
        return {"experiment": "rank", "dataset": {"origin": config.data}, "config": config.to_dict(),
                "skipped": self.skipped, "candidates": [], "done": [], "phases": {},
                }, ranks.describe(config.batch_size, config.lr)

    def train(self, run: RunFolder, runtime: Runtime, results: dict) -> None:
        images = _Images(self.config)
        for candidate in self.candidates:
            if candidate.label in results["done"]:
                runtime.console.print(f"{candidate.label}: scored before")
                continue
            if candidate.control and not any(not r["control"] for r in results["candidates"]):
                break  # the control is the floor of the others: with none scored it is not worth its pass
            rows = _score_candidate(candidate, self.config, images, results, run, runtime)
            if rows is None:
                continue
            results["candidates"] += rows
            results["done"].append(candidate.label)
            run.save_results()

    def finish(self, run: RunFolder, results: dict) -> None:
        if not any(not r["control"] for r in results["candidates"]):
            raise UserError("no candidate's weights could be loaded: " + "; ".join(s["reason"] for s in results["skipped"]))
        rows = [results["candidates"][i] for i in order_by_scores(results["candidates"])]
        results["ranking"] = [r["name"] for r in rows]
        if self.config.verify:
            results["kendall_tau"] = kendall_taus(rows)
            if any(r["verified"].get("failed") for r in rows):
                results["kendall_tau_with_failed"] = kendall_taus(rows, with_failed=True)
        self.table = table = [RankRow.of(position + 1, r) for position, r in enumerate(rows)]
        results["recommendation"] = recommendation(table)
        self.figures = {"rank": rank_figure(table)}
        run.save_results()
        run.save_rank([row.to_dict() for row in table])
        run.save_figures(self.figures)

    def closing(self, console: Console, run: RunFolder, results: dict) -> RankResult:
        console.print(rank_table(self.table, results.get("kendall_tau"), results.get("kendall_tau_with_failed")))
        console.print(results["recommendation"])
        if run.path is not None:
            console.print(f"run folder: {run.path} (report.html)")
        return RankResult(self.config, results, self.table, results["recommendation"], self.figures, run.path)


class _Images:
    """The data set decoded at one backbone's size at a time (the image cache keeps every size decoded)."""

    def __init__(self, config: RankConfig):
        self.config, self.size, self.data = config, None, None

    def at(self, size: int, results: dict) -> ImageData:
        if size != self.size:
            c = self.config
            self.data = read_image_data(c.data, c.val_fraction, c.seed, c.limit, "auto", size, 1, None, 0)
            self.size = size
            if self.data.loading.stream:
                raise UserError(f"{c.data}: {self.data.loading.reason}; rank keeps the decoded images in memory: "
                                "give --limit N (images per split)")
            _check_classes(self.data)
            results["dataset"].update({"origin": self.data.origin, "class_names": self.data.classes,
                                       "train_samples": len(self.data.train[1]),
                                       "val_samples": len(self.data.val[1]), "skipped": self.data.skipped})
        return self.data


def _check_layout(config: RankConfig) -> None:
    """The data set's folders and classes, listed without decoding an image (its errors are the user's)."""
    tree = open_tree(config.data)
    try:
        find_layout(tree, config.val_fraction, config.seed)
    finally:
        tree.close()


def _check_classes(data: ImageData) -> None:
    counts = np.bincount(data.train[1], minlength=len(data.classes))
    few = [f"{c} ({n})" for c, n in zip(data.classes, counts, strict=True) if n < 2]
    if few:
        raise UserError(f"{data.origin}: class(es) {', '.join(few)} have fewer than 2 training images, too few for "
                        "the probe and the kNN; add images (or lower --val-fraction)")
    if len(data.val[1]) == 0:
        raise UserError(f"{data.origin}: no validation images; add a val/ folder or raise --val-fraction")


def _score_candidate(candidate: Candidate, config: RankConfig, images: _Images, results: dict, run: RunFolder,
                     runtime: Runtime) -> list[dict] | None:
    """The rows of one candidate (one per stage with --layers, else one): its frozen pass, scores, and the
    verified accuracy; None when its ImageNet weights are not here (recorded as skipped)."""
    torch.manual_seed(config.seed)  # random weights (the control) are drawn alike in every run
    model = BackboneClassifier(candidate.backbone, 2)
    try:
        pre = load_backbone_weights(model, weights_source(candidate.weights)).at_size(config.image_size)
    except UserError as e:
        if candidate.weights != "imagenet":
            raise
        results["skipped"].append({"backbone": candidate.backbone, "reason": str(e)})
        runtime.console.print(f"skipped {candidate.backbone}: {e}")
        return None
    data = images.at(pre.resize, results)
    freeze(model.features, eval_mode=True)
    identity = backbone_identity(candidate.backbone, model.features, pre, runtime.precision)
    net: nn.Module = model.features
    if config.layers and not candidate.control:
        net, identity = PooledStages.of(candidate.backbone, model.features, pre.crop), identity + "|stages"
    transform = InputTransform(pre.crop, pre.mean, pre.std)
    train_y, val_y = torch.from_numpy(data.train[1]).long(), torch.from_numpy(data.val[1]).long()
    (train_f, val_f), record = frozen_features(
        candidate.label, nn.Sequential(transform, net).to(runtime.device),
        [images_to_tensor(data.train[0], scale=False), images_to_tensor(data.val[0], scale=False)],
        identity, pre.crop, runtime)
    parts = net.split(train_f) if isinstance(net, PooledStages) else {None: train_f}
    val_parts = net.split(val_f) if isinstance(net, PooledStages) else {None: val_f}
    rows = []
    for layer, train_part in parts.items():
        name = candidate.label if layer is None else f"{candidate.label} {layer}"
        scored = score_features(train_part.contiguous(), train_y, val_parts[layer].contiguous(), val_y)
        runtime.console.print(f"{name}: " + ", ".join(_shown(s, scored) for s in SCORES))
        row = {"name": name, "backbone": candidate.backbone, "weights": candidate.weights, "layer": layer,
               "control": candidate.control, "params": count_params(model.features).total,
               "feature_size": int(train_part.shape[1]), "input_size": pre.crop, "feature_pass": record, **scored}
        if config.verify:
            row["verified"] = _verify(name, train_part.contiguous(), train_y, val_parts[layer].contiguous(), val_y,
                                      data, config, run, runtime)
        rows.append(row)
    return rows


def _shown(score: str, scored: dict) -> str:
    value = scored["scores"][score]
    if value is None:
        return f"{score} absent ({scored['absent'][score]})"
    text = f"{score} {value:.4f} ({scored['seconds'][score]:.2f}s)"
    at_bound = (scored["logme"] or {}).get("classes_at_bound", 0) if score == "logme" else 0
    return text + (f" [{at_bound} class(es) at the evidence's bound: the features separate them]" if at_bound else "")


def _verify(name: str, train_f: torch.Tensor, train_y: torch.Tensor, val_f: torch.Tensor, val_y: torch.Tensor,
            data: ImageData, config: RankConfig, run: RunFolder, runtime: Runtime) -> dict:
    """Train seed 004's head on the stored features as finetune's frozen phase does (same seed, epochs, batch,
    Adam and cosine schedule for every candidate); the validation accuracy of the epoch it kept (the lowest
    validation loss, config.Stopping)."""
    torch.manual_seed(config.seed)
    head = new_head(train_f.shape[1], len(data.classes)).to(runtime.device)
    optimizer = make_optimizer(list(head.parameters()), config.train)
    start_time = time.perf_counter()
    phase = Phase(f"verify {name}", head, optimizer, lambda: PhaseInputs(
        head, TensorBatches(train_f, train_y, config.batch_size, config.seed, device=runtime.device), val_f, val_y),
        config.epochs, "cosine", data.classes, layer_rows(head, (train_f.shape[1],)), data.val[0].__getitem__,
        lambda: (len(train_y), len(val_y)), stopping=config.train.stopping(HEAD_MIN_STEPS),
        validation_split=data.validation_split)
    result, _ = train_phase(phase, run, runtime)
    run.results["phases"][phase.name] = result.to_dict()  # its history, confusion matrix, mistakes
    # A head no better than always answering the most common validation class did not train: its accuracy says
    # nothing of the features, so it is flagged and left out of the taus.
    chance = float(np.bincount(val_y.numpy()).max() / len(val_y))
    failed = result.accuracy <= chance
    if failed:
        runtime.console.print(f"verify {name}: the head ended at {result.accuracy:.4f}, no better than always "
                              f"answering the most common class ({chance:.4f}): flagged, left out of the Kendall taus")
    return {"accuracy": result.accuracy, "loss": result.loss, "epochs": result.epochs,
            "seconds": round(time.perf_counter() - start_time, 3), "phase": phase.name, "chance": chance,
            "failed": failed, "stopping": result.stopping}


def kendall_taus(rows: list[dict], with_failed: bool = False) -> dict[str, float | None]:
    """Kendall's tau-b between each score's order (and the combined ranking's) and the verified accuracies', over
    the candidates whose head trained (all of them `with_failed`) and whose score is present."""
    rows = [r for r in rows if with_failed or not r["verified"].get("failed")]
    taus = {}
    for s in SCORES:
        pairs = [(r["scores"][s], r["verified"]["accuracy"]) for r in rows if r["scores"].get(s) is not None]
        taus[s] = kendall_tau(*zip(*pairs, strict=True)) if len(pairs) > 1 else None
    taus["ranking"] = kendall_tau([-i for i in range(len(rows))], [r["verified"]["accuracy"] for r in rows])
    return taus
