"""finetune on tiny generated folders with random weights, then predict; the ImageNet weights lookup."""

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from transferkit import UserError, finetune, predict
from transferkit.cli import main
from transferkit.models import BackboneClassifier, load_backbone_weights
from transferkit.models.backbones import imagenet_weights_file


def photo(color, size=(40, 30)) -> bytes:
    rng = np.random.default_rng(sum(color))
    arr = np.clip(np.array(color, dtype=np.int16) + rng.integers(-20, 20, (size[1], size[0], 3)), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos") / "photos"
    for c, color in {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}.items():
        (root / c).mkdir(parents=True)
        for i in range(6):
            (root / c / f"{i}.jpg").write_bytes(photo((color[0] + i, color[1], color[2])))
    return root


@pytest.fixture(scope="module")
def tuned(photos, tmp_path_factory):
    cache = tmp_path_factory.mktemp("xdg")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(cache))
        out = tmp_path_factory.mktemp("runs") / "ft"
        main(["finetune", str(photos), "--backbone", "resnet18", "--weights", "none", "--image-size", "32",
              "--epochs", "2", "--batch-size", "4", "--out", str(out)])
    return out


def test_a_second_finetune_reads_the_frozen_features_from_the_store(photos, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    options = dict(backbone="resnet18", weights="none", image_size=32, epochs=2, batch_size=4, save=False,
                   verbose=False)
    first, again = (finetune(photos, **options) for _ in range(2))
    assert first.results["feature_pass"]["from_store"] is False and first.results["feature_pass"]["computed"] == 18
    assert again.results["feature_pass"]["from_store"] is True and again.results["feature_pass"]["computed"] == 0
    assert _history(again, "frozen") == _history(first, "frozen")
    other = finetune(photos, **{**options, "seed": 1})  # other random weights: other features, computed anew
    assert other.results["feature_pass"]["from_store"] is False


def test_run_folder(tuned):
    results = json.loads((tuned / "results.json").read_text())
    assert results["experiment"] == "finetune" and results["classes"] == ["blue", "green", "red"]
    assert list(results["phases"]) == ["frozen"]
    frozen = results["phases"]["frozen"]
    assert frozen["train_samples"] + frozen["val_samples"] == 18 and len(frozen["history"]) == 2
    assert frozen["params"]["non_trainable"] == sum(
        p.numel() for p in BackboneClassifier("resnet18", 3).features.parameters())
    assert np.asarray(results["confusion_matrix"]).sum() == frozen["val_samples"]
    assert results["preprocessing"] == {"kind": "normalize", "resize": 37, "crop": 32,
                                        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    for name in ("curves", "confusion_matrix", "misclassified"):
        assert (tuned / f"{name}.png").stat().st_size > 1000
    assert json.loads((tuned / "status.json").read_text())["status"] == "complete"


def test_predict_reports_bad_files_and_goes_on(tuned, photos, tmp_path, capsys):
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    good = photos / "red" / "0.jpg"
    predictions = predict(tuned, [good, tmp_path / "broken.jpg", photos / "blue"], top_k=2)
    assert [p.path for p in predictions][:2] == [str(good), str(tmp_path / "broken.jpg")]
    assert len(predictions) == 2 + 6
    assert predictions[1].error and not predictions[1].top
    first = predictions[0]
    assert len(first.top) == 2 and {c for c, _ in first.top} <= {"blue", "green", "red"}
    assert 0 < first.top[1][1] <= first.top[0][1] <= 1
    main(["predict", str(tuned), str(good), "--csv", "--top-k", "1"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "path,rank,class,probability,error" and lines[1].startswith(f"{good},1,")
    main(["predict", str(tuned), str(good), "--json"])
    assert json.loads(capsys.readouterr().out)[0]["predictions"][0]["class"] in {"blue", "green", "red"}
    main(["predict", str(tuned), str(good), "--top-k", "10"])  # 3 classes: 3 columns, not 7 more left empty
    header = capsys.readouterr().out.splitlines()[1]
    assert "#3" in header and "#4" not in header, header
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(tuned), str(good), "--json", "--csv"])
    assert exit_info.value.code == 2 and "--json and --csv print different formats" in capsys.readouterr().err


def test_frozen_stage_keeps_the_backbone_and_unfreezing_trains_it(photos, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    options = dict(backbone="resnet18", weights="none", image_size=32, batch_size=4, save=False, verbose=False)
    torch.manual_seed(0)
    initial = BackboneClassifier("resnet18", 2).features.state_dict()
    frozen = finetune(photos, epochs=1, **options).model.features.state_dict()
    assert all(torch.equal(initial[k], frozen[k]) for k in initial)  # BatchNorm statistics included
    # also when augmentation makes the backbone run inside the training loop
    augmented = finetune(photos, epochs=1, augment=True, **options).model.features.state_dict()
    assert all(torch.equal(initial[k], augmented[k]) for k in initial)
    both = finetune(photos, epochs=1, unfreeze_epochs=1, augment=True, **options)
    assert list(both.phases) == ["frozen", "unfrozen"]
    assert not torch.equal(both.model.features.conv1.weight, initial["conv1.weight"])


def test_imagenet_weights_come_from_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path, _ = imagenet_weights_file("resnet18")
    assert path.parent == tmp_path / "torch" / "hub" / "checkpoints"
    path.parent.mkdir(parents=True)
    reference = torchvision.models.resnet18()
    torch.nn.init.constant_(reference.conv1.weight, 0.125)
    torch.save(reference.state_dict(), path)  # the file torchvision would have downloaded
    model = BackboneClassifier("resnet18", 4)
    pre = load_backbone_weights(model, "imagenet")
    assert (model.features.conv1.weight == 0.125).all()
    assert (pre.resize, pre.crop) == (256, 224)


def test_missing_imagenet_weights_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    model = BackboneClassifier("resnet18", 4)
    with pytest.raises(UserError, match=r"put resnet18-f37072fd.pth \(from https://.*\) in .*hub/checkpoints.*"
                                        r"installed here: efficientnet_lite0, .*\(`--backbone efficientnet_lite0`\)"):
        load_backbone_weights(model, "imagenet", timeout=3)


def test_the_default_backbone_has_its_weights_installed():
    from transferkit.config import DEFAULT_BACKBONE, FinetuneConfig
    from transferkit.models import installed_backbones

    assert FinetuneConfig("photos").backbone == DEFAULT_BACKBONE == "efficientnet_lite0"
    assert DEFAULT_BACKBONE in installed_backbones()


def test_weights_from_a_finetune_run(tuned):
    model = BackboneClassifier("resnet18", 5)
    from transferkit.experiments.run_folder import weights_source

    load_backbone_weights(model, weights_source(str(tuned)))  # the run folder stands for its weights/model.safetensors
    saved = BackboneClassifier.from_spec(json.loads((tuned / "weights" / "model.json").read_text()))
    from safetensors.torch import load_file

    saved.load_state_dict(load_file(tuned / "weights" / "model.safetensors"))
    assert torch.equal(model.features.conv1.weight, saved.features.conv1.weight)


def test_predict_with_a_split_run(tiny_run, tmp_path):
    from transferkit.data import load_mnist

    out = tiny_run
    mnist = load_mnist()
    digit = tmp_path / "seven.png"
    Image.fromarray(mnist.x_test[mnist.y_test == 7][0]).save(digit)
    [p] = predict(out, [digit], top_k=5)
    assert sorted(c for c, _ in p.top) == ["5", "6", "7", "8", "9"]
    assert sum(prob for _, prob in p.top) == pytest.approx(1, abs=1e-5)


def _assert_same_finetune(out: Path, ref: Path) -> None:
    from safetensors.torch import load_file

    a, b = (json.loads((d / "results.json").read_text()) for d in (out, ref))
    for phase in ("frozen", "unfrozen"):
        strip = [{k: v for k, v in r.items() if k != "seconds"} for r in a["phases"][phase]["history"]]
        assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in b["phases"][phase]["history"]]
        assert a["phases"][phase]["misclassified"] == b["phases"][phase]["misclassified"]
    # The frozen stage finished before the stop: the figure shows its examples again, as the reference drew them.
    assert (out / "misclassified.png").read_bytes() == (ref / "misclassified.png").read_bytes()
    wa, wb = (load_file(d / "weights" / "model.safetensors") for d in (out, ref))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_streamed_finetune_killed_in_the_unfrozen_stage_and_resumed_equals_uninterrupted(photos, tmp_path):
    """kill -9 of a real process, its DataLoader worker orphaned (it ends when it finds its parent gone)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from transferkit.training import CHECKPOINT_FILE, load_checkpoint

    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    args = ["finetune", str(photos), "--backbone", "resnet18", "--weights", "none", "--image-size", "32",
            "--batch-size", "3", "--epochs", "1", "--unfreeze-epochs", "2", "--stream", "always", "--workers", "1"]

    def cli(*extra):
        return subprocess.run([sys.executable, "-m", "transferkit", *args, *extra], env=env, capture_output=True,
                              text=True, timeout=300)

    assert cli("--out", str(tmp_path / "ref")).returncode == 0
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "transferkit", *args, "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, "finished before it could be killed"
        if (out / CHECKPOINT_FILE).is_file() and load_checkpoint(out / CHECKPOINT_FILE)[1]["phase"] == "unfrozen":
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = cli("--resume", str(out))
    assert done.returncode == 0, done.stderr
    assert "streaming 18 images from disk with 1 DataLoader worker: as when the run started" in done.stdout
    _assert_same_finetune(out, tmp_path / "ref")


def test_finetune_stopped_in_the_unfrozen_stage_resumes_to_the_uninterrupted_run(photos, tmp_path, monkeypatch):
    """In memory, stopped in process (a real Ctrl-C at a chosen step) two steps into the unfrozen stage."""
    from conftest import signalled_at

    from transferkit.training import CHECKPOINT_FILE, load_checkpoint

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    args = ["finetune", str(photos), "--backbone", "resnet18", "--weights", "none", "--image-size", "64",
            "--batch-size", "2", "--epochs", "2", "--unfreeze-epochs", "3", "--quiet"]
    main([*args, "--out", str(tmp_path / "ref")])
    ref = json.loads((tmp_path / "ref" / "results.json").read_text())
    frozen_checks = sum(ref["distributed"]["steps_per_rank"]["frozen"]) + ref["phases"]["frozen"]["epochs"]
    out = tmp_path / "run"
    with signalled_at(frozen_checks + 2), pytest.raises(SystemExit) as stopped:
        main([*args, "--out", str(out)])
    assert stopped.value.code == 130
    meta = load_checkpoint(out / CHECKPOINT_FILE)[1]
    assert (meta["phase"], meta["fit"]["epoch"], meta["fit"]["steps"]) == ("unfrozen", 1, 2)
    main([*args, "--resume", str(out)])
    _assert_same_finetune(out, tmp_path / "ref")


def _history(result, phase):
    return [{k: v for k, v in r.to_dict().items() if k != "seconds"} for r in result.phases[phase].history]


def test_streaming_is_the_same_computation_as_decoding_into_memory(photos, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    options = dict(backbone="resnet18", weights="none", image_size=32, batch_size=4, epochs=2, unfreeze_epochs=1,
                   seed=3, save=False, verbose=False)
    memory = finetune(photos, stream="never", **options)
    streamed = finetune(photos, stream="always", workers=2, **options)
    assert memory.results["dataset"]["loading"]["mode"] == "memory"
    assert streamed.results["dataset"]["loading"] == {
        "mode": "stream", "stream": True, "reason": "--stream always", "images": 18, "decoded_bytes": 18 * 37 * 37 * 3,
        "budget_bytes": None, "workers": 2}
    for phase in ("frozen", "unfrozen"):  # the frozen stage on cached features, the unfrozen on image batches
        for a, b in zip(_history(streamed, phase), _history(memory, phase), strict=True):
            assert a == pytest.approx(b, rel=1e-5)
    assert streamed.results["confusion_matrix"] == memory.results["confusion_matrix"]
    assert streamed.results["phases"]["unfrozen"]["confusion_matrix"] == memory.results["phases"]["unfrozen"][
        "confusion_matrix"]
    for a, b in zip(streamed.model.state_dict().values(), memory.model.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)


@pytest.mark.parametrize("packed", [False, True])
def test_a_corrupt_file_in_a_stream_is_skipped_and_listed(photos, tmp_path, monkeypatch, packed):
    import shutil
    import zipfile

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root = shutil.copytree(photos, tmp_path / "photos")
    (root / "green" / "9.jpg").write_bytes(b"\xff\xd8 cut short")
    data = root
    if packed:
        data = tmp_path / "photos.zip"
        with zipfile.ZipFile(data, "w") as z:
            for f in sorted(root.rglob("*.jpg")):
                z.write(f, f.relative_to(tmp_path).as_posix())
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="skipped 1 file"):
        finetune(data, backbone="resnet18", weights="none", image_size=32, batch_size=4, epochs=1, augment=True,
                 stream="always", workers=1, out=out, verbose=False)
    results = json.loads((out / "results.json").read_text())
    [skipped] = results["dataset"]["skipped"]
    assert skipped.startswith(f"{'photos/' if packed else ''}green/9.jpg: ")
    assert results["dataset"]["train_samples"] + results["dataset"]["val_samples"] == 19
    # validated on the images that decoded: all of val, or all but the broken one
    assert 0 <= results["dataset"]["val_samples"] - np.asarray(results["confusion_matrix"]).sum() <= 1
    frozen = results["phases"]["frozen"]  # counts the images it used: the broken file is in neither
    assert frozen["train_samples"] + frozen["val_samples"] == 18
    assert frozen["val_samples"] == np.asarray(results["confusion_matrix"]).sum()
    assert json.loads((out / "status.json").read_text())["status"] == "complete"
    assert (out / "misclassified.png").is_file() and (out / "samples.png").is_file()


def test_auto_streams_what_would_not_fit_in_the_memory_budget(photos, tmp_path, monkeypatch, capsys):
    from transferkit.data import streaming

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    options = dict(backbone="resnet18", weights="none", image_size=16, batch_size=8, epochs=1, workers=0, save=False)
    for budget, mode in ((1000, "stream"), (10**9, "memory")):
        monkeypatch.setattr(streaming, "memory_budget", lambda budget=budget: budget)
        loading = finetune(photos, **options).results["dataset"]["loading"]
        assert loading["mode"] == mode and loading["budget_bytes"] == budget
        assert loading["decoded_bytes"] == 18 * 18 * 18 * 3  # resize 18 for a 16 px crop
    out = capsys.readouterr().out
    assert "streaming 18 images from disk with 0 DataLoader workers: 17 kB decoded would not fit in 1.0 kB" in out
    assert "decoding 18 images into memory: 17 kB decoded fits in 1.0 GB" in out


def test_streaming_under_torchrun_is_refused(photos, monkeypatch):
    import importlib

    module = importlib.import_module("transferkit.experiments.runtime")  # where each experiment starts its ranks
    real = module.init_distributed
    monkeypatch.setattr(module, "init_distributed",
                        lambda device: dataclasses.replace(real(device), world_size=2))
    with pytest.raises(UserError, match="streaming images from disk .* runs in a single process"):
        finetune(photos, backbone="resnet18", weights="none", stream="always", save=False, verbose=False)




def test_under_torchrun_auto_decodes_into_memory_on_every_rank(photos, monkeypatch):
    from transferkit.data import streaming
    from transferkit.experiments.image_data import read_image_data

    monkeypatch.setattr(streaming, "memory_budget", lambda: 1000)  # would stream in a single process
    assert read_image_data(str(photos), 0.2, 0, None, "auto", 18, 1, None, 0).loading.stream
    together = read_image_data(str(photos), 0.2, 0, None, "auto", 18, 2, None, 0).loading
    assert not together.stream and together.reason == "under torchrun every rank decodes into memory"


def test_a_run_saved_before_an_option_existed_resumes_as_it_ran():
    from transferkit.experiments.run_folder import config_differences

    saved = {"epochs": 5, "train": {"lr": 0.001}}  # no lr_schedule, train_batchnorm or stream: older runs
    assert config_differences(saved, {"epochs": 5, "train": {"lr": 0.001, "lr_schedule": "constant"},
                                "train_batchnorm": True, "stream": "never"}) == []
    assert config_differences(saved, {"epochs": 5, "train": {"lr": 0.001, "lr_schedule": "cosine"}}) == [
        "train.lr_schedule was 'constant', now 'cosine' (--lr-schedule constant)"]
    # Runs from before class weights trained unweighted; the message names the option that repeats that.
    assert config_differences(saved, {"epochs": 5, "class_weights": "auto"}) == [
        "class_weights was 'none', now 'auto' (--class-weights none)"]
    # Calibration and TTA measure after training: a resumed run may choose them anew.
    assert config_differences({"calibrate": None, "tta": False}, {"calibrate": False, "tta": True}) == []
