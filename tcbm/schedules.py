"""Loss-weight schedules of training: the energy weight λ(step) and the KL weight β(step)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class EnergyWeight:
    """λ = 0 before ``warmup_steps``; afterwards ``final·(1 − exp(−(step − warmup_steps)/tau_steps))``,
    an exponential approach to ``final`` (63 % of it ``tau_steps`` after the warm-up)."""

    final: float = 1.0
    warmup_steps: int = 1000
    tau_steps: float = 1000.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps or self.final == 0:
            return 0.0
        return self.final * (1.0 - math.exp(-(step - self.warmup_steps) / max(self.tau_steps, 1e-12)))


@dataclass(frozen=True)
class KLWeight:
    """β: ``mode='constant'`` gives ``beta_max`` always; ``mode='cyclic'`` (Fu et al. 2019) splits
    ``total_steps`` into ``n_cycles`` cycles, ramping β linearly from 0 to ``beta_max`` over the first
    ``ratio`` of each cycle and holding it there for the rest."""

    mode: str = "cyclic"
    beta_max: float = 1.0
    total_steps: int = 10000
    n_cycles: int = 4
    ratio: float = 0.5

    def __post_init__(self) -> None:
        if self.mode not in ("constant", "cyclic"):
            raise ValueError(f"KL schedule mode must be 'constant' or 'cyclic', got {self.mode!r}")
        if self.mode == "cyclic" and (self.n_cycles < 1 or not 0 < self.ratio <= 1 or self.total_steps < 1):
            raise ValueError("cyclic KL schedule needs n_cycles >= 1, 0 < ratio <= 1, total_steps >= 1")

    def __call__(self, step: int) -> float:
        if self.mode == "constant":
            return self.beta_max
        period = self.total_steps / self.n_cycles
        phase = (step % period) / period
        return self.beta_max * min(1.0, phase / self.ratio)


@dataclass(frozen=True)
class UnrollSchedule:
    """How many frames K a training batch is rolled out with the model's own outputs before the loss
    (pushforward training): 0 before ``start_step``; then K grows by one every ``ramp_steps`` up to
    ``steps`` (a curriculum).  A ``fraction`` of the batches is unrolled, the rest teacher-forced."""

    steps: int = 0
    start_step: int = 0
    ramp_steps: int = 0
    fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.steps < 0 or self.start_step < 0 or self.ramp_steps < 0 or not 0 <= self.fraction <= 1:
            raise ValueError(f"invalid unroll schedule {self}: need steps, start_step, ramp_steps >= 0 and "
                             "0 <= fraction <= 1")

    def __call__(self, step: int) -> int:
        if self.steps == 0 or step < self.start_step:
            return 0
        if self.ramp_steps == 0:
            return self.steps
        return min(self.steps, 1 + (step - self.start_step) // self.ramp_steps)
