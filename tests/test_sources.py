"""Data sources (jaxmodels/data/source.py and its adapters): rows, padding, exact resume, the
registry path through tasks.build, and one-line errors for bad inputs."""

import json

import numpy as np
import pytest

from jaxmodels import data, registry
from jaxmodels.config import DataConfig
from jaxmodels.data.source import state_from_json, state_to_json
from jaxmodels.errors import DataError, UserError
from jaxmodels.training import tasks


def take(stream, k):
    return [next(stream) for _ in range(k)]


def json_round_trip(state):
    """What the checkpoint does to a stream state."""
    return json.loads(json.dumps(state))


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
            assert x[k].dtype == y[k].dtype


def regression_split(n, seed):
    """Float features [N, 4] whose first column is the row number (so a row is recognisable),
    and float targets [N, 3] that are a fixed function of the features."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    x[:, 0] = np.arange(n)
    y = np.stack([x[:, 0] * 2.0, x[:, 1] - x[:, 2], x[:, 3] ** 2], axis=1).astype(np.float64)
    return x, y


# ---------------------------------------------------------------------------------------------
# from_arrays


def test_array_source_serves_each_epoch_as_a_permutation_of_the_rows():
    x, y = regression_split(10, seed=0)
    source = data.from_arrays((x, y), batch_size=4)
    assert source.num_outputs is None  # float targets: regression
    assert source.example_inputs.shape == (1, 4) and source.example_inputs.dtype == np.float32
    batches = take(source.train_batches(seed=7), 10)  # 40 rows: exactly 4 epochs
    for b in batches:
        assert b["inputs"].shape == (4, 4) and b["inputs"].dtype == np.float32
        assert b["targets"].shape == (4, 3) and b["targets"].dtype == np.float64
        assert b["mask"].shape == (4,) and b["mask"].dtype == np.float32 and b["mask"].all()
    rows = np.concatenate([b["inputs"] for b in batches])
    targets = np.concatenate([b["targets"] for b in batches])
    order = rows[:, 0].astype(int)
    # Every row keeps its own targets, and its exact feature values.
    np.testing.assert_array_equal(targets, y[order])
    np.testing.assert_array_equal(rows, x[order])
    epochs = order.reshape(4, 10)
    for e, epoch in enumerate(epochs):
        np.testing.assert_array_equal(np.sort(epoch), np.arange(10))
        # The documented order: epoch e is permuted by default_rng([seed, e]).
        np.testing.assert_array_equal(epoch, np.random.default_rng([7, e]).permutation(10))
    assert len({tuple(e) for e in epochs}) > 1  # reshuffled, not one order repeated
    other_seed = np.concatenate([b["inputs"][:, 0] for b in take(source.train_batches(8), 3)])
    assert not np.array_equal(other_seed, order[:12])


def test_array_eval_batches_are_padded_and_sum_to_the_split():
    x, y = regression_split(10, seed=0)
    vx, vy = regression_split(7, seed=1)
    source = data.from_arrays({"inputs": x, "targets": y}, validation={"inputs": vx, "targets": vy},
                              batch_size=4, eval_batch_size=3)
    assert source.splits == ("train", "validation")
    batches = list(source.eval_batches("validation"))
    assert len(batches) == 3
    assert all(b["inputs"].shape == (3, 4) and b["targets"].shape == (3, 3) for b in batches)
    mask = np.concatenate([b["mask"] for b in batches])
    np.testing.assert_array_equal(mask, [1, 1, 1, 1, 1, 1, 1, 0, 0])
    weighted = sum((b["targets"] * b["mask"][:, None]).sum(axis=0) for b in batches)
    np.testing.assert_allclose(weighted, vy.sum(axis=0))
    np.testing.assert_array_equal(np.concatenate([b["inputs"] for b in batches])[:7], vx)
    assert np.count_nonzero(batches[-1]["inputs"][1:]) == 0  # padding is zeros


def test_array_source_int_targets_infer_classes_and_mask_like_the_targets():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 50, size=(12, 6)).astype(np.int32)
    tokens[3, 2] = 49
    source = data.from_arrays((tokens, tokens), test=(tokens[:5], tokens[:5]), batch_size=4,
                              eval_batch_size=4)
    assert source.num_outputs == 50
    b = next(source.train_batches(0))
    assert b["mask"].shape == (4, 6)  # per-token losses
    last = list(source.eval_batches("test"))[-1]
    np.testing.assert_array_equal(last["mask"].sum(axis=1), [6, 0, 0, 0])
    labels = data.from_arrays((tokens, np.array([0, 2] * 6)), batch_size=3)
    assert labels.num_outputs == 3 and next(labels.train_batches(0))["mask"].shape == (3,)
    masked = data.from_arrays({"x": tokens, "y": tokens, "m": np.ones(12, np.float32)},
                              inputs="x", targets="y", mask="m", batch_size=4)
    assert next(masked.train_batches(0))["mask"].shape == (4,)  # the given mask, not the default


def test_array_source_resumes_exactly_across_an_epoch_boundary():
    x, y = regression_split(10, seed=0)
    source = data.from_arrays((x, y), batch_size=4)
    reference = take(source.train_batches(3), 8)
    first = source.train_batches(3)
    take(first, 3)  # 12 rows: into the second epoch
    state = json_round_trip(first.get_state())
    resumed = data.from_arrays((x, y), batch_size=4).train_batches(3)
    resumed.set_state(state)
    assert_same_batches(take(resumed, 5), reference[3:])
    with pytest.raises(DataError, match="seed"):
        data.from_arrays((x, y), batch_size=4).train_batches(4).set_state(state)


# ---------------------------------------------------------------------------------------------
# from_generator


def windows_factory(calls):
    """Batches of 4 rows of a 10-row table in per-epoch permutations, starting at any batch:
    deterministic in (seed, start), as from_generator requires."""
    x, y = regression_split(10, seed=0)

    def factory(seed, start):
        calls.append((seed, start))
        k = start
        while True:
            idx = data.EpochShuffle(10, 4, seed).indices(k)
            yield {"inputs": x[idx], "targets": y[idx]}
            k += 1

    return factory


def test_generator_source_resumes_exactly_across_an_epoch_boundary():
    calls = []
    x, y = regression_split(6, seed=2)
    source = data.from_generator(windows_factory(calls), train_size=10, batch_size=4,
                                 validation=(x, y), eval_batch_size=4)
    assert source.example_inputs.shape == (1, 4)
    reference = take(source.train_batches(5), 8)
    first = source.train_batches(5)
    take(first, 3)
    state = json_round_trip(first.get_state())
    calls.clear()
    resumed = data.from_generator(windows_factory(calls), train_size=10, batch_size=4,
                                  example_inputs=np.zeros((1, 4), np.float32)).train_batches(5)
    resumed.set_state(state)
    assert_same_batches(take(resumed, 5), reference[3:])
    assert calls == [(5, 3)]  # reopened once, at the saved position
    assert reference[0]["mask"].shape == (4,)  # float targets: one loss per example
    assert sum(b["mask"].sum() for b in source.eval_batches("validation")) == 6


def test_generator_eval_split_from_a_factory():
    x, y = regression_split(10, seed=0)

    def validation():
        for start in (0, 4):
            yield {"inputs": x[start:start + 4], "targets": y[start:start + 4],
                   "mask": np.ones(4, np.float32)}

    source = data.from_generator(windows_factory([]), train_size=10, validation=validation)
    twice = [list(source.eval_batches("validation")) for _ in range(2)]
    assert_same_batches(twice[0], twice[1])  # called again for every evaluation
    assert len(twice[0]) == 2


# ---------------------------------------------------------------------------------------------
# from_grain

def grain_examples(n):
    grain = pytest.importorskip("grain")  # a dev dependency; the rest of the file needs none
    x, y = regression_split(n, seed=0)
    return grain.MapDataset.source(list(range(n))).map(
        lambda i: {"inputs": x[i], "targets": y[i]}), x, y


def test_grain_map_dataset_source_rows_and_resume():
    ds, x, y = grain_examples(10)
    source = data.from_grain(ds, validation=ds, batch_size=4, eval_batch_size=4)
    reference = take(source.train_batches(1), 8)
    rows = np.concatenate([b["inputs"] for b in reference])
    order = rows[:, 0].astype(int)
    np.testing.assert_array_equal(np.concatenate([b["targets"] for b in reference]), y[order])
    for epoch in order[:30].reshape(3, 10):
        np.testing.assert_array_equal(np.sort(epoch), np.arange(10))
    first = source.train_batches(1)
    take(first, 3)
    state = json_round_trip(first.get_state())
    resumed = data.from_grain(grain_examples(10)[0], batch_size=4).train_batches(1)
    resumed.set_state(state)
    assert_same_batches(take(resumed, 5), reference[3:])
    evals = list(source.eval_batches("validation"))
    assert sum(b["mask"].sum() for b in evals) == 10 and evals[-1]["mask"].tolist() == [1, 1, 0, 0]


def shuffled_stream(seed):
    ds, _, _ = grain_examples(10)
    return ds.shuffle(seed=seed).repeat().to_iter_dataset()


def test_grain_iter_dataset_resumes_with_its_own_state_across_an_epoch_boundary():
    source = data.from_grain(shuffled_stream, batch_size=4, train_size=10)
    reference = take(source.train_batches(2), 8)
    order = np.concatenate([b["inputs"][:, 0] for b in reference]).astype(int)
    np.testing.assert_array_equal(np.sort(order[:10]), np.arange(10))  # grain's epoch
    first = source.train_batches(2)
    take(first, 3)  # 12 examples: into grain's second epoch
    state = json_round_trip(first.get_state())
    assert state["grain"]  # grain's own iterator state, carried as JSON
    resumed = data.from_grain(shuffled_stream, batch_size=4, train_size=10).train_batches(2)
    resumed.set_state(state)
    assert_same_batches(take(resumed, 5), reference[3:])
    fresh = take(data.from_grain(shuffled_stream, batch_size=4, train_size=10).train_batches(2), 1)
    assert not np.array_equal(fresh[0]["inputs"], reference[3]["inputs"])  # set_state mattered
    other_seed = next(source.train_batches(3))
    assert not np.array_equal(other_seed["inputs"], reference[0]["inputs"])


def test_foreign_states_survive_json_or_are_refused():
    raw = b"\x00\xffgrain-loader-state"
    assert state_from_json(json_round_trip(state_to_json(raw))) == raw
    assert state_from_json(json_round_trip(state_to_json({"next_index": 3}))) == {"next_index": 3}
    with pytest.raises(DataError, match="JSON"):
        state_to_json({"pos": (1, 2)})  # a tuple would come back a list
    with pytest.raises(DataError, match="JSON"):
        state_to_json({"arr": np.arange(2)})


# ---------------------------------------------------------------------------------------------
# Registered datasets through tasks.build


def test_a_registered_dataset_builds_through_tasks_build(monkeypatch):
    x, y = regression_split(20, seed=0)
    seen = []

    def build(cfg):
        seen.append(cfg)
        return data.from_arrays((x, y), validation=(x[:5], y[:5]), test=(x[5:9], y[5:9]),
                                batch_size=cfg.batch_size, eval_batch_size=cfg.eval_batch_size,
                                name="my_regression")

    monkeypatch.setitem(registry.DATASETS, "my_regression", build)
    cfg = DataConfig(dataset="my_regression", batch_size=5, eval_batch_size=3)
    source = tasks.build(cfg)
    assert seen == [cfg] and source.name == "my_regression"
    assert isinstance(source, data.DataSource)
    assert next(source.train_batches(0))["targets"].shape == (5, 3)
    assert sum(b["mask"].sum() for b in source.eval_batches(cfg.eval_split)) == 4

    monkeypatch.setitem(registry.DATASETS, "fixed_batch", lambda cfg: data.from_arrays((x, y), batch_size=4))
    with pytest.raises(UserError, match="data.batch_size=5"):
        tasks.build(DataConfig(dataset="fixed_batch", batch_size=5))
    monkeypatch.setitem(registry.DATASETS, "no_test", lambda cfg: data.from_arrays((x, y), batch_size=5))
    with pytest.raises(UserError, match="eval_split"):
        tasks.build(DataConfig(dataset="no_test", batch_size=5))
    monkeypatch.setitem(registry.DATASETS, "not_a_source", lambda cfg: (x, y))
    with pytest.raises(DataError, match="not a data source"):
        tasks.build(DataConfig(dataset="not_a_source"))


# ---------------------------------------------------------------------------------------------
# Bad inputs: one line naming the problem and the fix


def one_line(info) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


def test_array_source_bad_inputs():
    x, y = regression_split(10, seed=0)
    with pytest.raises(DataError) as info:
        data.from_arrays((x, y[:9]), batch_size=4)
    assert "10 inputs but 9 targets" in one_line(info)
    with pytest.raises(DataError) as info:
        data.from_arrays((x, y), validation=(x[:0], y[:0]), batch_size=4)
    assert "validation split is empty" in one_line(info)
    with pytest.raises(DataError) as info:
        data.from_arrays((x, y), batch_size=11)
    assert "lower batch_size" in one_line(info) and "at most 10" in one_line(info)
    with pytest.raises(DataError) as info:
        data.from_arrays({"x": x, "y": y}, batch_size=4)
    assert "inputs=..." in one_line(info)
    with pytest.raises(DataError) as info:
        data.from_arrays((x, y), test=(x[:, :2], y), batch_size=4)
    assert "same layout" in one_line(info)
    with pytest.raises(DataError) as info:
        data.from_arrays((x, y), batch_size=0)
    assert "positive integer" in one_line(info)
    # A batch larger than an evaluation split is fine: it is padded.
    small = data.from_arrays((x, y), test=(x[:2], y[:2]), batch_size=4, eval_batch_size=8)
    assert [b["mask"].sum() for b in small.eval_batches("test")] == [2]


def test_generator_bad_inputs():
    x, y = regression_split(10, seed=0)

    def wrong_keys(seed, start):
        while True:
            yield {"x": x[:4], "label": y[:4]}

    source = data.from_generator(wrong_keys, train_size=10, example_inputs=x[:1])
    with pytest.raises(DataError) as info:
        next(source.train_batches(0))
    assert "'x', 'label'" in one_line(info) and "'inputs'" in one_line(info)
    with pytest.raises(DataError) as info:  # without example_inputs it fails when built
        data.from_generator(wrong_keys, train_size=10)
    one_line(info)

    def finite(seed, start):
        yield {"inputs": x[:4], "targets": y[:4]}

    stream = data.from_generator(finite, train_size=10).train_batches(0)
    next(stream)
    with pytest.raises(DataError) as info:
        next(stream)
    assert "endless" in one_line(info)

    def ragged(seed, start):
        for n in (4, 3):
            yield {"inputs": x[:n], "targets": y[:n]}

    stream = data.from_generator(ragged, train_size=10).train_batches(0)
    next(stream)
    with pytest.raises(DataError) as info:
        next(stream)
    assert "one shape" in one_line(info)

    def mismatched(seed, start):
        while True:
            yield {"inputs": x[:4], "targets": y[:3]}

    with pytest.raises(DataError) as info:
        data.from_generator(mismatched, train_size=10)
    assert "different batch sizes" in one_line(info)
    with pytest.raises(DataError) as info:
        data.from_generator(finite, train_size=10, batch_size=8)
    assert "batch_size=8" in one_line(info)
    with pytest.raises(DataError) as info:
        data.from_generator(finite, train_size=0)
    assert "train_size" in one_line(info)


def test_grain_bad_inputs():
    ds, x, y = grain_examples(10)
    with pytest.raises(DataError) as info:
        data.from_grain(ds.map(lambda e: {"features": e["inputs"]}), batch_size=4)
    assert "'features'" in one_line(info)
    with pytest.raises(DataError) as info:
        data.from_grain(ds, batch_size=11)
    assert "at most 10" in one_line(info)
    with pytest.raises(DataError) as info:
        data.from_grain(ds.repeat(), batch_size=4)
    assert "endless" in one_line(info)
    with pytest.raises(DataError) as info:
        data.from_grain(shuffled_stream, batch_size=4)
    assert "train_size" in one_line(info)
    finite = data.from_grain(ds.to_iter_dataset(), batch_size=4, train_size=10).train_batches(0)
    take(finite, 2)
    with pytest.raises(DataError) as info:
        next(finite)
    assert ".repeat()" in one_line(info)
    with pytest.raises(DataError) as info:
        data.from_grain([1, 2, 3], batch_size=4)
    assert "MapDataset" in one_line(info)
    with pytest.raises(DataError) as info:
        data.from_grain(ds, validation=iter([ds[0]]), batch_size=4)
    assert "one-shot" in one_line(info)
    listed = data.from_grain(ds, validation=[ds[i] for i in range(5)], batch_size=4)
    passes = [list(listed.eval_batches("validation")) for _ in range(2)]  # read again each time
    assert_same_batches(*passes)
    assert passes[0][-1]["mask"].tolist() == [1, 0, 0, 0]


# ---------------------------------------------------------------------------------------------
# The loop reads a registered source like a built-in one


def test_training_on_a_registered_regression_dataset(monkeypatch, tmp_path):
    import flax.linen as nn

    import jaxmodels
    from jaxmodels.training.loop import Parts

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = x @ rng.normal(size=(4, 3)).astype(np.float32)  # float targets [N, 3]

    def build(cfg):
        return data.from_arrays((x, y), validation=(x[:16], y[:16]), test=(x[16:26], y[16:26]),
                                batch_size=cfg.batch_size, eval_batch_size=cfg.eval_batch_size,
                                name="linear")

    monkeypatch.setitem(registry.DATASETS, "linear", build)
    cfg = jaxmodels.apply_overrides(jaxmodels.Config(), [
        "data.dataset=linear", "data.batch_size=8", "data.eval_batch_size=16", "train.steps=40",
        "objective.name=mse", "optimizer.schedule=constant", "optimizer.learning_rate=0.05"])
    summary = jaxmodels.train(cfg, tmp_path, parts=Parts(model=nn.Dense(3)))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_loss"] for r in records if "val_loss" in r]
    assert len(val) >= 2 and val[-1] < 0.5 * val[0]  # it learns the linear map
    assert summary["eval_examples"] == 10  # the padded test batch counted once per example
