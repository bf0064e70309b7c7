"""Every seed a run draws from, derived in one place: the run's --seed followed by named parts (a phase, a
study point's repeat, arm and size), so each phase and each point is reproducible on its own, whatever ran
before it in the process, and no two draws of a run share a seed."""

from __future__ import annotations

# The values each part can take: digits of a mixed-radix number, so distinct parts never give one seed.
RADIX = {"phase": 1000, "repeat": 1000, "arm": 16, "size": 100_000}


def derive_seed(seed: int, **parts: int) -> int:
    """`seed` followed by `parts` in the order given, each a digit of its RADIX: derive_seed(7, phase=2) is
    7002; a study point's is derive_seed(seed, repeat=r, arm=a, size=shots or cut). No parts: `seed` itself."""
    for name, value in parts.items():
        radix = RADIX[name]
        if not 0 <= value < radix:
            raise ValueError(f"seed part {name}={value} is outside 0..{radix - 1}")
        seed = seed * radix + value
    return seed
