"""Choosing the training precision: bf16 autocast only where the CPU computes bf16 natively; on a GPU, bf16
where it has bf16 units, else fp16."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import UserError

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class Precision:
    name: str  # "fp32", "bf16" or "fp16" (GPU only)
    reason: str

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags as Linux reports them (empty where /proc/cpuinfo is absent)."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def resolve_precision(requested: str, flags: set[str] | None = None,
                      device: torch.device = torch.device("cpu")) -> Precision:
    """`auto` picks bf16 where the CPU has native bf16 (AVX512-BF16 or AMX), fp32 elsewhere.

    Without native support bf16 autocast is emulated and runs slower than fp32 (2.2x measured on an
    AVX-512 Xeon), so auto never picks it there. On a GPU auto picks bf16 where the GPU supports it
    (Ampere and later), fp16 with loss scaling on older ones: both use its tensor cores.
    """
    if device.type == "cuda":
        return _gpu_precision(requested, device)
    if requested == "fp16":
        raise UserError("--precision fp16 is for GPUs; on the CPU use auto, fp32 or bf16")
    flags = cpu_flags() if flags is None else flags
    native = sorted(f for f in NATIVE_BF16_FLAGS if f in flags)
    if requested == "fp32":
        return Precision("fp32", "requested with --precision fp32")
    if requested == "bf16":
        if native:
            return Precision("bf16", f"requested with --precision bf16; CPU has {', '.join(native)}")
        return Precision("bf16", "requested with --precision bf16; CPU has no native bf16, expect it to be slow")
    if requested != "auto":
        raise UserError(f"--precision must be auto, fp32 or bf16, got {requested!r}")
    if native:
        return Precision("bf16", f"auto: CPU has native bf16 ({', '.join(native)})")
    return Precision("fp32", "auto: CPU has no native bf16 (no avx512_bf16 / amx_bf16 flag), bf16 would be emulated")


def _gpu_precision(requested: str, device: torch.device) -> Precision:
    name = torch.cuda.get_device_name(device)
    bf16 = torch.cuda.is_bf16_supported()
    if requested == "auto":
        return Precision("bf16", f"auto: {name} supports bf16") if bf16 else \
            Precision("fp16", f"auto: {name} has no bf16, fp16 with loss scaling")
    if requested == "bf16" and not bf16:
        raise UserError(f"--precision bf16: {name} does not support bf16; use auto, fp16 or fp32")
    return Precision(requested, f"requested with --precision {requested} on {name}")
