"""The pure train and eval steps.

`make_train_step` closes over the model, optimizer and schedule and returns
`train_step(state, batch) -> (state, metrics)`: no I/O, no globals, jitted once by the caller.
A batch is a dict of arrays: "inputs" [B, ...], "targets" int32 [B, ...] and "mask" float32
shaped like "targets" (1 for a real target, 0 for padding). One classification loss serves every
family: an image classifier has targets [B], a language model targets [B, T]; the loss is the
mask-weighted mean cross-entropy over all targets, so padded batches give exact results and
micro-batch accumulation equals one big batch.
"""

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxmodels.training.state import TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


def classification_sums(logits: jax.Array, targets: jax.Array, mask: jax.Array):
    """Mask-weighted sums of cross-entropy and correct predictions. `logits` is `targets`'
    shape plus a trailing class axis ([B, K] with [B], or [B, T, V] with [B, T])."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return jnp.sum(losses * mask), jnp.sum(correct * mask)


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


def make_train_step(model: nn.Module, tx: optax.GradientTransformation,
                    schedule: Callable[[jax.Array], jax.Array], *, microbatches: int = 1,
                    axis_name: str | None = None, nonfinite: str = "stop",
                    spike_sigma: float | None = None, spike_window: int = 100,
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """Returns the pure train step. With `microbatches=k` each batch is split into k slices whose
    gradients are summed by a scan (memory of one slice, result of the whole batch).

    `nonfinite="skip"` (or a `spike_sigma`) makes the step guarded: when the loss or gradient norm
    is not finite (under "skip"), or the loss is a spike (see `is_spike`), params, optimizer state
    and model collections come out unchanged and metrics["skipped"] is 1; the step counter still
    advances, so the schedule and the data move on. Under "stop" without a spike guard the update
    is applied whatever it is and the caller stops on the non-finite metric.

    `axis_name` is for running the step per shard, under `jax.shard_map` over a mesh axis or a
    user's `jax.pmap(step, axis_name=...)`: each shard sees its slice of the batch, and the target
    count, loss, correct count and gradients are summed over the axis before the update, so every
    shard applies the same update as the jitted step on the whole batch (exactly, even when the
    shards hold different numbers of masked-out targets, which a mean of shard means would not
    be). Dropout keys are folded with the shard index; mutable collections (BatchNorm's running
    statistics) are averaged over shards, each shard normalising with its own batch statistics.
    Under plain `jax.jit` leave it None: GSPMD inserts the same reductions from the shardings.
    """

    if nonfinite not in ("stop", "skip"):
        raise ValueError(f"nonfinite must be 'stop' or 'skip', got {nonfinite!r}")
    guarded = nonfinite == "skip" or spike_sigma is not None

    def psum(x):
        return x if axis_name is None else jax.lax.psum(x, axis_name)

    def loss_fn(params, model_state, batch, rng, total_count):
        variables = {"params": params, **model_state}
        logits, new_model_state = model.apply(
            variables, batch["inputs"], train=True, rngs={"dropout": rng},
            mutable=list(model_state.keys()))
        loss_sum, correct = classification_sums(logits, batch["targets"], batch["mask"])
        # Dividing by the whole batch's count (not the slice's) makes slice gradients add up to
        # the gradient of the batch mean.
        return loss_sum / total_count, (dict(new_model_state), loss_sum, correct)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        if axis_name is not None:
            rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))
        total_count = jnp.maximum(psum(jnp.sum(batch["mask"])), 1.0)  # real targets in the batch

        if microbatches == 1:
            (_, (model_state, loss_sum, correct)), grads = grad_fn(
                state.params, state.model_state, batch, rng, total_count)
        else:
            # Micro-batch j is rows j, j+k, j+2k, ... (strided, not contiguous): with the batch
            # split over devices along rows, every device then holds its share of every
            # micro-batch, so the scan needs no communication. The sum over micro-batches is the
            # same either way.
            slices = jax.tree.map(
                lambda x: x.reshape(x.shape[0] // microbatches, microbatches, *x.shape[1:]
                                    ).swapaxes(0, 1), batch)

            def body(carry, inputs):
                grads_acc, model_state, loss_acc, correct_acc = carry
                index, micro = inputs
                (_, (model_state, loss_sum, correct)), grads = grad_fn(
                    state.params, model_state, micro, jax.random.fold_in(rng, index), total_count)
                grads_acc = jax.tree.map(jnp.add, grads_acc, grads)
                return (grads_acc, model_state, loss_acc + loss_sum, correct_acc + correct), None

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            init = (zeros, state.model_state, jnp.zeros(()), jnp.zeros(()))
            (grads, model_state, loss_sum, correct), _ = jax.lax.scan(
                body, init, (jnp.arange(microbatches), slices))

        if axis_name is not None:
            # Slice losses were divided by the whole batch's count: their gradients add up.
            grads, loss_sum, correct = psum((grads, loss_sum, correct))
            model_state = jax.lax.pmean(model_state, axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        loss = loss_sum / total_count
        grad_norm = optax.tree.norm(grads)
        accept = jnp.asarray(True)
        if nonfinite == "skip":
            accept = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        if spike_sigma is not None:
            accept = accept & ~is_spike(state.loss_stats, loss, spike_sigma, spike_window)
        loss_stats = state.loss_stats
        if guarded:
            keep = lambda new, old: jax.tree.map(  # noqa: E731
                lambda a, b: jnp.where(accept, a, b), new, old)
            params, opt_state, model_state = keep(
                (params, opt_state, model_state),
                (state.params, state.opt_state, state.model_state))
            loss_stats = jnp.where(accept, update_loss_stats(loss_stats, loss, spike_window),
                                   loss_stats)
        metrics = {
            "loss": loss,
            "accuracy": correct / total_count,
            "grad_norm": grad_norm,
            "param_norm": optax.tree.norm(params),
            "update_norm": optax.tree.norm(updates),
            "learning_rate": jnp.asarray(schedule(state.step), jnp.float32),
            "skipped": 1.0 - accept.astype(jnp.float32),
        }
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                  model_state=model_state, loss_stats=loss_stats)
        return new_state, metrics

    return train_step


def make_eval_step(model: nn.Module) -> Callable[[TrainState, Batch], Metrics]:
    """Returns `eval_step(state, batch) -> sums`: loss and correct counts summed over the real
    (mask 1) examples, plus their count, for exact aggregation over padded batches."""

    def eval_step(state: TrainState, batch: Batch) -> Metrics:
        variables = {"params": state.params, **state.model_state}
        logits = model.apply(variables, batch["inputs"], train=False)
        loss_sum, correct = classification_sums(logits, batch["targets"], batch["mask"])
        return {"loss_sum": loss_sum, "correct": correct, "count": jnp.sum(batch["mask"])}

    return eval_step


def predict_fn(model: nn.Module) -> Callable[[TrainState, jax.Array], jax.Array]:
    """Class probabilities: the softmax the classic model ends with."""

    def predict(state: TrainState, images: jax.Array) -> jax.Array:
        logits = model.apply({"params": state.params, **state.model_state}, images, train=False)
        return jax.nn.softmax(logits, axis=-1)

    return predict
