"""The pure train and eval steps.

`make_train_step(model, tx, objective)` returns `train_step(state, batch) -> (state, metrics)`:
no I/O, no globals, jitted once by the caller. `model` is a `jaxmodels.Model` (two pure
functions; `as_model` adapts Linen, NNX and plain pairs) and `objective` a
`jaxmodels.objectives.Objective`. A batch is a dict of arrays: "inputs" [B, ...], "targets"
[B, ...] (integer classes or tokens, float regression targets, any shape the objective reads)
and "mask" float32 [B] or [B, T] (1 for a real target, 0 for padding). The loss is the
mask-weighted mean of the objective's per-target losses over the whole batch, so padded batches
give exact results and micro-batch accumulation equals one big batch.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from jaxmodels.models.interface import as_model
from jaxmodels.training import objectives as objectives_lib
from jaxmodels.training.state import TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


def objective_sums(objective: objectives_lib.Objective, outputs, targets, mask) -> dict:
    """{"loss": (sum, count), metric: (sum, count), ...} of one batch: the objective's loss and
    metrics as mask-weighted sums with their counts."""
    losses = objective.losses(outputs, targets)
    if losses.shape != mask.shape:
        raise ValueError(f"the objective's losses have shape {losses.shape} but the batch's mask "
                         f"{mask.shape}: losses(outputs, targets) must give one loss per target "
                         f"(outputs {getattr(outputs, 'shape', '?')}, targets {targets.shape})")
    sums = {"loss": objectives_lib.masked_sum(losses, mask)}
    sums.update(objective.metrics(outputs, targets, mask))
    return sums


def _learning_rate(schedule, state: TrainState):
    """The step's learning rate: from `schedule` when given (one with a `from_state` method,
    `optim.make`'s, reads its peak from the optimizer state, so the rate is no constant of the
    program), else from an optimizer built with `optax.inject_hyperparams` (None when neither
    says)."""
    from_state = getattr(schedule, "from_state", None)
    if from_state is not None:
        return jnp.asarray(from_state(state.step, state.opt_state), jnp.float32)
    if schedule is not None:
        return jnp.asarray(schedule(state.step), jnp.float32)
    try:
        lr = optax.tree_utils.tree_get(state.opt_state, "learning_rate")
    except (KeyError, ValueError, AttributeError):
        return None
    return None if lr is None else jnp.asarray(lr, jnp.float32)


def update_loss_stats(stats: jax.Array, loss: jax.Array, window: int) -> jax.Array:
    """[count, mean, variance] after accepting `loss`: exact running moments for the first
    `window` losses, then exponential averages with weight 1/window (about that many recent)."""
    count, mean, var = stats[0], stats[1], stats[2]
    count = count + 1.0
    w = jnp.maximum(1.0 / count, 1.0 / window)
    delta = loss - mean
    mean = mean + w * delta
    var = (1.0 - w) * (var + w * delta * delta)
    return jnp.stack([count, mean, var])


def is_spike(stats: jax.Array, loss: jax.Array, sigma: float, window: int) -> jax.Array:
    """True when `loss` exceeds the running mean by more than `sigma` standard deviations, once
    `window` losses were accepted (before that the statistics are too young to judge)."""
    count, mean, var = stats[0], stats[1], stats[2]
    return (count >= window) & (loss > mean + sigma * jnp.sqrt(var))


def make_train_step(model, tx: optax.GradientTransformation, objective=None, *,
                    schedule: Callable[[jax.Array], jax.Array] | None = None,
                    microbatches: int = 1, axis_name: str | None = None, nonfinite: str = "stop",
                    spike_sigma: float | None = None, spike_window: int = 100,
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """Returns the pure train step for `model` (anything `as_model` accepts), optimizer `tx`
    and `objective` (default: cross-entropy). `schedule(step)` only labels the logged learning
    rate; without it the rate is read from an `optax.inject_hyperparams` state, or not logged.

    Metrics: "loss", the objective's scalar metrics (sum / count over the batch), "grad_norm",
    "param_norm" (after the update), "update_norm", "learning_rate" (when known) and "skipped".

    With `microbatches=k` each batch is split into k slices whose gradients are summed by a scan
    (memory of one slice, result of the whole batch).

    `nonfinite="skip"` (or a `spike_sigma`) makes the step guarded: when the loss, gradient norm
    or the updated parameters are not finite (under "skip"), or the loss is a spike (see
    `is_spike`), params, optimizer state and model collections come out unchanged and
    metrics["skipped"] is 1; the step counter still advances, so the schedule and the data move
    on. Under "stop" without a spike guard the update is applied whatever it is and the caller
    stops on the non-finite metric.

    `axis_name` is for running the step per shard, under `jax.shard_map` over a mesh axis or a
    user's `jax.pmap(step, axis_name=...)`: each shard sees its slice of the batch, and target
    counts, loss and metric sums and gradients are summed over the axis before the update, so
    every shard applies the same update as the jitted step on the whole batch (exactly, even when
    the shards hold different numbers of masked-out targets, which a mean of shard means would
    not be). Dropout keys are folded with the shard index; mutable collections (BatchNorm's
    running statistics) are averaged over shards. Under plain `jax.jit` leave it None: GSPMD
    inserts the same reductions from the shardings.
    """
    if nonfinite not in ("stop", "skip"):
        raise ValueError(f"nonfinite must be 'stop' or 'skip', got {nonfinite!r}")
    model = as_model(model)
    objective = objectives_lib.cross_entropy() if objective is None else objective
    guarded = nonfinite == "skip" or spike_sigma is not None

    def psum(x):
        return x if axis_name is None else jax.lax.psum(x, axis_name)

    def loss_fn(params, model_state, batch, rng, total_count):
        outputs, new_model_state = model.apply({"params": params, **model_state}, batch["inputs"],
                                               train=True, rng=rng)
        sums = objective_sums(objective, outputs, batch["targets"], batch["mask"])
        # Dividing by the whole batch's count (not the slice's) makes slice gradients add up to
        # the gradient of the batch mean.
        return sums["loss"][0] / total_count, (dict(new_model_state), sums)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        if axis_name is not None:
            rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
        total_count = jnp.maximum(psum(jnp.sum(batch["mask"])), 1.0)  # real targets in the batch

        if microbatches == 1:
            (_, (model_state, sums)), grads = grad_fn(
                state.params, state.model_state, batch, rng, total_count)
        else:
            # Micro-batch j is rows j, j+k, j+2k, ... (strided, not contiguous): with the batch
            # split over devices along rows, every device then holds its share of every
            # micro-batch, so the scan needs no communication. The sum over micro-batches is the
            # same either way.
            slices = jax.tree.map(
                lambda x: x.reshape(x.shape[0] // microbatches, microbatches, *x.shape[1:]
                                    ).swapaxes(0, 1), batch)
            first = jax.tree.map(lambda x: x[0], slices)
            sums_shape = jax.eval_shape(lambda: grad_fn(state.params, state.model_state, first,
                                                        rng, total_count)[0][1][1])

            def body(carry, inputs):
                grads_acc, model_state, sums_acc = carry
                index, micro = inputs
                (_, (model_state, sums)), grads = grad_fn(
                    state.params, model_state, micro, jax.random.fold_in(rng, index), total_count)
                return (jax.tree.map(jnp.add, grads_acc, grads), model_state,
                        jax.tree.map(jnp.add, sums_acc, sums)), None

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            init = (zeros, state.model_state,
                    jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), sums_shape))
            (grads, model_state, sums), _ = jax.lax.scan(
                body, init, (jnp.arange(microbatches), slices))

        if axis_name is not None:
            # Slice losses were divided by the whole batch's count: their gradients add up.
            grads, sums = psum((grads, sums))
            model_state = jax.lax.pmean(model_state, axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        loss = sums["loss"][0] / total_count
        grad_norm = optax.tree.norm(grads)
        param_norm = optax.tree.norm(params)
        accept = jnp.asarray(True)
        if nonfinite == "skip":
            # Finite loss and gradients can still overflow the parameters (a huge learning
            # rate): such an update is refused too, or the run would continue on infinities.
            accept = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(param_norm)
        if spike_sigma is not None:
            accept = accept & ~is_spike(state.loss_stats, loss, spike_sigma, spike_window)
        loss_stats = state.loss_stats
        if guarded:
            keep = lambda new, old: jax.tree.map(  # noqa: E731
                lambda a, b: jnp.where(accept, a, b), new, old)
            params, opt_state, model_state = keep(
                (params, opt_state, model_state),
                (state.params, state.opt_state, state.model_state))
            param_norm = jnp.where(accept, param_norm, optax.tree.norm(state.params))
            loss_stats = jnp.where(accept, update_loss_stats(loss_stats, loss, spike_window),
                                   loss_stats)
        metrics = {"loss": loss}
        for name, (total, count) in sums.items():
            if name != "loss" and jnp.ndim(total) == 0:  # vector metrics are for evaluation
                metrics[name] = total / jnp.maximum(count, 1.0)
        metrics.update({
            "grad_norm": grad_norm,
            "param_norm": param_norm,
            "update_norm": optax.tree.norm(updates),
            "skipped": 1.0 - accept.astype(jnp.float32),
        })
        lr = _learning_rate(schedule, state)
        if lr is not None:
            metrics["learning_rate"] = lr
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  model_state=model_state, loss_stats=loss_stats)
        return new_state, metrics

    return train_step


def make_eval_step(model, objective=None) -> Callable[[TrainState, Batch], dict]:
    """Returns `eval_step(state, batch) -> {name: (sum, count)}`: the objective's loss and
    metrics over the real (mask 1) targets, to be added over batches before dividing."""
    model = as_model(model)
    objective = objectives_lib.cross_entropy() if objective is None else objective

    def eval_step(state: TrainState, batch: Batch) -> dict:
        outputs, _ = model.apply({"params": state.params, **state.model_state}, batch["inputs"],
                                 train=False)
        return objective_sums(objective, outputs, batch["targets"], batch["mask"])

    return eval_step


def make_predict(model) -> Callable[[TrainState, jax.Array], jax.Array]:
    """`predict(state, inputs) -> outputs`: the model in evaluation mode (logits for the
    built-in classifiers and language models)."""
    model = as_model(model)

    def predict(state: TrainState, inputs: jax.Array):
        return model.apply({"params": state.params, **state.model_state}, inputs, train=False)[0]

    return predict
