"""Objectives: what a model is trained to minimise and what is measured beside it, as values.

    objective = jaxmodels.objectives.cross_entropy(label_smoothing=0.1)
    objective = jaxmodels.objectives.mse()
    objective = jaxmodels.objectives.from_loss(lambda outputs, targets: jnp.abs(outputs - targets).sum(-1))
    objective = jaxmodels.objectives.with_metrics(objective, top5=top_k_accuracy(5))

An `Objective` is two pure functions over one batch:
- `losses(outputs, targets) -> per-target losses`, shaped like the batch's "mask" ([B] for one
  target per example, [B, T] for a language model's tokens);
- `metrics(outputs, targets, mask) -> {name: (sum, count)}`: extra measurements as sums with
  their counts, never means, so padded batches (mask 0), micro-batches and devices aggregate
  exactly by adding sums and counts. A sum may be a vector (a per-class count).

The step reports `loss` = sum(losses * mask) / sum(mask) and every metric as sum / count; the
evaluator adds sums and counts over all batches before dividing. `name` and `loss_label` name
the loss in logs and plots ("cross-entropy (nats)", "mean squared error").

Shape names: B batch, T sequence positions, K classes (or vocabulary entries), F features.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

Sums = dict[str, tuple[jax.Array, jax.Array]]


def no_metrics(outputs, targets, mask) -> Sums:
    del outputs, targets, mask
    return {}


class Objective(NamedTuple):
    """A loss per target and metric sums with counts (see the module docstring)."""

    losses: Callable[[Any, Any], jax.Array]
    metrics: Callable[[Any, Any, jax.Array], Sums] = no_metrics
    name: str = "loss"
    loss_label: str = "loss"


def masked_sum(values: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum of values where mask is 1, number of such targets): the pair every metric returns.
    `values` may carry trailing axes beyond the mask's (a per-class vector): they are kept."""
    values = values.astype(jnp.float32)
    weights = mask.reshape(mask.shape + (1,) * (values.ndim - mask.ndim)).astype(jnp.float32)
    reduce = tuple(range(mask.ndim))
    return jnp.sum(values * weights, axis=reduce), jnp.sum(mask.astype(jnp.float32))


def accuracy(outputs: jax.Array, targets: jax.Array, mask: jax.Array):
    """Correct top-1 predictions: `outputs` [..., K] logits, `targets` integer [...]."""
    return masked_sum(jnp.argmax(outputs, axis=-1) == targets, mask)


def top_k_accuracy(k: int) -> Callable:
    """A metric: the target is among the `k` highest logits."""

    def metric(outputs, targets, mask):
        _, top = jax.lax.top_k(outputs, k)
        return masked_sum(jnp.any(top == targets[..., None], axis=-1), mask)

    return metric


def class_counts(num_classes: int, of: str = "predictions") -> Callable:
    """A vector metric: how many targets were predicted as each class ("predictions") or
    belong to it ("targets"); a row of a confusion matrix per class in one sum."""

    def metric(outputs, targets, mask):
        ids = jnp.argmax(outputs, axis=-1) if of == "predictions" else targets
        return masked_sum(jax.nn.one_hot(ids, num_classes), mask)

    return metric


def with_metrics(objective: Objective, **metrics: Callable) -> Objective:
    """`objective` measuring also `metrics` (each `fn(outputs, targets, mask) -> (sum, count)`)."""
    inner = objective.metrics

    def combined(outputs, targets, mask):
        out = dict(inner(outputs, targets, mask))
        out.update({name: fn(outputs, targets, mask) for name, fn in metrics.items()})
        return out

    return objective._replace(metrics=combined)


def cross_entropy(label_smoothing: float = 0.0, z_loss: float = 0.0, **unused) -> Objective:
    """Softmax cross-entropy with integer targets, for classifiers ([B, K] logits, [B]
    targets) and language models ([B, T, K] logits, [B, T] targets) alike.

    `label_smoothing` ε trains against (1 - ε) one-hot + ε / K uniform. `z_loss` adds
    z_loss * logsumexp(logits)² per target (PaLM's auxiliary loss that keeps the softmax
    normaliser near 1, useful for large language models). With either, the plain
    cross-entropy is reported beside the total as `nll` (and the z-term as `z_loss`)."""
    del unused  # the other fields of the objective config section
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    if z_loss < 0:
        raise ValueError(f"z_loss must be >= 0, got {z_loss}")

    def nll(logits, targets):
        return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)

    def smoothed(logits, targets):
        if label_smoothing == 0.0:
            return nll(logits, targets)
        labels = optax.smooth_labels(jax.nn.one_hot(targets, logits.shape[-1]), label_smoothing)
        return optax.softmax_cross_entropy(logits.astype(jnp.float32), labels)

    def z_term(logits):
        return z_loss * jnp.square(jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1))

    def losses(logits, targets):
        out = smoothed(logits, targets)
        return out + z_term(logits) if z_loss else out

    def metrics(logits, targets, mask):
        out = {"accuracy": accuracy(logits, targets, mask)}
        if label_smoothing or z_loss:  # the loss is no longer the likelihood: report both
            out["nll"] = masked_sum(nll(logits, targets), mask)
        if z_loss:
            out["z_loss"] = masked_sum(z_term(logits), mask)
        return out

    return Objective(losses, metrics, "cross_entropy", "cross-entropy (nats)")


def mse(**unused) -> Objective:
    """Mean squared error for regression: outputs and float targets of the same shape [B, ...];
    the loss per example is the mean over its trailing axes. Also reports `mae`."""
    del unused

    def per_example(values):
        return values.reshape(values.shape[0], -1).mean(axis=-1) if values.ndim > 1 else values

    def losses(outputs, targets):
        return per_example(jnp.square(outputs.astype(jnp.float32) - targets))

    def metrics(outputs, targets, mask):
        return {"mae": masked_sum(per_example(jnp.abs(outputs.astype(jnp.float32) - targets)), mask)}

    return Objective(losses, metrics, "mse", "mean squared error")


def from_loss(fn: Callable, name: str | None = None) -> Objective:
    """A user's `fn(outputs, targets) -> per-example (or per-target) losses` as an Objective."""
    label = name or getattr(fn, "__name__", "loss")
    if label == "<lambda>":
        label = "loss"
    return Objective(fn, no_metrics, label, label)


def resolve(spec, **options) -> Objective:
    """An Objective from a registered name ("cross_entropy", "mse", ...), a callable loss, or an
    Objective (returned as it is)."""
    from jaxmodels import registry

    if isinstance(spec, Objective):
        return spec
    if isinstance(spec, str):
        return registry.objective_factory(spec)(**options)
    if callable(spec):
        return from_loss(spec)
    from jaxmodels.errors import ConfigError

    raise ConfigError(f"loss={spec!r}: pass 'cross_entropy', 'mse', a function loss(outputs, "
                      f"targets) -> per-example losses, or a jaxmodels Objective")
