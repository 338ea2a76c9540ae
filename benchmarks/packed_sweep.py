"""K models as K separate runs against one packed run, compile time included.

  python benchmarks/packed_sweep.py [--models 1 4 8] [--model mlp|gpt] [--steps N]

For each K, the same K variants (seeds 0..K-1, learning rates spread over a factor of 4 around
the config's) are trained twice: as K calls of `jaxmodels.train`, one after another in this
process, each loading its data, compiling and writing its workdir as a sweep of separate runs
does; and as one `packed.train_packed`. Times are wall-clock around the calls, so data loading,
compilation and the final evaluation are in both. Separate runs inside one process are a lower
bound on a sweep's cost: separate processes would also pay Python and JAX start-up each.

Prints a table and one JSON line. Also checks the two agree: the largest relative difference
of the K final evaluation losses.

  mlp: an MLP (128, 128) on the 8x8 digits, batch 32, Adam with warmup and cosine decay.
  gpt: the tiny GPT of experiments/configs/gpt_shakespeare.py (1 layer, width 32, context 32,
       batch 8) on Shakespeare; its final evaluation reads the whole validation split.
Default: mlp, 300 steps, K = 1, 4, 8: about 2 minutes on 2 CPU cores.
"""

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

import jax

import jaxmodels
from jaxmodels.config import Config, DataConfig, OptimizerConfig, TrainConfig
from jaxmodels.models import MLPConfig
from jaxmodels.orchestration import packed

ROOT = pathlib.Path(__file__).resolve().parents[1]


def base_config(model: str, steps: int) -> Config:
    if model == "gpt":
        config = jaxmodels.load_config(ROOT / "experiments/configs/gpt_shakespeare.py", tiny=True)
        return dataclasses.replace(config, train=dataclasses.replace(
            config.train, steps=steps, log_every=max(1, steps // 3), eval_every=steps))
    return Config(
        name="packed_bench_mlp_digits",
        model=MLPConfig(hidden=(128, 128)),
        data=DataConfig(dataset="digits", batch_size=32, eval_batch_size=270, eval_split="test"),
        optimizer=OptimizerConfig(name="adam", learning_rate=2e-3, schedule="warmup_cosine",
                                  warmup_steps=max(1, steps // 10)),
        train=TrainConfig(steps=steps, log_every=max(1, steps // 3), eval_every=steps,
                          progress=False))


def variants_for(config: Config, k_models: int) -> list[packed.Variant]:
    lr = config.optimizer.learning_rate
    # Spread over [lr/2, 2 lr] (geometrically), the span a learning-rate sweep covers.
    return [packed.Variant(seed=k, learning_rate=lr * 2.0 ** (2 * k / max(k_models - 1, 1) - 1))
            for k in range(k_models)]


def separate_config(config: Config, v: packed.Variant) -> Config:
    return dataclasses.replace(
        config, train=dataclasses.replace(config.train, seed=v.seed, progress=False),
        optimizer=dataclasses.replace(config.optimizer, learning_rate=v.learning_rate))


def measure(config: Config, k_models: int, scratch: pathlib.Path) -> dict:
    variants = variants_for(config, k_models)
    start = time.perf_counter()
    separate = [jaxmodels.train(separate_config(config, v), scratch / f"separate_{k_models}_{k}")
                for k, v in enumerate(variants)]
    separate_s = time.perf_counter() - start

    start = time.perf_counter()
    ours = packed.train_packed(config, variants, scratch / f"packed_{k_models}", progress=False)
    packed_s = time.perf_counter() - start

    steps = config.train.steps
    return {
        "K": k_models,
        "separate_s": round(separate_s, 2),
        "packed_s": round(packed_s, 2),
        "speedup": round(separate_s / packed_s, 2),
        # What the K runs report as their own wall time: all but the learning-curve plot and
        # the summary file (orbax's weight save is inside).
        "separate_reported_s": round(sum(s["wall_time_s"] for s in separate), 2),
        # The first train step (its compilation) as the summaries report it; init and eval
        # compile outside it.
        "separate_compile_s": round(sum(s["compile_time_s"] for s in separate), 2),
        "packed_compile_s": round(ours[0]["packed"]["compile_time_s"], 2),
        # Training steps per second per model, everything (loading, compiling, evaluating) in.
        "separate_steps_per_s": round(k_models * steps / separate_s, 1),
        "packed_steps_per_s": round(k_models * steps / packed_s, 1),
        # Steady state, after the compiling step and without evaluation: all K models' steps
        # per second (separate runs take turns, so theirs is one run's rate).
        "separate_train_steps_per_s": round(
            sum(s["examples_per_sec"] for s in separate) / k_models / config.data.batch_size, 1),
        "packed_train_steps_per_s": round(
            k_models * ours[0]["packed"]["examples_per_sec_per_model"] / config.data.batch_size, 1),
        "max_eval_loss_rel_diff": max(abs(o["eval_loss"] - s["eval_loss"]) / s["eval_loss"]
                                      for o, s in zip(ours, separate)),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, nargs="+", default=[1, 4, 8],
                        help="values of K (models per sweep)")
    parser.add_argument("--model", choices=("mlp", "gpt"), default="mlp")
    parser.add_argument("--steps", type=int, default=300, help="training steps per model")
    args = parser.parse_args()
    if min(args.models) < 1 or args.steps < 2:
        parser.error("--models must be positive and --steps at least 2")
    config = base_config(args.model, args.steps)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="packed_sweep_") as scratch:
        # Untimed: the first run in a process pays one-off costs (lazy imports, backend start,
        # the dataset's first read) that would otherwise land on whichever path runs first.
        measure(base_config(args.model, 2), 1, pathlib.Path(scratch) / "warmup")
        rows = [measure(config, k, pathlib.Path(scratch)) for k in args.models]
    load_after = os.getloadavg()

    print(f"\n{config.name}: {args.steps} steps per model, one {jax.devices()[0].platform} device, "
          f"load average {load_before[0]:.1f} before / {load_after[0]:.1f} after", file=sys.stderr)
    header = ("K", "separate s", "packed s", "speed-up", "compile sep/packed s",
              "steps/s/model sep", "packed", "steady steps/s sep", "packed", "loss rel diff")
    print(f"{header[0]:>3} {header[1]:>10} {header[2]:>9} {header[3]:>8} {header[4]:>20} "
          f"{header[5]:>17} {header[6]:>7} {header[7]:>18} {header[8]:>7} {header[9]:>13}")
    for r in rows:
        print(f"{r['K']:>3} {r['separate_s']:>10.1f} {r['packed_s']:>9.1f} {r['speedup']:>7.2f}x "
              f"{r['separate_compile_s']:>9.1f} / {r['packed_compile_s']:<8.1f} "
              f"{r['separate_steps_per_s']:>17.1f} {r['packed_steps_per_s']:>7.1f} "
              f"{r['separate_train_steps_per_s']:>18.1f} {r['packed_train_steps_per_s']:>7.1f} "
              f"{r['max_eval_loss_rel_diff']:>13.1e}")
    print(json.dumps({"benchmark": "packed_sweep", "model": args.model, "steps": args.steps,
                      "rows": rows, "load_average": [load_before[0], load_after[0]],
                      "cpu_count": os.cpu_count(), "machine": platform.machine(),
                      "jax": jax.__version__, "device": str(jax.devices()[0])}))


if __name__ == "__main__":
    main()
