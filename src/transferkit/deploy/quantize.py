"""`transferkit export --int8`: ONNX Runtime's static quantization (QDQ, per-channel int8 weights) of the checked
fp32 export, calibrated on the run's training images and compared with fp32 on its held-out images.

Activations are uint8 (U8S8, ONNX Runtime's x86 CPU pairing): measured on EfficientNet-Lite0 with onnxruntime
1.32 on an AVX512-VNNI Xeon, signed int8 activations (S8S8) left the 14 depthwise convolutions in fp32 behind
29 transposes and ran no faster than fp32, where U8S8 fused all 49 into QLinearConv and ran 1.4-1.6x faster,
with the same top-1 on the same images.

The images go through predict's own preprocessing (Classifier.decode, then graph_input): the calibration sees
exactly what the graph is fed in deployment, uint8 NHWC, the scaling and normalisation inside the graph.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..config import INT8_CALIBRATION_IMAGES, INT8_MAX_DROP
from ..data.folders import naming_the_file
from ..errors import UserError, first_line
from ..inference.classifier import Classifier
from ..inference.formats import Runner, onnx_runner
from ..inference.graph import INPUT_NAME, graph_input
from ..jsonfile import strict_json

CALIBRATION_IMAGES, MAX_DROP = INT8_CALIBRATION_IMAGES, INT8_MAX_DROP
COMPARE_LIMIT = 1000  # held-out images compared at most: one image is then 0.1 accuracy point
SPEED_BATCHES = (1, 32)
SPEED_SECONDS = 0.3  # each timing turn runs at least this long; the best of SPEED_TURNS turns is kept
SPEED_TURNS = 3
CALIBRATION_BATCH = 16
# /proc/cpuinfo flags of int8 dot-product instructions: x86 VNNI (AVX512 and AVX), AMX's int8 tiles, ARM's dotprod
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp")
REDUCE_RANGE_ADVICE = ("ONNX Runtime's advice for CPUs without VNNI: 7-bit weights (reduce_range), as their int8 "
                       "instructions can saturate")


@dataclass(frozen=True)
class CpuInt8:
    """The CPU this export ran on and its int8 dot-product instructions (from /proc/cpuinfo)."""

    cpu: str
    flags: list[str]

    @property
    def vnni(self) -> bool:
        return bool(self.flags)

    def summary(self) -> str:
        if self.vnni:
            return f"{self.cpu}, int8 instructions {' '.join(self.flags)}"
        return f"{self.cpu}, no VNNI or other int8 dot-product instruction; {REDUCE_RANGE_ADVICE}, taken"


def cpu_int8(cpuinfo: str | None = None) -> CpuInt8:
    """The CPU's name and which of INT8_FLAGS it has, read from /proc/cpuinfo (or the text given)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    name, flags = "unknown CPU", set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model") and name == "unknown CPU":  # Model: ARM boards' name
            name = value.strip() or name
        elif key.strip() in ("flags", "Features") and not flags:  # Features: ARM's flags
            flags = set(value.split())
    return CpuInt8(name, [f for f in INT8_FLAGS if f in flags])


@dataclass(frozen=True)
class Int8Result:
    """How the int8 model compared with the fp32 one on held-out images, what it was calibrated on, and where."""

    images: str  # where the held-out images came from
    compared: int
    fp32_accuracy: float
    int8_accuracy: float
    same_top1: int
    max_probability_difference: float
    max_drop: float
    fp32_bytes: int
    int8_bytes: int
    images_per_second: dict  # {"fp32": {"1": .., "32": ..}, "int8": {...}}: ONNX Runtime, this machine, one run
    calibration: dict  # images, origin, per class
    quantization: dict  # ONNX Runtime's settings
    cpu: CpuInt8

    @property
    def drop(self) -> float:
        """Accuracy points lost (negative: gained)."""
        return 100 * (self.fp32_accuracy - self.int8_accuracy)

    @property
    def passed(self) -> bool:
        return self.compared > 0 and self.drop <= self.max_drop + 1e-9

    def to_dict(self) -> dict:
        return {**asdict(self), "cpu": {**asdict(self.cpu), "vnni": self.cpu.vnni},
                "accuracy_drop_points": self.drop, "passed": self.passed}

    def summary(self) -> str:
        speed = ", ".join(f"batch {b} {self.images_per_second['fp32'][str(b)]:.0f} -> "
                          f"{self.images_per_second['int8'][str(b)]:.0f} images/s "
                          f"({self.images_per_second['int8'][str(b)] / self.images_per_second['fp32'][str(b)]:.1f}x)"
                          for b in SPEED_BATCHES)
        return (f"int8 accuracy {self.int8_accuracy:.3f} against fp32 {self.fp32_accuracy:.3f} ({-self.drop:+.1f} "
                f"points, at most -{self.max_drop:g} allowed) on {self.compared} image(s) from {self.images} (one "
                f"image is {100 / self.compared:.2g} points), same top-1 on {self.same_top1} of {self.compared}, "
                f"largest probability difference {self.max_probability_difference:.3f}; "
                f"{self.fp32_bytes / 1e6:.2f} MB -> {self.int8_bytes / 1e6:.2f} MB; {speed} on {self.cpu.summary()}")


def decoded_batches(classifier: Classifier, images: list[tuple[str, bytes]], height: int, width: int,
                    labels: list[str] | None = None, batch: int = 32) -> Iterator[tuple[np.ndarray, list[str]]]:
    """The graph's input for `images`, decoded as predict decodes them, `batch` at a time, with the labels of
    the images that could be read (unreadable ones are left out, as the export check counts them)."""
    labels = labels if labels is not None else [""] * len(images)
    for start in range(0, len(images), batch):
        decoded, kept = [], []
        for (name, data), label in zip(images[start:start + batch], labels[start:start + batch], strict=True):
            try:
                with naming_the_file(name):
                    decoded.append(classifier.decode(data))
                kept.append(label)
            except Exception:  # noqa: BLE001 - an unreadable file is left out, as predict skips it
                continue
        if decoded:
            yield graph_input(np.stack(decoded), height, width), kept


def quantize(fp32: bytes, calibration: list[np.ndarray], reduce_range: bool) -> tuple[bytes, dict]:
    """The fp32 ONNX model quantized by ONNX Runtime (static, QDQ, uint8 activations and per-channel int8 weights,
    MinMax ranges from `calibration`, batches of the graph's input), its metadata kept, and the settings."""
    import onnx
    import onnxruntime
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        """The calibration batches, once each, as quantize_static reads them."""

        def __init__(self) -> None:
            self.batches = iter(calibration)

        def get_next(self) -> dict | None:
            x = next(self.batches, None)
            return None if x is None else {INPUT_NAME: x}

    settings = {"tool": f"onnxruntime {onnxruntime.__version__} quantize_static", "format": "QDQ",
                "activations": "uint8 (QUInt8)", "weights": "int8 (QInt8), per channel", "calibration": "MinMax",
                "reduce_range": reduce_range, "pre_process": "quant_pre_process (shape inference, graph optimization)"}
    with tempfile.TemporaryDirectory(prefix="transferkit-int8-") as tmp:
        source, prepared, out = Path(tmp, "fp32.onnx"), Path(tmp, "prepared.onnx"), Path(tmp, "int8.onnx")
        source.write_bytes(fp32)
        # The quantizer logs a warning on the root logger for the uint8 input it leaves alone: not the user's.
        logging.disable(logging.WARNING)
        try:
            _quantize_files(source, prepared, out, Reader(), reduce_range, settings)
        finally:
            logging.disable(logging.NOTSET)
        proto = onnx.load(str(out))
    # The description (class names, input, preprocessing) that predict reads: the quantizer keeps it, checked here.
    described = {p.key: p.value for p in onnx.load_from_string(fp32).metadata_props}
    present = {p.key for p in proto.metadata_props}
    for key, value in [*described.items(), ("quantization", strict_json(settings, what="quantization", indent=None))]:
        if key not in present:
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    return proto.SerializeToString(), settings


def _quantize_files(source: Path, prepared: Path, out: Path, reader, reduce_range: bool, settings: dict) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    try:  # as ONNX Runtime's documentation recommends before quantizing: shapes known, BatchNorm folded
        quant_pre_process(str(source), str(prepared))
    except Exception as e:  # noqa: BLE001 - the quantizer works without it, on the graph as exported
        settings["pre_process"] = f"skipped ({type(e).__name__}: {first_line(e)[:120]})"
        prepared = source
    try:
        quantize_static(str(prepared), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
    except Exception as e:  # noqa: BLE001 - the quantizer's own exception types
        raise UserError(f"ONNX Runtime could not quantize the model ({type(e).__name__}: {first_line(e)[:200]}); "
                        "export it without --int8") from None


def held_out(fp32: Runner, int8: Runner, batches: list[tuple[np.ndarray, list[str]]],
             class_names: list[str]) -> dict:
    """Accuracy of each model against the labels, their top-1 agreement and largest probability difference."""
    compared, right32, right8, same, worst = 0, 0, 0, 0, 0.0
    for x, labels in batches:
        p32, p8 = fp32(x), int8(x)
        truth = np.array([class_names.index(label) if label in class_names else -1 for label in labels])
        right32 += int((p32.argmax(1) == truth).sum())
        right8 += int((p8.argmax(1) == truth).sum())
        same += int((p32.argmax(1) == p8.argmax(1)).sum())
        worst = max(worst, float(np.abs(p32 - p8).max()))
        compared += len(x)
    return {"compared": compared, "fp32_accuracy": right32 / max(compared, 1),
            "int8_accuracy": right8 / max(compared, 1), "same_top1": same, "max_probability_difference": worst}


def images_per_second(runners: dict[str, Runner], images: np.ndarray) -> dict:
    """Images per second of each runner at each of SPEED_BATCHES, in one run: the runners take turns (so a busy
    moment hits each), each turn at least SPEED_SECONDS, the best of SPEED_TURNS kept."""
    best = {name: {str(b): 0.0 for b in SPEED_BATCHES} for name in runners}
    for batch in SPEED_BATCHES:
        x = np.ascontiguousarray(np.resize(images, (batch, *images.shape[1:])))  # repeated when fewer are given
        for run in runners.values():
            run(x)  # warm-up: the first call allocates
        for _ in range(SPEED_TURNS):
            for name, run in runners.items():
                calls, start = 0, time.perf_counter()
                while (elapsed := time.perf_counter() - start) < SPEED_SECONDS or calls == 0:
                    run(x)
                    calls += 1
                best[name][str(batch)] = max(best[name][str(batch)], calls * batch / elapsed)
    return best


def int8_export(fp32: bytes, classifier: Classifier, height: int, width: int,
                calibration: tuple[str, list[tuple[str, bytes]], list[str] | None],
                held: tuple[str, list[tuple[str, bytes]], list[str]], max_drop: float,
                cpu: CpuInt8 | None = None) -> tuple[bytes, Int8Result]:
    """The int8 model of the checked fp32 export and how it compares: calibrated on `calibration` (where from,
    images, their classes when known), compared on `held` (the same, classes needed); the caller writes it only
    if it passed."""
    cpu = cpu or cpu_int8()
    origin, images, classes = calibration
    pairs = list(decoded_batches(classifier, images, height, width, classes, batch=CALIBRATION_BATCH))
    if not pairs:
        raise UserError(f"--int8: none of the {len(images)} calibration image(s) from {origin} could be read; "
                        "give readable images with --calibrate IMAGES")
    batches = [x for x, _ in pairs]
    calibrated = sum(len(x) for x in batches)
    kept = [label for _, labels in pairs for label in labels]
    per_class = {name: kept.count(name) for name in classifier.class_names} if classes is not None else None
    data, settings = quantize(fp32, batches, reduce_range=not cpu.vnni)
    del batches, pairs
    held_origin, held_images, labels = held
    compared = list(decoded_batches(classifier, held_images, height, width, labels))
    if not compared:
        raise UserError(f"--int8: none of the {len(held_images)} held-out image(s) from {held_origin} could be read "
                        "to compare int8 with fp32; export without --int8")
    runners = {"fp32": onnx_runner(fp32), "int8": onnx_runner(data)}
    figures = held_out(runners["fp32"], runners["int8"], compared, classifier.class_names)
    speed = images_per_second(runners, compared[0][0])
    result = Int8Result(held_origin, max_drop=max_drop, fp32_bytes=len(fp32), int8_bytes=len(data),
                        images_per_second=speed, calibration={"images": calibrated, "from": origin, "per_class": per_class},
                        quantization=settings, cpu=cpu, **figures)
    return data, result
