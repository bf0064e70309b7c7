"""What a run ran on: versions, CPU, threads, precision; written into results.json."""

from __future__ import annotations

import platform
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..training import Precision


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_environment(precision: Precision, device: torch.device = torch.device("cpu")) -> dict:
    gpu = {"gpu": torch.cuda.get_device_name(device)} if device.type == "cuda" else {}
    return {
        "transferkit": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": version("torchvision"),  # not imported: that takes ~2 s
        "numpy": np.__version__,
        "platform": platform.platform(),
        "device": str(device),
        **gpu,
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "precision": precision.name,
        "precision_reason": precision.reason,
    }
