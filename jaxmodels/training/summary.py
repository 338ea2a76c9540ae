"""The summary: summary.json's numbers, built from the loop's pieces.

train_*, val_* and eval_* are named after the objective's loss and metrics (`train_accuracy`
for cross-entropy, `train_mae` for MSE); a metric the final evaluation reports but training did
not log is None.
"""

from __future__ import annotations

import jax

from jaxmodels.training.evaluator import metric_names


def metric_keys(last_train: dict, last_val: dict, final: dict, eval_split: str) -> dict:
    """train_*, val_*, eval_* of one model (the loop's and each packed model's)."""
    names = ("loss", *metric_names(final))
    return {
        **{f"train_{k}": last_train.get(k) for k in names},
        **{f"val_{k}": last_val.get(f"val_{k}") for k in names},
        "eval_split": eval_split,
        **{f"eval_{k}": x for k, x in final.items() if k != "examples"},
        "eval_examples": final["examples"],
    }


def cache_size(jitted) -> int | None:
    # Number of compiled variants; 1 means no retrace after the first call. Private in JAX, so
    # tolerate its absence rather than fail a run.
    size = getattr(jitted, "_cache_size", None)
    return size() if callable(size) else None


def build(s, *, step: int, log, final: dict, meter, ls, n_params: int, wall_time: float) -> dict:
    """summary.json of the loop's run of setup `s` (log: its MetricsLog; meter: Throughput)."""
    cfg, acc = s.config, meter.flops
    examples = step * cfg.data.batch_size
    return {
        "name": cfg.name,
        "step": step,
        "epochs": s.total_steps / s.steps_per_epoch,
        "objective": s.objective.name,
        **metric_keys(log.last_train, log.last_val, final, cfg.data.eval_split),
        **eval_read(s.task, cfg.data.eval_split, final),
        "params": n_params,
        "non_embedding_params": getattr(acc, "non_embedding_params", None),
        "examples_seen": examples,
        "tokens_seen": examples * s.task.tokens_per_example,
        # Training FLOPs per example: analytic (forward + backward matmuls; accounting/flops.py)
        # or, for a model the formulas do not know, XLA's count (see throughput.flops_for).
        "flops_per_example": acc.model_flops_per_example if acc else None,
        "flops": acc.model_flops_per_example * examples if acc else None,
        "flops_source": getattr(acc, "source", "analytic") if acc else None,
        **meter.totals(),
        "skipped_updates": ls.skipped,
        "stopped": ls.stopped,
        "resumed_from": ls.resumed_from,
        # Summed over every session of a resumed run.
        "wall_time_s": wall_time,
        "compilations": {"train_step": cache_size(s.train_step),
                         "eval_step": cache_size(s.eval_step)},
        "devices": [str(d) for d in s.mesh.devices.flat],
        "parallel": s.parallel.as_dict(),
        "jax_version": jax.__version__,
    }


def eval_read(task, split: str, final: dict) -> dict:
    """How much of the eval split the final evaluation read (data.final_eval_windows), for a
    source that knows its split's size (split_examples); nothing otherwise."""
    size = getattr(task, "split_examples", None)
    if size is None or split not in task.splits:
        return {}
    total = size(split)
    return {"eval_split_examples": total, "eval_fraction": final["examples"] / max(total, 1)}


def coverage(summary: dict) -> str:
    """", 12.5% of the split" for the final log line, when the summary knows it."""
    fraction = summary.get("eval_fraction")
    return "" if fraction is None else f", {100 * fraction:.1f}% of the split"
