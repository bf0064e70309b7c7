"""`--track mlflow[=URI]`: one MLflow run per transferkit run, through MLflow's client (no `mlflow.start_run`,
whose active run is process-wide state).

URI: a tracking URI (file:, sqlite:, http:...) or a folder, by default ./mlruns, a file store that needs no
server. MLflow 3 refuses a file store unless MLFLOW_ALLOW_FILE_STORE is true; a file store asked for here
sets it for this process. Metrics are named `<figure>/<phase>` (val_accuracy/transfer beside
val_accuracy/scratch), the final ones `final/<phase>/<metric>`; a study's points and a rank's candidates are
child runs of the run.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .tracker import Tracker, now_ms
from .tracking_tensorboard import DEFAULT_DIR

DEFAULT_URI = "mlruns"  # a folder of the working directory, as MLflow's own default
EXPERIMENT = "transferkit"
PARAMS_PER_CALL = 100  # MLflow's limit for one log_batch
LEFT_OUT = ("checkpoint",)  # files of the run folder not logged as artifacts: a checkpoint is the run's, not a result


def tracking_uri(where: str | None) -> str:
    """A URI as given, or a folder (default ./mlruns) as its absolute file: URI, so that a resumed run finds it
    from any working directory."""
    if where is not None and re.match(r"^[a-z][a-z0-9+.-]*:", where) and not re.match(r"^[A-Za-z]:[\\/]", where):
        return where
    return Path(where or DEFAULT_URI).resolve().as_uri()


def metric_key(key: str) -> str:
    """A key MLflow accepts (letters, digits, _ - . / and spaces): a study point's `seed=0` as `seed_0`."""
    return re.sub(r"[^\w\-./ ]", "_", key)


class MlflowTracker(Tracker):
    name = "mlflow"

    def __init__(self, where: str | None, run_dir: Path, state: dict | None, resumed: bool):
        from mlflow.entities import Metric, Param  # the mlflow extra, checked by TrackSpec.parse
        from mlflow.tracking import MlflowClient

        self.metric_class, self.param_class = Metric, Param
        uri = state["uri"] if state is not None else tracking_uri(where)
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # asked for by name: see the docstring
        self.client, self.uri = MlflowClient(tracking_uri=uri), uri
        if state is not None:  # a resumed run continues its MLflow run
            self.run_id = state["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            experiment = self.client.get_experiment_by_name(EXPERIMENT)
            experiment_id = (experiment.experiment_id if experiment is not None
                             else self.client.create_experiment(EXPERIMENT))
            self.run_id = self.client.create_run(experiment_id, run_name=run_dir.name,
                                                 tags={"transferkit.run_dir": str(run_dir.resolve())}).info.run_id
        self.experiment_id = self.client.get_run(self.run_id).info.experiment_id
        self.resumed, self.logged = resumed, {}

    def state(self) -> dict:
        return {"uri": self.uri, "run_id": self.run_id}

    def _metrics(self, run_id: str, values: dict[str, float], step: int) -> None:
        stamp = now_ms()
        self.client.log_batch(run_id, metrics=[self.metric_class(metric_key(k), v, stamp, step)
                                               for k, v in values.items()])

    def params(self, params: dict[str, str]) -> None:
        items = [self.param_class(metric_key(k), v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), PARAMS_PER_CALL):
            self.client.log_batch(self.run_id, params=items[i:i + PARAMS_PER_CALL])

    def epoch(self, phase: str, step: int, values: dict[str, float]) -> None:
        if phase not in self.logged:  # the last epoch an earlier start logged: a resumed run logs none twice
            history = self.client.get_metric_history(self.run_id, metric_key(f"loss/{phase}")) if self.resumed else []
            self.logged[phase] = max((m.step for m in history), default=0)
        if step <= self.logged[phase]:
            return
        self._metrics(self.run_id, {f"{k}/{phase}": v for k, v in values.items()}, step)
        self.logged[phase] = step

    def finals(self, phase: str, step: int, values: dict[str, float]) -> None:
        self._metrics(self.run_id, {f"final/{phase}/{k}": v for k, v in values.items()}, step)

    def child(self, name: str, values: dict[str, float]) -> None:
        run_id = self.client.create_run(self.experiment_id, run_name=name,
                                        tags={"mlflow.parentRunId": self.run_id}).info.run_id
        self._metrics(run_id, values, 0)
        self.client.set_terminated(run_id, "FINISHED")

    def finish(self, run_dir: Path, figures: list[Path]) -> None:
        """The run folder's files as artifacts (results.json, history.csv, report.html, the figures, the
        weights, an exported model when there is one), then the run marked finished."""
        tensorboard = run_dir / DEFAULT_DIR  # its own tracker has it
        for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
            if path.name.startswith(LEFT_OUT) or tensorboard in path.parents:
                continue
            parent = path.parent.relative_to(run_dir).as_posix()
            self.client.log_artifact(self.run_id, str(path), None if parent == "." else parent)
        self.client.set_terminated(self.run_id, "FINISHED")
