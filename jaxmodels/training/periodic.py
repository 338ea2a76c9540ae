"""The periodic schedule: which of log, evaluation and checkpoint are due at a step."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Periodic:
    """Decisions of a run of `total_steps` steps of `steps_per_epoch` per epoch. The last step
    is always logged, evaluated and saved. `eval_every` None: at every epoch boundary crossed
    (a batch may straddle one). `save_every` None: only the last step (and on a signal)."""

    total_steps: int
    steps_per_epoch: float
    log_every: int
    eval_every: int | None = None
    save_every: int | None = None

    @classmethod
    def from_config(cls, config, total_steps: int, steps_per_epoch: float) -> Periodic:
        t = config.train
        return cls(total_steps, steps_per_epoch, t.log_every, t.eval_every,
                   config.checkpoint.every_steps)

    def is_last(self, step: int) -> bool:
        return step == self.total_steps

    def epoch(self, step: int) -> float:
        return round(step / self.steps_per_epoch, 4)

    def log_due(self, step: int) -> bool:
        return step % self.log_every == 0 or self.is_last(step)

    def eval_due(self, step: int) -> bool:
        if self.is_last(step):
            return True
        if self.eval_every is not None:
            return step % self.eval_every == 0
        return int(step / self.steps_per_epoch) > int((step - 1) / self.steps_per_epoch)

    def save_due(self, step: int) -> bool:
        return self.is_last(step) or (self.save_every is not None and step % self.save_every == 0)
