"""Which config changes a resumed run may carry.

A checkpoint continues a run only if the run is still the same computation up to the step it was
saved at: the same model, data stream and optimizer state layout. Changes that only affect what
happens next (more steps, another learning rate, evaluation and logging cadence, the mesh the
state is placed on, retention) are allowed and logged; anything else is refused with a message
naming the key.
"""

from __future__ import annotations

from jaxmodels import config as config_lib
from jaxmodels.errors import ConfigError, UserError

# Dotted keys (or section prefixes ending in ".") that a resume may change.
SAFE = (
    "name",
    "train.steps", "train.epochs", "train.log_every", "train.eval_every", "train.progress",
    "train.microbatches",  # the same gradient, computed in more or fewer slices
    "train.nonfinite", "train.spike_sigma", "train.spike_window",
    "data.eval_batch_size", "data.eval_windows", "data.eval_split", "data.download", "data.mirror",
    "data.prefetch", "data.workers",  # how fast batches come, not which
    # Schedule and step-size hyper-parameters change what comes next, not the state's layout.
    "optimizer.learning_rate", "optimizer.schedule", "optimizer.warmup_steps",
    "optimizer.final_lr_fraction", "optimizer.b1", "optimizer.b2", "optimizer.eps",
    "parallel.", "checkpoint.",
    # Where the experiment file lives and its hash are recorded, not part of the computation: a
    # comment edited or the file moved must not block a resume.
    "experiment_file", "experiment_sha256",
)

# Changes that still mean something once a run has trained all its steps (a relaunch then only
# evaluates again): evaluation, logging, placement, bookkeeping. Any other change to a finished
# run would silently train nothing, so `finished_run_changes` reports it.
AFTER_THE_END = (
    "name", "train.progress", "train.log_every", "train.eval_every", "data.eval_batch_size",
    "data.eval_windows", "data.eval_split", "data.download", "data.mirror", "data.prefetch",
    "data.workers", "parallel.",
    "checkpoint.", "experiment_file", "experiment_sha256",
)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _matches(key: str, keys) -> bool:
    return any(key == s or (s.endswith(".") and key.startswith(s)) for s in keys)


def _safe(key: str) -> bool:
    return _matches(key, SAFE)


def config_changes(saved: dict, current: dict) -> tuple[list[str], list[str]]:
    """(allowed, refused) changes between two `config.to_dict` outputs, as "key: old -> new"."""
    a, b = _flatten(saved), _flatten(current)
    allowed, refused = [], []
    for key in sorted(set(a) | set(b)):
        # Saved configs come back from JSON with lists where the config has tuples.
        old, new = (list(x) if isinstance(x, tuple) else x
                    for x in (a.get(key, "<absent>"), b.get(key, "<absent>")))
        if old == new:
            continue
        (allowed if _safe(key) else refused).append(f"{key}: {old!r} -> {new!r}")
    return allowed, refused


def _with_defaults(saved: dict) -> dict:
    """`saved` read back through the current config classes, so a field added to jaxmodels
    after the checkpoint was written counts as its default (which is what the run used),
    not as a change. A config this version cannot read is compared as it is."""
    try:
        return config_lib.to_dict(config_lib.from_dict(saved))
    except (ConfigError, TypeError, ValueError):
        return saved


def check_resume(saved: dict, current: dict, workdir, step: int) -> list[str]:
    """The allowed changes (for the log); a UserError when any change breaks the run."""
    allowed, refused = config_changes(_with_defaults(saved), current)
    if refused:
        shown = "; ".join(refused[:3]) + (f" (and {len(refused) - 3} more)" if len(refused) > 3 else "")
        raise UserError(f"the checkpoint at step {step} in {str(workdir)!r} was trained with another "
                        f"config ({shown}), which it cannot continue: use the original values, "
                        f"another --workdir, or --restart to start over")
    return allowed


def check_finished(saved: dict, current: dict, workdir, step: int, total_steps: int) -> None:
    """A UserError when the run in `workdir` already trained all `total_steps` (its newest
    checkpoint is at `step`) and `current` changes something that only training would use (a
    learning rate, the optimizer, a guard): relaunching would train zero steps and report the
    old numbers as if they were the new settings'. More steps are not refused: they train."""
    if step < total_steps:
        return
    allowed, refused = config_changes(_with_defaults(saved), current)
    changed = [c for c in allowed + refused if not _matches(c.split(":")[0], AFTER_THE_END)]
    if changed:
        shown = "; ".join(changed[:3]) + (f" (and {len(changed) - 3} more)" if len(changed) > 3 else "")
        raise UserError(f"{str(workdir)!r} holds a run that finished all {total_steps} steps with "
                        f"other settings ({shown}), so nothing would be trained with them: pass "
                        f"--restart (restart=True in Python) to train afresh, raise train.steps to "
                        f"continue it, or use another workdir")
