"""The streamed image-folder source (data/image_folder.py): the same batches as decoding the files
into memory, augmentation a function of (seed, step, row) only, exact resume, one-line errors."""

import json
import os
import pathlib
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

import jaxmodels
from jaxmodels import config as C
from jaxmodels.data import image_folder
from jaxmodels.data.pipeline import TrainBatches
from jaxmodels.errors import DataError, UserError
from helpers import TIMING, read_metrics, saved_state

ROOT = pathlib.Path(__file__).resolve().parents[1]
CNN = ROOT / "experiments/configs/seed_cnn_mnist.py"


def write_folder(root: pathlib.Path, n: int = 40, size: int = 8) -> pathlib.Path:
    """n train and 12 validation grey PNGs in two classes; class 1 is brighter on the left."""
    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("validation", 12)):
        for i in range(count):
            label = i % 2
            pixels = rng.integers(0, 128, (size, size), np.uint8)
            pixels[:, : size // 2] += np.uint8(120 * label)
            folder = root / split / f"class_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("images"))


def _cfg(folder, **fields):
    return C.DataConfig(dataset="image_folder", data_dir=str(folder), batch_size=8,
                        eval_batch_size=5, **fields)


def _take(stream, n):
    return [next(stream) for _ in range(n)]


def _equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert x[k].dtype == y[k].dtype and np.array_equal(x[k], y[k]), k


def test_streamed_batches_equal_the_in_memory_decode(folder):
    source = image_folder.build(_cfg(folder))
    paths = sorted((folder / "train").glob("*/*.png"))  # class_0 before class_1, like the labels
    images = np.stack([np.asarray(Image.open(p))[..., None] for p in paths])
    labels = np.array([int(p.parent.name[-1]) for p in paths])
    assert source.shape == (8, 8, 1) and source.num_outputs == 2
    assert source.mean == pytest.approx(images.mean() / 255.0)
    memory = TrainBatches(images, labels, batch_size=8, seed=3, mean=source.mean, std=source.std)
    _equal(_take(source.train_batches(3), 12), _take(memory, 12))  # crosses two epoch boundaries
    evals = list(source.eval_batches("validation"))
    assert [float(b["mask"].sum()) for b in evals] == [5, 5, 2]


def test_augmentation_is_deterministic_per_seed_and_step_whatever_the_workers(folder):
    plain = _take(image_folder.build(_cfg(folder)).train_batches(0), 3)
    augmented = image_folder.build(_cfg(folder, augment="crop:2,flip"))
    in_process = _take(augmented.train_batches(0), 6)
    again = augmented.train_batches(0)
    again.set_state({"position": 3, "seed": 0})
    _equal(_take(again, 3), in_process[3:])  # batch k depends on (seed, k) only
    workers = image_folder.build(_cfg(folder, augment="crop:2,flip", workers=2))
    stream = workers.train_batches(0)
    _equal(_take(stream, 6), in_process)
    assert not all(np.array_equal(a["inputs"], b["inputs"]) for a, b in zip(plain, in_process))
    for a, b in zip(plain, in_process):
        np.testing.assert_array_equal(a["targets"], b["targets"])  # same examples, other pixels
    other = _take(augmented.train_batches(1), 1)[0]
    assert not np.array_equal(other["inputs"], in_process[0]["inputs"])


def test_crop_and_flip_move_pixels_as_documented():
    image = np.arange(16, dtype=np.uint8).reshape(4, 4, 1)
    seen = set()
    for seed in range(40):
        out = image_folder.augment(image, image_folder.parse_augment("crop:1"), np.random.default_rng(seed))
        assert out.shape == image.shape
        seen.add(out.tobytes())
        flipped = image_folder.augment(image, (("flip", 0),), np.random.default_rng(seed))
        assert np.array_equal(flipped, image) or np.array_equal(flipped, image[:, ::-1])
    assert len(seen) == 9  # every one of the 3 x 3 offsets of a 1-pixel padding


def _files(root, names, content=b"not an image"):
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)


@pytest.mark.parametrize("setup, message", [
    (lambda p: None, "has no train/ folder"),
    (lambda p: (p / "train" / "a").mkdir(parents=True), "has no class subfolders|holds no"),
    (lambda p: _files(p, ["train/a/notes.txt"]), "holds no .png/.jpg/.jpeg images"),
    (lambda p: _files(p, ["train/a/x.png"]), "has neither validation/ nor test/"),
    (lambda p: _files(p, ["train/a/x.png", "test/b/y.png"]), "has classes b that train/ lacks"),
    (lambda p: _files(p, ["train/a/x.png", "validation/a/y.png"]), "cannot decode image .*x.png"),
])
def test_bad_folders_are_one_line_errors_before_compile(tmp_path, setup, message):
    setup(tmp_path)
    cfg = C.apply_overrides(C.load(CNN, tiny=True), ["data.dataset=image_folder", f"data.data_dir={tmp_path}"])
    with pytest.raises(DataError, match=message) as e:
        jaxmodels.train(cfg, tmp_path / "run")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_unknown_transform_is_a_one_line_error(folder):
    with pytest.raises(DataError, match=r"unknown transform 'rotate:3'.*crop:P"):
        image_folder.build(_cfg(folder, augment="crop:2,rotate:3"))


RUN = ["--tiny", "data.dataset=image_folder", "data.batch_size=16", "train.steps=9",
       "train.log_every=3", "train.eval_every=none", "checkpoint.every_steps=1",
       "checkpoint.keep=2", "data.augment=crop:2,flip", "data.eval_split=validation",
       "model.num_classes=2", "data.workers=0", "train.progress=false"]


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT), XLA_FLAGS="--xla_force_host_platform_device_count=2",
                JAX_PLATFORMS="cpu")


def _cmd(folder, workdir):
    return [sys.executable, "-m", "jaxmodels.cli", "train", str(CNN), *RUN,
            f"data.data_dir={folder}", "--workdir", str(workdir)]


def _records(workdir):
    return read_metrics(workdir, drop=TIMING)


def _state(workdir, step=9):
    return saved_state(workdir, step)


def test_resume_after_kill_9_across_an_epoch_boundary_with_augmentation(folder, tmp_path):
    # 40 images in batches of 16: epochs end inside batch 3, after batch 5 and inside batch 8;
    # the kill lands after a checkpoint of step >= 4, so the resumed run crosses an epoch
    # boundary (batch 8) with augmentation drawn from (seed, step, row) in a grain worker.
    ref = subprocess.run(_cmd(folder, tmp_path / "ref"), env=_env(), capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-2000:]
    # In-process decoding: grain workers outlive a SIGKILL of their parent for a while (test
    # above shows the batches do not depend on the worker count).
    proc = subprocess.Popen(_cmd(folder, tmp_path / "run"), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "run" / "checkpoints"
    import time
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if ckpts.is_dir() and any(p.name.isdigit() and int(p.name) >= 4 for p in ckpts.iterdir()):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    again = subprocess.run(_cmd(folder, tmp_path / "run"), env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["resumed_from"] and summary["resumed_from"][0] < 9
    assert _records(tmp_path / "run") == _records(tmp_path / "ref")
    for x, y in zip(jax.tree.leaves(_state(tmp_path / "run")), jax.tree.leaves(_state(tmp_path / "ref")), strict=True):
        assert np.array_equal(x, y)


def test_augment_on_an_in_memory_dataset_is_refused(tmp_path):
    cfg = C.apply_overrides(C.load(CNN, tiny=True), ["data.dataset=digits", "data.augment=flip"])
    with pytest.raises(UserError, match=r"data.augment='flip' applies to data.dataset=image_folder only"):
        jaxmodels.train(cfg, tmp_path)
