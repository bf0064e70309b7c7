"""predict --engine onnxruntime: the run's model exported once into RUN_DIR/cache/, reused while it is the
export of these weights, rebuilt when it is stale or damaged, and giving PyTorch's probabilities."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from transferkit import UserError, predict
from transferkit.inference.cache import KEY


@pytest.fixture(scope="module")
def digits(tiny_run, tmp_path_factory):
    import shutil

    out = Path(shutil.copytree(tiny_run, tmp_path_factory.mktemp("runs") / "mnist"))  # the cache goes into it
    images = tmp_path_factory.mktemp("digits")
    arrays = np.load(__import__("transferkit").__file__.rsplit("/", 1)[0] + "/data/mnist.npz")
    for i in range(5):
        Image.fromarray(arrays["x_test"][i]).save(images / f"{i}.png")
    return out, images


def same_as_pytorch(run, images, **kwargs):
    notices = []
    fast, plain = predict(run, [images], engine="onnxruntime", notice=notices.append, **kwargs), predict(
        run, [images], precision="fp32")  # ONNX Runtime runs the fp32 graph; auto is bf16 where the CPU has it
    for a, b in zip(fast, plain, strict=True):
        assert [c for c, _ in a.top] == [c for c, _ in b.top]
        assert np.allclose([p for _, p in a.top], [p for _, p in b.top], atol=1e-4)
    return notices


def test_the_cache_is_built_once_and_reused(digits):
    run, images = digits
    notices = same_as_pytorch(run, images)
    cache = run / "cache" / "transfer.onnx"
    assert cache.is_file() and "exporting the model to ONNX once" in notices[0]
    stamp = cache.stat().st_mtime_ns
    assert same_as_pytorch(run, images) == [] and cache.stat().st_mtime_ns == stamp


@pytest.mark.parametrize("damage", ["garbage", "stale key", "no key"])
def test_a_stale_or_damaged_cache_is_rebuilt(digits, damage):
    run, images = digits
    same_as_pytorch(run, images)
    cache = run / "cache" / "transfer.onnx"
    if damage == "garbage":
        cache.write_bytes(b"\x00" * 100)
    else:
        proto = onnx.load(str(cache))
        entries = [p for p in proto.metadata_props if p.key != KEY]
        del proto.metadata_props[:]
        proto.metadata_props.extend(entries)
        if damage == "stale key":  # the export of other weights
            entry = proto.metadata_props.add()
            entry.key, entry.value = KEY, "0" * 32
        onnx.save(proto, str(cache))
    notices = same_as_pytorch(run, images)
    assert "(stale or damaged); rebuilding it" in notices[0]
    assert same_as_pytorch(run, images) == []  # the rebuilt one is used


def test_bf16_is_for_pytorch(digits):
    run, images = digits
    with pytest.raises(UserError, match="--precision bf16: for a run folder in PyTorch"):
        predict(run, [images], engine="onnxruntime", precision="bf16")
