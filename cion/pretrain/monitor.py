"""Teacher collapse monitor.

DINO-style training can collapse in two ways (DINO paper, section 5.3): the teacher output
becomes uniform (entropy -> log D) or dominated by one dimension (entropy of the batch-mean
teacher distribution -> 0). In both cases the student copies the teacher exactly and
``KL(teacher || student) = loss - H(teacher)`` falls to 0. The monitor flags a log step as
collapsed when the KL is below ``kl_min`` AND one of the two entropy signatures holds, and
warns once after ``patience`` consecutive collapsed log steps.
"""
from __future__ import annotations

import math


class CollapseMonitor:
    def __init__(self, out_dim: int, patience: int = 20, kl_min: float = 0.01,
                 uniform_frac: float = 0.95, onehot_frac: float = 0.05):
        self.log_dim = math.log(out_dim)
        self.patience = patience
        self.kl_min = kl_min
        self.uniform_frac = uniform_frac
        self.onehot_frac = onehot_frac
        self.streak = 0
        self.warned = False

    def kind(self, teacher_entropy: float, batch_entropy: float, kl: float) -> str | None:
        """'uniform', 'one dimension' or None for one log step's statistics (nats)."""
        if kl >= self.kl_min:
            return None
        if teacher_entropy >= self.uniform_frac * self.log_dim:
            return "uniform"
        if batch_entropy <= self.onehot_frac * self.log_dim:
            return "one dimension"
        return None

    def update(self, teacher_entropy: float, batch_entropy: float, kl: float) -> str | None:
        """Feed one log step; returns the warning text the first time collapse persists."""
        kind = self.kind(teacher_entropy, batch_entropy, kl)
        self.streak = self.streak + 1 if kind else 0
        if kind and self.streak >= self.patience and not self.warned:
            self.warned = True
            return (f"teacher output collapsed ({kind}): KL(teacher||student) = {kl:.2e} nats, "
                    f"teacher entropy {teacher_entropy:.2f} / log(D) = {self.log_dim:.2f}, "
                    f"batch entropy {batch_entropy:.2f}, for {self.streak} log steps. Fix: "
                    "lower the teacher temperature or learning rate, raise center_momentum, "
                    "or check that identities hold different images")
        return None

    def state_dict(self) -> dict:
        return {"streak": self.streak, "warned": self.warned}

    def load_state_dict(self, state: dict) -> None:
        self.streak, self.warned = int(state["streak"]), bool(state["warned"])
