"""Optax optimizers and learning-rate schedules from an `OptimizerConfig`.

Each optimizer is one small factory in the `OPTIMIZERS` dict; clipping is composed in front with
`optax.chain`. The schedule is returned too, so the train step can report the learning rate it
used without reaching into optimizer state.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from jaxmodels.config import OptimizerConfig

Schedule = Callable[[jax.Array], jax.Array]


def _constant(cfg: OptimizerConfig, total_steps: int) -> Schedule:
    del total_steps
    return optax.constant_schedule(cfg.learning_rate)


def _warmup_cosine(cfg: OptimizerConfig, total_steps: int) -> Schedule:
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps,
        # optax counts decay_steps from step 0, warmup included.
        decay_steps=max(total_steps, cfg.warmup_steps + 1),
        end_value=cfg.learning_rate * cfg.final_lr_fraction,
    )


def _warmup_linear(cfg: OptimizerConfig, total_steps: int) -> Schedule:
    warmup = optax.linear_schedule(0.0, cfg.learning_rate, max(cfg.warmup_steps, 1))
    decay = optax.linear_schedule(
        cfg.learning_rate,
        cfg.learning_rate * cfg.final_lr_fraction,
        max(total_steps - cfg.warmup_steps, 1),
    )
    return optax.join_schedules([warmup, decay], [cfg.warmup_steps])


SCHEDULES: dict[str, Callable[[OptimizerConfig, int], Schedule]] = {
    "constant": _constant,
    "warmup_cosine": _warmup_cosine,
    "warmup_linear": _warmup_linear,
}


def decay_mask(params) -> object:
    """True for the parameters weight decay applies to: matrices and kernels, not biases or the
    scales and shifts of normalisation layers (all of which are rank 1)."""
    return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def _sgd(cfg: OptimizerConfig, lr: Schedule) -> optax.GradientTransformation:
    return optax.sgd(lr, momentum=cfg.momentum or None, nesterov=cfg.nesterov)


def _adam(cfg: OptimizerConfig, lr: Schedule) -> optax.GradientTransformation:
    return optax.adam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)


def _adamw(cfg: OptimizerConfig, lr: Schedule) -> optax.GradientTransformation:
    return optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                       mask=decay_mask)


def _lion(cfg: OptimizerConfig, lr: Schedule) -> optax.GradientTransformation:
    return optax.lion(lr, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=decay_mask)


def _adafactor(cfg: OptimizerConfig, lr: Schedule) -> optax.GradientTransformation:
    return optax.adafactor(lr, weight_decay_rate=cfg.weight_decay or None,
                           weight_decay_mask=decay_mask)


OPTIMIZERS: dict[str, Callable[[OptimizerConfig, Schedule], optax.GradientTransformation]] = {
    "sgd": _sgd,
    "adam": _adam,
    "adamw": _adamw,
    "lion": _lion,
    "adafactor": _adafactor,
}


def make(cfg: OptimizerConfig, total_steps: int) -> tuple[optax.GradientTransformation, Schedule]:
    """The optimizer (clipping first, if asked) and its learning-rate schedule."""
    schedule = SCHEDULES[cfg.schedule](cfg, total_steps)
    tx = OPTIMIZERS[cfg.name](cfg, schedule)
    if cfg.grad_clip_norm is not None:
        tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), tx)
    return tx, schedule
