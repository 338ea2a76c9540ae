"""Optax optimizers and learning-rate schedules from an `OptimizerConfig`.

Each optimizer is one small factory in the `OPTIMIZERS` dict; clipping is composed in front with
`optax.chain`. The schedule is returned too, so the train step can report the learning rate it
used. Per-parameter learning-rate multipliers (muP, `training/mup.py`) are one more link in the
chain, placed by the factory: before the decoupled weight decay of adamw and lion, so that the
decay is not rescaled with them.

Runtime hyper-parameters: `make` wraps the chain in `optax.inject_hyperparams`, so the peak
learning rate, the schedule's final fraction and the decoupled weight decay are values in the
optimizer state (`opt_state.hyperparams`), not constants of the traced step. Runs that differ
only in them (a learning-rate sweep, run by run or by sweep workers) lower to one program, and
every run after the first loads it from the persistent compilation cache (runtime.py). What
stays in the program is what shapes it: the optimizer kind, betas, momentum, clipping, the muP
multipliers, the schedule kind and its step counts (warmup, total).
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
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
               multipliers, weight_decay=None) -> optax.GradientTransformation:
    """direction, [multipliers], + weight_decay x params (matrices only), x -lr: the chain
    optax.adamw and optax.lion build, with room for the multipliers before the decay.
    `weight_decay` (a traced value under `make`'s injection) overrides the config's."""
    decay = cfg.weight_decay if weight_decay is None else weight_decay
    return optax.chain(direction, *_multiplied(multipliers),
                       optax.add_decayed_weights(decay, decay_mask),
                       optax.scale_by_learning_rate(lr))


def _adamw(cfg: OptimizerConfig, lr: Schedule, multipliers=None, weight_decay=None
           ) -> optax.GradientTransformation:
    return _decoupled(optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps), cfg, lr, multipliers,
                      weight_decay)


def _lion(cfg: OptimizerConfig, lr: Schedule, multipliers=None, weight_decay=None
          ) -> optax.GradientTransformation:
    return _decoupled(optax.scale_by_lion(b1=cfg.b1, b2=cfg.b2), cfg, lr, multipliers, weight_decay)


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


# The optimizers whose factory takes a (runtime) `weight_decay`. Adafactor's decay stays a
# constant: optax switches it on by its truth value, which a traced value has none of.
DECOUPLED = ("adamw", "lion")


def runtime_schedule(cfg: OptimizerConfig, total_steps: int
                     ) -> Callable[[jax.Array, jax.Array, jax.Array], jax.Array]:
    """`rate(count, learning_rate, final_lr_fraction)`: the config's schedule with its peak and
    final fraction as (traced) arguments. Every schedule in `SCHEDULES` is the peak times a shape
    that is affine in the final fraction (warmup and decay interpolate between 1 and it), so two
    shapes built with the constants 0 and 1 give it at any fraction (tests/test_runtime_hparams.py
    checks each against the schedule built with the constants)."""
    unit = lambda f: SCHEDULES[cfg.schedule](  # noqa: E731
        dataclasses.replace(cfg, learning_rate=1.0, final_lr_fraction=f), total_steps)
    at0, at1 = unit(0.0), unit(1.0)

    def rate(count, learning_rate, final_lr_fraction):
        low = at0(count)
        return learning_rate * (low + final_lr_fraction * (at1(count) - low))

    return rate


@dataclasses.dataclass(frozen=True)
class InjectedSchedule:
    """The schedule `make` returns. Called with a step it is the config's schedule (its own peak
    and fraction, as constants); `from_state(step, opt_state)` reads them from the optimizer
    state instead, which is what the train step reports (so the rate is no constant there).
    `hyperparams`: the config's runtime values, which the loop passes to its compiled init as
    arguments (so the init program is shared by the runs too)."""

    rate: Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
    hyperparams: dict[str, float]

    def __call__(self, step):
        hp = self.hyperparams
        return self.rate(step, hp["learning_rate"], hp["final_lr_fraction"])

    def from_state(self, step, opt_state):
        hp = opt_state.hyperparams
        return self.rate(step, hp["learning_rate"], hp["final_lr_fraction"])


def make_baked(cfg: OptimizerConfig, total_steps: int, lr_multipliers=None
               ) -> tuple[optax.GradientTransformation, Schedule]:
    """`make` with every hyper-parameter a constant of the program (what `make` built before
    the injection; kept as the reference the injected optimizer is tested against)."""
    schedule = SCHEDULES[cfg.schedule](cfg, total_steps)
    tx = OPTIMIZERS[cfg.name](cfg, schedule, lr_multipliers)
    if cfg.grad_clip_norm is not None:
        tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), tx)
    return tx, schedule


def make(cfg: OptimizerConfig, total_steps: int, lr_multipliers=None
         ) -> tuple[optax.GradientTransformation, InjectedSchedule]:
    """The optimizer (clipping first, if asked) and its learning-rate schedule, with the peak
    learning rate, final fraction and (adamw, lion) weight decay in the optimizer state
    (`opt_state.hyperparams`, set from `cfg`; `with_hyperparams` changes them).

    `lr_multipliers`: a params-shaped tree of floats scaling each parameter's learning rate
    (`mup.lr_multipliers`); None leaves the optimizer exactly as without it.
    """
    rate = runtime_schedule(cfg, total_steps)

    def factory(learning_rate, final_lr_fraction, weight_decay=None):
        schedule = lambda count: rate(count, learning_rate, final_lr_fraction)  # noqa: E731
        decay = {} if weight_decay is None else {"weight_decay": weight_decay}
        tx = OPTIMIZERS[cfg.name](cfg, schedule, lr_multipliers, **decay)
        if cfg.grad_clip_norm is not None:
            tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), tx)
        return tx

    values = {"learning_rate": float(cfg.learning_rate),
              "final_lr_fraction": float(cfg.final_lr_fraction)}
    if cfg.name in DECOUPLED:
        values["weight_decay"] = float(cfg.weight_decay)
    # A None weight_decay is left out of the state (optax keeps non-numbers as constants).
    # float32 whatever the parameters' dtype: bfloat16 would round the rate itself (3e-3 by
    # 0.3 %), where the schedule computed it in float32 before.
    tx = optax.inject_hyperparams(factory, hyperparam_dtype=jnp.float32)(**values)
    return tx, InjectedSchedule(rate, values)


def with_hyperparams(opt_state, **values):
    """`opt_state` (of a `make` optimizer) with some of its runtime hyper-parameters replaced,
    e.g. `with_hyperparams(state.opt_state, learning_rate=3e-4)`; dtypes are kept."""
    hp = dict(opt_state.hyperparams)
    unknown = sorted(set(values) - set(hp))
    if unknown:
        raise KeyError(f"no runtime hyper-parameter {', '.join(unknown)}: this optimizer has "
                       f"{', '.join(sorted(hp))}")
    for name, value in values.items():
        old = hp[name]
        if isinstance(old, jax.core.Tracer):
            hp[name] = jnp.asarray(value, old.dtype)
        else:  # placed where the old value was (a restored, sharded state stays so)
            hp[name] = jax.device_put(np.asarray(value, old.dtype), old.sharding)
    return opt_state._replace(hyperparams=hp)
