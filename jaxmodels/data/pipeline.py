"""Batches for training and evaluation: numpy in, numpy out, fixed shapes.

Shape names: B batch, H height, W width, C channels, N examples in a split.

Every batch has the same shape, so a jitted step compiles once: training batches are always
full (the stream runs across epoch boundaries instead of dropping the remainder), and the last
evaluation batch is padded and carries mask 0.0 on the padding. Images stay uint8 until a batch
is gathered and are normalised per batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

NORMALIZATIONS = ("standardize", "unit")


def _check_mode(mode: str, std: float) -> None:
    if mode not in NORMALIZATIONS:
        raise ValueError(f"unknown normalization {mode!r}: choose one of "
                         f"{', '.join(NORMALIZATIONS)}")
    if mode == "standardize" and not std > 0:
        raise ValueError(f"standardize needs a positive std, got {std}")


def normalize(images_u8: np.ndarray, mean: float, std: float, mode: str) -> np.ndarray:
    """uint8 pixels to float32: "standardize" gives (x/255 - mean)/std, "unit" gives x/255."""
    _check_mode(mode, std)
    out = images_u8.astype(np.float32)
    if mode == "unit":
        out *= np.float32(1.0 / 255.0)
    else:
        # One multiply and one subtract: (x/255 - m)/s = x * (1/(255 s)) - m/s.
        out *= np.float32(1.0 / (255.0 * std))
        out -= np.float32(mean / std)
    return out


def _check_split(images: np.ndarray, labels: np.ndarray, batch_size: int) -> None:
    if images.ndim != 4:
        raise ValueError(f"images must be [N,H,W,C], got shape {images.shape}")
    if labels.shape != images.shape[:1]:
        raise ValueError(f"labels must be [{len(images)}], got shape {labels.shape}")
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


class EpochShuffle:
    """Which examples make batch k: stream positions [k*B, (k+1)*B) of the concatenation of
    per-epoch permutations, epoch e permuted by np.random.default_rng([seed, e]).

    No example is ever dropped, every batch is full (one shape, one compilation), a batch may
    span an epoch boundary, and batch k depends on (seed, k) only, so a stream built on this
    resumes from one integer. Shared by every random-access source (images, arrays, grain).
    """

    def __init__(self, num_examples: int, batch_size: int, seed: int):
        self.num_examples, self.batch_size, self.seed = int(num_examples), int(batch_size), int(seed)
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        perm = self._perms.get(epoch)
        if perm is None:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
            # Keep only this epoch's permutation: the stream moves forward, so older ones are dead.
            self._perms = {epoch: perm}
        return perm

    def indices(self, position: int) -> np.ndarray:
        """Split indices [B] of batch `position`."""
        n, b = self.num_examples, self.batch_size
        start = position * b
        epoch, offset = divmod(start, n)
        if offset + b <= n:  # The common case: the batch lies inside one epoch.
            return self._perm(epoch)[offset:offset + b]
        pieces, need = [], b
        while need:
            take = min(need, n - offset)
            pieces.append(self._perm(epoch)[offset:offset + take])
            need -= take
            epoch, offset = epoch + 1, 0
        return np.concatenate(pieces)


class TrainBatches:
    """Infinite, seeded, resumable stream of full batches over one image split.

    Batch k holds the examples EpochShuffle gives for k, so the whole iterator state is one
    integer: the number of batches served.

    Each batch is {"inputs": float32 images [B,H,W,C], "targets": int32 labels [B], "mask":
    float32 [B] of ones}: the key names every model family's step reads.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, batch_size: int, seed: int,
                 mean: float, std: float, normalization: str = "standardize", position: int = 0):
        _check_split(images, labels, batch_size)
        _check_mode(normalization, std)
        if len(images) == 0:
            raise ValueError("cannot draw training batches from an empty split")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        self._images = images
        self._labels = labels
        self._batch_size = int(batch_size)
        self._seed = int(seed)
        self._mean = float(mean)
        self._std = float(std)
        self._normalization = normalization
        self._position = 0
        self._order = EpochShuffle(len(images), self._batch_size, self._seed)
        self.set_state({"position": position, "seed": self._seed})

    @property
    def num_examples(self) -> int:
        return len(self._images)

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def position(self) -> int:
        """Batches served so far; the next batch is batch `position`."""
        return self._position

    @property
    def steps_per_epoch(self) -> float:
        return self.num_examples / self._batch_size

    @property
    def epoch(self) -> float:
        """Epochs consumed so far, fractional."""
        return self._position * self._batch_size / self.num_examples

    def indices(self, position: int) -> np.ndarray:
        """Split indices of batch `position` (pure: does not move the stream)."""
        return self._order.indices(position)

    def __iter__(self) -> TrainBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        idx_B = self.indices(self._position)
        self._position += 1
        return {
            "inputs": normalize(self._images[idx_B], self._mean, self._std, self._normalization),
            "targets": self._labels[idx_B].astype(np.int32, copy=False),
            "mask": np.ones(self._batch_size, np.float32),
        }

    def get_state(self) -> dict:
        """JSON-serialisable state: set_state on a fresh stream over the same split resumes."""
        return {"position": self._position, "seed": self._seed,
                "batch_size": self._batch_size, "num_examples": self.num_examples}

    def set_state(self, state: dict) -> None:
        """Restores get_state's output.

        "position" and "seed" are required; "batch_size" and "num_examples", when given, must
        match this stream, because a position means nothing over another split or batch size.
        """
        self._position = restored_position(state, "TrainBatches", seed=self._seed,
                                           batch_size=self._batch_size,
                                           num_examples=self.num_examples)


def restored_position(state: dict, kind: str, *, seed: int, **shape: int) -> int:
    """The position in a saved stream state, after checking it belongs to this stream: the same
    seed, and the same value for each `shape` key the state records (batch size, split size...)."""
    try:
        position, saved_seed = state["position"], state["seed"]
    except (KeyError, TypeError) as e:
        raise ValueError(f"a {kind} state needs 'position' and 'seed', got {state!r}") from e
    if int(saved_seed) != seed:
        raise ValueError(f"state was saved with seed {saved_seed}, but this stream has seed {seed}")
    for key, mine in shape.items():
        if key in state and int(state[key]) != mine:
            raise ValueError(f"state was saved with {key}={state[key]}, but this stream has {mine}")
    if not isinstance(position, (int, np.integer)) or position < 0:
        raise ValueError(f"position must be a non-negative integer, got {position!r}")
    return int(position)


def eval_batches(images: np.ndarray, labels: np.ndarray, *, batch_size: int, mean: float,
                 std: float, normalization: str = "standardize") -> Iterator[dict[str, np.ndarray]]:
    """Every example exactly once, in order, in batches of one shape.

    The last batch is padded to batch_size with zero images and label 0, and its "mask" is 0.0
    on the padding, so metrics weighted by the mask count each example once.
    """
    _check_split(images, labels, batch_size)
    _check_mode(normalization, std)
    return _eval_batches(images, labels, int(batch_size), float(mean), float(std), normalization)


def _eval_batches(images, labels, b, mean, std, normalization):
    n = len(images)
    for start in range(0, n, b):
        stop = min(start + b, n)
        image_BHWC = normalize(images[start:stop], mean, std, normalization)
        label_B = np.array(labels[start:stop], dtype=np.int32)
        mask_B = np.ones(b, np.float32)
        if stop - start < b:
            pad = b - (stop - start)
            padding = np.zeros((pad, *images.shape[1:]), np.float32)
            image_BHWC = np.concatenate([image_BHWC, padding])
            label_B = np.concatenate([label_B, np.zeros(pad, np.int32)])
            mask_B[stop - start:] = 0.0
        yield {"inputs": image_BHWC, "targets": label_B, "mask": mask_B}
