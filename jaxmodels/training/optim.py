"""Optax optimizers and learning-rate schedules from an `OptimizerConfig`.

Each optimizer is one small factory in the `OPTIMIZERS` dict; clipping is composed in front with
`optax.chain`. The schedule is returned too, so the train step can report the learning rate it
used without reaching into optimizer state. Per-parameter learning-rate multipliers (muP,
`training/mup.py`) are one more link in the chain, placed by the factory: before the decoupled
weight decay of adamw and lion, so that the decay is not rescaled with them.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from jaxmodels.config import OptimizerConfig
from jaxmodels.training.mup import scale_by_multipliers

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


def _multiplied(multipliers) -> list[optax.GradientTransformation]:
    return [] if multipliers is None else [scale_by_multipliers(multipliers)]


def _then_multiplied(tx: optax.GradientTransformation, multipliers) -> optax.GradientTransformation:
    # Without multipliers `tx` itself, not a one-link chain: the optimizer state keeps its
    # structure (checkpoints, sharding specs).
    return tx if multipliers is None else optax.chain(tx, scale_by_multipliers(multipliers))


def _sgd(cfg: OptimizerConfig, lr: Schedule, multipliers=None) -> optax.GradientTransformation:
    return _then_multiplied(optax.sgd(lr, momentum=cfg.momentum or None, nesterov=cfg.nesterov),
                            multipliers)


def _adam(cfg: OptimizerConfig, lr: Schedule, multipliers=None) -> optax.GradientTransformation:
    return _then_multiplied(optax.adam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps), multipliers)


def _decoupled(direction: optax.GradientTransformation, cfg: OptimizerConfig, lr: Schedule,
               multipliers) -> optax.GradientTransformation:
    """direction, [multipliers], + weight_decay x params (matrices only), x -lr: the chain
    optax.adamw and optax.lion build, with room for the multipliers before the decay."""
    return optax.chain(direction, *_multiplied(multipliers),
                       optax.add_decayed_weights(cfg.weight_decay, decay_mask),
                       optax.scale_by_learning_rate(lr))


def _adamw(cfg: OptimizerConfig, lr: Schedule, multipliers=None) -> optax.GradientTransformation:
    return _decoupled(optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps), cfg, lr, multipliers)


def _lion(cfg: OptimizerConfig, lr: Schedule, multipliers=None) -> optax.GradientTransformation:
    return _decoupled(optax.scale_by_lion(b1=cfg.b1, b2=cfg.b2), cfg, lr, multipliers)


def _adafactor(cfg: OptimizerConfig, lr: Schedule, multipliers=None) -> optax.GradientTransformation:
    return _then_multiplied(optax.adafactor(lr, weight_decay_rate=cfg.weight_decay or None,
                                            weight_decay_mask=decay_mask), multipliers)


OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "sgd": _sgd,
    "adam": _adam,
    "adamw": _adamw,
    "lion": _lion,
    "adafactor": _adafactor,
}


def make(cfg: OptimizerConfig, total_steps: int, lr_multipliers=None
         ) -> tuple[optax.GradientTransformation, Schedule]:
    """The optimizer (clipping first, if asked) and its learning-rate schedule.

    `lr_multipliers`: a params-shaped tree of floats scaling each parameter's learning rate
    (`mup.lr_multipliers`); None leaves the optimizer exactly as without it.
    """
    schedule = SCHEDULES[cfg.schedule](cfg, total_steps)
    tx = OPTIMIZERS[cfg.name](cfg, schedule, lr_multipliers)
    if cfg.grad_clip_norm is not None:
        tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), tx)
    return tx, schedule
