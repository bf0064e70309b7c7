"""Every file transferkit writes is strict JSON: no NaN or Infinity in any kind of run folder, export or metadata;
a non-finite number on its way out is refused naming its field, and the run says failed with that message."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from safetensors import safe_open

from transferkit.cli import main
from transferkit.errors import UserError
from transferkit.jsonfile import NonFiniteNumber, parse_json, strict_json


def _refuse(name: str) -> object:
    raise AssertionError(f"{name} in a file transferkit wrote")


def strictly(text: str, where: str) -> object:
    """json.loads as a strict reader does it (a JavaScript or jq user's), independent of transferkit's reader."""
    try:
        return json.loads(text, parse_constant=_refuse)
    except ValueError as e:
        raise AssertionError(f"{where}: not JSON ({e})") from None


def check_folder(folder: Path) -> int:
    """Read every JSON text under `folder` strictly: *.json files, safetensors metadata, ONNX metadata, and the
    CSVs for nan/inf cells. Returns how many texts were read."""
    read = 0
    for path in sorted(folder.rglob("*")):
        if path.suffix == ".json":
            strictly(path.read_text(encoding="utf-8"), str(path))
            read += 1
        elif path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                for key, value in (f.metadata() or {}).items():
                    strictly(value, f"{path} metadata {key}")
                    read += 1
        elif path.suffix == ".onnx":
            import onnx

            for prop in onnx.load(str(path), load_external_data=False).metadata_props:
                if prop.value[:1] in "[{":
                    strictly(prop.value, f"{path} metadata {prop.key}")
                    read += 1
        elif path.suffix == ".csv":
            cells = {c.strip().lower() for line in path.read_text().splitlines() for c in line.split(",")}
            assert not cells & {"nan", "inf", "-inf", "infinity"}, path
    return read


def test_every_kind_of_run_folder_reads_back_strictly(split_run, finetune_run, shots_study, photos, tmp_path,
                                                     monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    exported = tmp_path / "export" / "model.onnx"
    main(["export", str(split_run), "--out", str(exported)])
    main(["export", str(finetune_run), "--format", "torchscript", "--out", str(tmp_path / "export" / "ft.pt")])
    assert exported.with_name("model.onnx.json").is_file()
    ranked = tmp_path / "rank"
    kinds = {"run": split_run, "finetune": finetune_run, "study": shots_study, "export": tmp_path / "export",
             "rank": ranked}
    for kind, folder in kinds.items():
        if kind == "rank":  # random weights on a few noisy images: features that separate nothing, or everything
            main(["rank", str(photos), "--backbones", "resnet18:none", "--image-size", "32", "--verify",
                  "--epochs", "1", "--precision", "fp32", "--out", str(ranked), "--quiet"])
            assert (ranked / "rank.json").is_file()
        assert check_folder(folder) >= 2, kind  # at least status / results, or a model and its sidecar


def test_a_non_finite_number_is_refused_naming_its_field():
    with pytest.raises(NonFiniteNumber, match=r"results.json: field phases.transfer.history\[1\].val_loss is nan"):
        strict_json({"phases": {"transfer": {"history": [{"val_loss": 0.5}, {"val_loss": math.nan}]}}},
                    what="results.json")
    with pytest.raises(NonFiniteNumber, match="field speedup is inf"):
        strict_json({"speedup": math.inf})
    assert isinstance(NonFiniteNumber("x"), UserError)  # the CLI's one line, not a traceback
    assert strict_json({"a": [1.5, None, "nan"]}, indent=None) == '{"a": [1.5, null, "nan"]}'
    for text in ("NaN", '{"a": Infinity}', "[-Infinity]"):
        with pytest.raises(ValueError):
            parse_json(text)


def test_a_run_whose_record_turns_non_finite_says_failed_with_the_field_and_keeps_the_last_good_file(tmp_path):
    from transferkit.experiments.run_folder import RunFolder
    from transferkit.reporting.status import read_status
    from transferkit.training.distributed import Distributed

    run = RunFolder.create(Distributed(), "x", tmp_path / "run")
    with pytest.raises(NonFiniteNumber, match="field metrics.ece is nan"):
        with run.recording():
            run.begin({"experiment": "run", "config": {}, "phases": {}, "metrics": {"ece": 0.1}}, {})
            run.results["metrics"]["ece"] = math.nan
            run.save_results()
    assert parse_json((tmp_path / "run" / "results.json").read_text())["metrics"] == {"ece": 0.1}
    status = read_status(tmp_path / "run")
    assert status["status"] == "failed" and "metrics.ece is nan" in status["error"]
