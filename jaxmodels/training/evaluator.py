"""The evaluator: periodic validation during training and the final evaluation, named after the
objective's own metrics (`val_loss` and `val_accuracy` for cross-entropy, `val_mae` for MSE).

`measure(state, split, periodic) -> {"loss": ..., metric: ..., "examples": n}` does the work
(`loop.run_eval` over a Setup, or a packed sweep's vmapped evaluation returning one such dict
per model); the evaluator only times it outside the training clock and names the results.
"""

from __future__ import annotations

from collections.abc import Callable


def prefixed(values: dict, prefix: str) -> dict:
    """{prefix + name: value} of a measurement, its example count left out."""
    return {f"{prefix}{k}": x for k, x in values.items() if k != "examples"}


def metric_names(values: dict) -> list[str]:
    """The objective's metric names in a measurement ("loss" and "examples" aside)."""
    return [k for k in values if k not in ("loss", "examples")]


def describe(values: dict) -> str:
    """"loss 0.1234 accuracy 98.10%" from {"loss": ..., "accuracy": ...} (val_ prefixes kept);
    accuracies as percentages, vector metrics left out of the line."""
    parts = []
    for k, x in values.items():
        if k == "examples" or not isinstance(x, (int, float)):
            continue
        parts.append(f"{k} {100 * x:.2f}%" if k.endswith("accuracy") else f"{k} {x:.4f}")
    return " ".join(parts)


class Evaluator:
    """Periodic validation on `split` ("validation", the task's periodic subset) and the final
    evaluation on `final_split`; `meter` (a Throughput, optional) books the time as eval time."""

    def __init__(self, measure: Callable, final_split: str, *, meter=None,
                 split: str = "validation"):
        self.measure, self.final_split, self.meter, self.split = measure, final_split, meter, split

    def periodic(self, state):
        """{"val_loss": ..., "val_<metric>": ...} (a list of them for a packed measure)."""
        if self.meter is None:
            values = self.measure(state, self.split, True)
        else:
            with self.meter.pause("eval_time"):
                values = self.measure(state, self.split, True)
        if isinstance(values, list):
            return [prefixed(v, "val_") for v in values]
        return prefixed(values, "val_")

    def final(self, state):
        """The measurement on the final split: {"loss", metrics..., "examples"}."""
        return self.measure(state, self.final_split, False)
