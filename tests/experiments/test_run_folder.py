"""The run folder and the phase on their own, without training a network."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from transferkit import UserError
from transferkit.config import ModelConfig, SplitConfig
from transferkit.experiments.phase import Phase, train_phase
from transferkit.experiments.run_folder import RunFolder
from transferkit.experiments.runtime import Runtime
from transferkit.models import SeedCNN, count_params
from transferkit.reporting import PhaseResult
from transferkit.reporting.console import make_console
from transferkit.reporting.results import check_results
from transferkit.training import EpochRecord, resolve_precision
from transferkit.training.checkpoint import CHECKPOINT_FILE
from transferkit.training.distributed import Distributed

MAIN, SECOND = Distributed(rank=0), Distributed(rank=1, world_size=1)  # rank 1 without a process group


def _new_run(tmp_path, config: dict) -> RunFolder:
    run = RunFolder.create(MAIN, "test", out=tmp_path / "run")
    run.begin({"config": config, "phases": {}}, {"world_size": 1})
    return run


def _tiny_model() -> SeedCNN:
    return SeedCNN(ModelConfig(filters=2, dense_units=4), 1, (8, 8), 2)


def _recorded(model) -> PhaseResult:
    return PhaseResult(name="p", classes=["a", "b"], train_samples=4, held_out_samples=2, epochs=1, train_seconds=1.0,
                       loss=0.5, accuracy=0.75, params=count_params(model),
                       history=[EpochRecord(1, 0.6, 0.5, 0.5, 0.75, 1.0)], confusion_matrix=[[1, 0], [0, 1]],
                       misclassified=[{"index": 1, "true": 1, "predicted": 0}])


def test_a_phases_held_out_figures_are_named_by_the_split_they_were_measured_on(tmp_path):
    model = _tiny_model()
    tested = _recorded(model).to_dict()
    validated = dataclasses.replace(_recorded(model), validated_on="val").to_dict()
    assert tested["test_accuracy"] == validated["val_accuracy"] == 0.75 and "val_accuracy" not in tested
    assert validated["val_samples"] == 2 and validated["val_loss"] == 0.5 and "test_accuracy" not in validated
    # A folder written before the keys named the split (test_* on a validation split) reads as it was written.
    older = {k.replace("val_", "test_") if k in ("val_samples", "val_loss", "val_accuracy") else k: v
             for k, v in validated.items()}
    read = PhaseResult.from_dict("p", older)
    assert (read.accuracy, read.loss, read.held_out_samples, read.validated_on) == (0.75, 0.5, 2, "val")
    # One that says no split (a study's point, a run from before) keeps saying none when written again (resumed).
    unsaid = PhaseResult.from_dict("p", _recorded(model).to_dict())
    assert unsaid.validated_on is None and "validated_on" not in unsaid.to_dict() and "test_accuracy" in tested
    for phase in (tested, validated, older):
        check_results(tmp_path / "results.json", {"config": {}, "phases": {"p": phase}})
    with pytest.raises(UserError, match=r"phases.p.val_accuracy must be"):
        check_results(tmp_path / "results.json", {"config": {}, "phases": {"p": {**validated, "val_accuracy": 2.0}}})


def test_resuming_with_another_option_is_refused_naming_it(tmp_path):
    config = SplitConfig().to_dict()
    _new_run(tmp_path, config)
    other = SplitConfig(head="reset").to_dict()
    with pytest.raises(UserError, match=r"another configuration \(head was 'reuse', now 'reset' \(--head reuse\)\)"):
        RunFolder.resume(tmp_path / "run", other, MAIN)
    assert RunFolder.resume(tmp_path / "run", config, MAIN).results["config"] == config


def test_rank_1_writes_nothing(tmp_path):
    config = SplitConfig().to_dict()
    _new_run(tmp_path, config)
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    run = RunFolder.resume(tmp_path / "run", config, SECOND)
    model = _tiny_model()
    run.results["phases"]["p"] = _recorded(model).to_dict()
    run.status("running", phase="p")
    run.save_results()
    run.save_phase("p", model, ["a", "b"], {"kind": "scale"}, {}, last=False)
    run.complete()
    with pytest.raises(RuntimeError), run.recording():
        raise RuntimeError("a crash on rank 1")
    after = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert after == before


def test_a_phase_recorded_as_finished_is_read_again_not_trained(tmp_path):
    run = _new_run(tmp_path, {})
    trained = _tiny_model()
    run.results["phases"]["p"] = _recorded(trained).to_dict()
    run.save_weights("p", trained, ["a", "b"], {"kind": "scale"})
    fresh = _tiny_model()  # other random weights
    assert not torch.equal(fresh.classifier.dense1.weight, trained.classifier.dense1.weight)

    def never():
        raise AssertionError("a finished phase must not train again")

    images = torch.zeros(2, 8, 8, dtype=torch.uint8).numpy()
    phase = Phase("p", fresh, torch.optim.SGD(fresh.parameters(), lr=0.1), never, 1, "constant", ["a", "b"], [],
                  images.__getitem__, never)
    runtime = Runtime(MAIN, resolve_precision("fp32"), make_console(quiet=True), lambda: False)
    result, mistakes = train_phase(phase, run, runtime)
    assert result.to_dict() == run.results["phases"]["p"]
    for name, tensor in load_file(str(tmp_path / "run" / "weights" / "p.safetensors")).items():
        assert torch.equal(fresh.state_dict()[name], tensor), name
    assert mistakes.examples() == [{"index": 1, "true": 1, "predicted": 0}]


def test_completion_deletes_the_checkpoint_and_says_complete(tmp_path):
    run = _new_run(tmp_path, {})
    (tmp_path / "run" / CHECKPOINT_FILE).write_bytes(b"state of the last epoch")
    run.complete()
    assert not (tmp_path / "run" / CHECKPOINT_FILE).exists()
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "complete"
    assert (tmp_path / "run" / "report.html").is_file()


def test_force_into_an_earlier_runs_folder_clears_its_record_and_checkpoint(tmp_path):
    old = _new_run(tmp_path, {"old": True})
    (old.path / CHECKPOINT_FILE).write_bytes(b"an earlier run's training state")
    (old.path / "study.json").write_text("{}")
    with pytest.raises(UserError, match="holds a run already"):
        RunFolder.create(MAIN, "test", out=old.path)
    new = RunFolder.create(MAIN, "test", out=old.path, force=True)
    assert not (new.path / CHECKPOINT_FILE).exists() and not (new.path / "study.json").exists()
    assert json.loads((new.path / "status.json").read_text())["status"] == "running"


def test_a_resumed_run_says_running_again(tmp_path):
    config = SplitConfig().to_dict()
    _new_run(tmp_path, config)
    (tmp_path / "run" / "status.json").write_text('{"status": "interrupted"}')
    run = RunFolder.resume(tmp_path / "run", config, MAIN)
    run.begin({}, {"world_size": 1})
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "running"


def test_the_default_folder_name_is_safe_whatever_the_data_sets_name(tmp_path, monkeypatch):
    from transferkit.experiments.run_folder import folder_name

    assert folder_name("mnist") == "mnist" and folder_name("cifar10-jpg") == "cifar10-jpg"
    assert folder_name("my\nphotos") == "my_photos" and folder_name("a b/c") == "a_b_c"
    assert folder_name("\n\n") == "run" and len(folder_name("x" * 500)) == 80
    monkeypatch.chdir(tmp_path)
    run = RunFolder.create(Distributed(), "rank-bad\nname")
    assert run.path.parent.name == "runs"
    assert "\n" not in str(run.path) and run.path.name.endswith("-rank-bad_name")
