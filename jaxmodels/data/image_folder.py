"""A folder of images as a streamed data source: `data.dataset=image_folder data.data_dir=DIR`.

DIR/train/CLASS/*.png|jpg|jpeg (one subfolder per class, sorted names give the class ids), and
DIR/validation/CLASS/... and/or DIR/test/CLASS/... with the same class names. Only the file
list is held in memory; images are decoded (PIL) when a batch is built. Every image of the
folder must have one size and mode ("L" stays one channel, anything else becomes RGB).

Train batch k holds the examples EpochShuffle gives for (seed, k), so the stream's state is one
integer. Augmentation (data.augment, a comma list applied in order to each train image):
  crop:P   pad P zero pixels on every side, then crop a random H x W window back;
  flip     mirror left-right with probability 1/2.
Row r of batch k draws its randomness from np.random.default_rng([seed, k, r]) and from nothing
else, so a batch is the same in-process, in any number of workers and after a resume.

data.workers=N decodes and augments whole batches in N grain worker processes (grain's
mp_prefetch, in order); 0 builds them in the calling thread (data/prefetch.py still overlaps
that with the step). Pixels are normalised as the built-in image sets are (data.normalization),
with the mean and std of up to 512 evenly spaced train images.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterator

import numpy as np

from jaxmodels.config import DataConfig
from jaxmodels.data.pipeline import EpochShuffle, normalize, restored_position
from jaxmodels.errors import DataError

EXTENSIONS = (".png", ".jpg", ".jpeg")
EVAL_SPLITS = ("validation", "test")
_STATS_SAMPLE = 512


def parse_augment(spec: str) -> tuple[tuple[str, int], ...]:
    """"crop:4,flip" -> (("crop", 4), ("flip", 0)); "" -> ()."""
    ops = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, arg = part.partition(":")
        if name == "flip" and not arg:
            ops.append(("flip", 0))
        elif name == "crop" and arg.isdigit():
            ops.append(("crop", int(arg)))
        else:
            raise DataError(f"data.augment: unknown transform {part!r}: use a comma list of "
                            f"crop:P (pad P pixels, random crop) and flip, e.g. data.augment=crop:4,flip")
    return tuple(ops)


def augment(image_HWC: np.ndarray, ops, rng: np.random.Generator) -> np.ndarray:
    """One uint8 image through `ops` (parse_augment's output), drawing from `rng` in order."""
    for name, arg in ops:
        if name == "crop" and arg > 0:
            h, w = image_HWC.shape[:2]
            padded = np.pad(image_HWC, ((arg, arg), (arg, arg), (0, 0)))
            dy, dx = rng.integers(0, 2 * arg + 1, size=2)
            image_HWC = padded[dy:dy + h, dx:dx + w]
        elif name == "flip" and rng.random() < 0.5:
            image_HWC = image_HWC[:, ::-1]
    return np.ascontiguousarray(image_HWC)


def decode(path: str, mode: str | None = None) -> np.ndarray:
    """uint8 [H, W, C] pixels of one file; `mode` "L" or "RGB" (None: the file's own, as L/RGB)."""
    try:
        from PIL import Image
    except ImportError:
        raise DataError("data.dataset=image_folder needs Pillow to decode images: pip install "
                        "pillow") from None
    try:
        with Image.open(path) as im:
            im = im.convert(mode or ("L" if im.mode in ("1", "L", "I", "I;16") else "RGB"))
            pixels = np.asarray(im, np.uint8)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot decode image {path}: {e}; remove or re-export the file") from None
    return pixels[..., None] if pixels.ndim == 2 else pixels


@dataclasses.dataclass(frozen=True)
class Split:
    """The files of one split and their class ids, in sorted (class, file name) order."""

    paths: tuple[str, ...]
    labels: np.ndarray


def scan(root: pathlib.Path) -> tuple[tuple[str, ...], dict[str, Split]]:
    """Class names and the splits under `root`; one-line errors for every malformed layout."""
    fix = "lay it out as DIR/train/CLASS/*.png (and DIR/validation or DIR/test)"
    if not root.is_dir():
        raise DataError(f"data.data_dir={str(root)!r} is not a folder: {fix}")
    train = root / "train"
    if not train.is_dir():
        raise DataError(f"{root} has no train/ folder: {fix}")
    classes = tuple(sorted(p.name for p in train.iterdir() if p.is_dir()))
    if not classes:
        raise DataError(f"{train} has no class subfolders: {fix}")
    splits = {}
    for name in ("train", *EVAL_SPLITS):
        folder = root / name
        if not folder.is_dir():
            continue
        extra = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in classes)
        if extra:
            raise DataError(f"{folder} has classes {', '.join(extra)} that train/ lacks: give "
                            f"every split the same class folders")
        paths, labels = [], []
        for c, cls in enumerate(classes):
            files = sorted(p for p in (folder / cls).glob("*") if p.suffix.lower() in EXTENSIONS) \
                if (folder / cls).is_dir() else []
            paths += [str(p) for p in files]
            labels += [c] * len(files)
        if not paths:
            raise DataError(f"{folder} holds no .png/.jpg/.jpeg images: {fix}")
        splits[name] = Split(tuple(paths), np.asarray(labels, np.int32))
    if not any(s in splits for s in EVAL_SPLITS):
        raise DataError(f"{root} has neither validation/ nor test/: add one (same class folders)")
    return classes, splits


class BatchMaker:
    """Builds train batch k from the files (picklable, so grain workers can run it)."""

    def __init__(self, split: Split, *, batch_size: int, seed: int, ops, mode: str, shape,
                 mean: float, std: float, normalization: str):
        self.split, self.b, self.seed, self.ops = split, batch_size, seed, ops
        self.mode, self.shape = mode, tuple(shape)
        self.mean, self.std, self.normalization = mean, std, normalization
        self.order = EpochShuffle(len(split.paths), batch_size, seed)

    def images(self, idx, k: int | None) -> np.ndarray:
        out = np.empty((len(idx), *self.shape), np.uint8)
        for r, i in enumerate(idx):
            image = decode(self.split.paths[int(i)], self.mode)
            if image.shape != self.shape:
                raise DataError(f"image {self.split.paths[int(i)]} is {image.shape[1]}x"
                                f"{image.shape[0]}, the folder's first is {self.shape[1]}x"
                                f"{self.shape[0]}: resize every image to one size")
            if k is not None and self.ops:
                image = augment(image, self.ops, np.random.default_rng([self.seed, k, r]))
            out[r] = image
        return out

    def __call__(self, k: int) -> dict[str, np.ndarray]:
        idx = self.order.indices(int(k))
        return {"inputs": normalize(self.images(idx, int(k)), self.mean, self.std, self.normalization),
                "targets": self.split.labels[idx],
                "mask": np.ones(self.b, np.float32)}


class FolderBatches:
    """The endless train stream; state {"position", "seed"}: batches served."""

    def __init__(self, make: BatchMaker, workers: int):
        self._make, self._workers = make, int(workers)
        self._position, self._it = 0, None

    def __iter__(self) -> FolderBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._workers == 0:
            batch = self._make(self._position)
        else:
            if self._it is None:
                self._it = iter(self._pipeline(self._position))
            batch = next(self._it)
        self._position += 1
        return batch

    def _pipeline(self, start: int):
        import grain
        from absl import flags

        # grain's worker start-up reads absl flags, which only an absl main() parses; a
        # library run has none, so take their defaults (what parsing an empty argv gives).
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        positions = grain.MapDataset.range(start, 2**62).map(self._make)
        return positions.to_iter_dataset().mp_prefetch(
            grain.multiprocessing.MultiprocessingOptions(num_workers=self._workers))

    def get_state(self) -> dict:
        return {"position": self._position, "seed": self._make.seed,
                "batch_size": self._make.b, "num_examples": len(self._make.split.paths)}

    def set_state(self, state: dict) -> None:
        try:
            self._position = restored_position(state, "image_folder", seed=self._make.seed,
                                               batch_size=self._make.b,
                                               num_examples=len(self._make.split.paths))
        except ValueError as e:
            raise DataError(f"cannot resume the image_folder stream: {e}") from None
        self._it = None  # the workers restart at the new position


@dataclasses.dataclass(frozen=True, eq=False)
class ImageFolder:
    """The DataSource (source.py) over DIR; built by `build(DataConfig)`."""

    root: pathlib.Path
    classes: tuple[str, ...]
    data: dict
    cfg: DataConfig
    mode: str
    shape: tuple
    mean: float
    std: float
    ops: tuple
    tokens_per_example = 1

    name = "image_folder"

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.data)

    @property
    def example_inputs(self) -> np.ndarray:
        return np.zeros((1, *self.shape), np.float32)

    @property
    def num_outputs(self) -> int:
        return len(self.classes)

    @property
    def train_size(self) -> int:
        return len(self.data["train"].paths)

    def describe(self) -> str:
        h, w, c = self.shape
        return (f"image_folder {self.root} ({self.train_size:,} train images {h}x{w}x{c}, "
                f"{len(self.classes)} classes, streamed)")

    def _maker(self, split: str, seed: int) -> BatchMaker:
        return BatchMaker(self.data[split], batch_size=self.cfg.batch_size, seed=seed,
                          ops=self.ops, mode=self.mode, shape=self.shape, mean=self.mean,
                          std=self.std, normalization=self.cfg.normalization)

    def train_batches(self, seed: int) -> FolderBatches:
        return FolderBatches(self._maker("train", seed), self.cfg.workers)

    def eval_batches(self, split: str, *, periodic: bool = False) -> Iterator[dict]:
        del periodic
        s, b = self.data[split], self.cfg.eval_batch_size
        maker = BatchMaker(s, batch_size=b, seed=0, ops=(), mode=self.mode, shape=self.shape,
                           mean=self.mean, std=self.std, normalization=self.cfg.normalization)
        for start in range(0, len(s.paths), b):
            idx = np.arange(start, min(start + b, len(s.paths)))
            pad = b - len(idx)
            inputs = normalize(maker.images(idx, None), self.mean, self.std, self.cfg.normalization)
            yield {"inputs": np.concatenate([inputs, np.zeros((pad, *self.shape), np.float32)]),
                   "targets": np.concatenate([s.labels[idx], np.zeros(pad, np.int32)]),
                   "mask": np.concatenate([np.ones(len(idx), np.float32), np.zeros(pad, np.float32)])}

    def save(self, workdir: pathlib.Path) -> None:
        del workdir  # the folder and the config rebuild it


def build(cfg: DataConfig) -> ImageFolder:
    """`data.dataset=image_folder`: registered in jaxmodels/registry.py with register_dataset."""
    if cfg.data_dir is None:
        raise DataError("data.dataset=image_folder needs data.data_dir=DIR (a folder with train/ "
                        "and validation/ or test/ class subfolders)")
    ops = parse_augment(cfg.augment)
    root = pathlib.Path(cfg.data_dir).expanduser()
    classes, data = scan(root)
    train = data["train"]
    first = decode(train.paths[0])  # an unreadable folder fails here, before any compile
    if cfg.batch_size > len(train.paths):
        raise DataError(f"data.batch_size={cfg.batch_size} is larger than the {len(train.paths)} "
                        f"train images in {root}: lower data.batch_size")
    mode = "L" if first.shape[-1] == 1 else "RGB"
    sample = np.unique(np.linspace(0, len(train.paths) - 1, min(_STATS_SAMPLE, len(train.paths))).astype(int))
    probe = BatchMaker(train, batch_size=1, seed=0, ops=(), mode=mode, shape=first.shape,
                       mean=0.0, std=1.0, normalization="unit")
    pixels = probe.images(sample, None).astype(np.float64) / 255.0
    return ImageFolder(root, classes, data, cfg, mode, tuple(first.shape), float(pixels.mean()),
                       float(pixels.std()) or 1.0, ops)
