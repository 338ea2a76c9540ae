"""Packed step metrics (training/packed_metrics.py): one array per step, the same values."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxmodels import models
from jaxmodels.config import OptimizerConfig
from jaxmodels.training import optim, packed_metrics
from jaxmodels.training import step as step_lib
from jaxmodels.training.metrics_log import MetricsLog
from jaxmodels.training.run_checkpoint import LoopState
from jaxmodels.training.state import init_state


def _step_and_state():
    model = models.build(models.MLPConfig(hidden=(8,)))
    tx, schedule = optim.make(OptimizerConfig(name="adam", learning_rate=1e-2), total_steps=10)
    state = init_state(model, tx, jnp.zeros((1, 4, 4, 1)), seed=0)
    rng = np.random.default_rng(0)
    batch = {"inputs": rng.normal(size=(8, 4, 4, 1)).astype(np.float32),
             "targets": rng.integers(0, 10, 8).astype(np.int32), "mask": np.ones(8, np.float32)}
    return step_lib.make_train_step(model, tx, schedule=schedule), state, batch


def test_packed_step_has_one_metrics_array_with_the_plain_steps_values():
    plain, state, batch = _step_and_state()
    _, want = jax.jit(plain)(state, batch)
    _, got = jax.jit(packed_metrics.packing(plain))(state, batch)
    assert isinstance(got, packed_metrics.PackedMetrics)
    assert len(jax.tree.leaves(got)) == 1  # what the loop fetches per step
    assert sorted(got) == sorted(want)
    for name in want:
        assert float(got[name]) == float(want[name]), name
    host = packed_metrics.to_host([(1, got)])[0][1]
    assert type(host) is dict and {k: float(v) for k, v in host.items()} == {
        k: float(v) for k, v in want.items()}


def test_metrics_that_are_not_float_scalars_stay_a_dict():
    ints = packed_metrics.pack({"loss": jnp.float32(1.0), "count": jnp.int32(3)})
    vector = packed_metrics.pack({"loss": jnp.float32(1.0), "per_class": jnp.ones(3)})
    assert type(ints) is dict and type(vector) is dict
    fetched = packed_metrics.to_host([(1, ints)])[0][1]
    assert int(fetched["count"]) == 3 and isinstance(fetched["count"], np.ndarray)


def test_the_log_means_mixed_packed_and_already_fetched_steps(tmp_path):
    # A resumed run's pending steps come back from the checkpoint as host dicts, and a save or
    # the non-finite check fetches part of an interval before the log: the mean is over all.
    ls = LoopState()
    log = MetricsLog(ls, [], tmp_path / "metrics.jsonl", guarded=False)
    ls.pending = [(1, {"loss": np.float32(1.0)})]
    log.add(2, packed_metrics.pack({"loss": jnp.float32(2.0)}))
    assert log.nonfinite() is None
    log.add(3, packed_metrics.pack({"loss": jnp.float32(6.0)}))
    record = log.interval(3, 0.0)
    assert record["loss"] == 3.0 and ls.pending == []
    log.close()


def test_vmapped_packing_gives_each_model_its_own_metrics():
    # The packed sweep's step (orchestration/packed.py) is the packed step vmapped over K
    # models: one [K, n] array whose row k is model k's metrics.
    plain, state, batch = _step_and_state()
    states = jax.tree.map(lambda a: jnp.stack([a, a]), state)
    batches = {k: np.stack([v, v[::-1]]) for k, v in batch.items()}
    _, got = jax.jit(jax.vmap(packed_metrics.packing(plain)))(states, batches)
    assert isinstance(got, packed_metrics.PackedMetrics) and got.values.shape == (2, len(got))
    host = jax.device_get(got)
    for k in range(2):
        _, want = jax.jit(plain)(state, {n: v[k] for n, v in batches.items()})
        for name in want:
            np.testing.assert_allclose(host[name][k], want[name], rtol=1e-6, err_msg=name)
