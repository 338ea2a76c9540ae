"""The framework's step overhead: `jaxmodels.train` and `jaxmodels.fit` against a hand-written
`jax.jit` step of the same model on the same batches, interleaved in one sitting.

  python benchmarks/overhead.py [--steps 300] [--repeats 3] [--only cnn|gpt|host] [--json OUT]

Workloads: the seed CNN on MNIST at batch 32, the 4x128 GPT (ctx 64, batch 12) on Shakespeare,
and "host": an MLP with 4 hidden units on MNIST at batch 32, whose step does next to no device
work, so its microseconds per step are the host's cost of a step (loop, data, dispatch, the
metrics' fetch) and the difference to the hand-written loop is the framework's. Each repeat runs
hand-written, train, fit (fit for the image workloads: it takes arrays) back to back; the table
gives the median examples/s and microseconds per step over repeats and each framework path's
ratio to the hand-written step (1.00 = no overhead; the goal is >= 0.97). Throughput excludes
each run's first (compiling) step, as summary.json's `examples_per_sec` does: the hand-written
loop is timed the same way, from after its first step to a final block_until_ready.

The hand-written step is what a researcher would write without a framework: the same Flax
module and optax chain, `jax.jit(step, donate_argnums=0)`, the same numpy batches, loss and
accuracy as metrics, no logging.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("XLA_FLAGS", "")  # one CPU device, as a plain script would see

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import jaxmodels  # noqa: E402
from jaxmodels import config as config_lib  # noqa: E402
from jaxmodels import models  # noqa: E402
from jaxmodels.training import optim, tasks  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _config(name: str, steps: int) -> config_lib.Config:
    if name == "cnn":
        cfg = config_lib.Config(name="overhead_cnn")
    elif name == "host":
        # A step with next to no device work: what is left is the host's cost per step.
        cfg = dataclasses.replace(config_lib.Config(name="overhead_host"),
                                  model=models.MLPConfig(hidden=(4,)))
    else:
        cfg = config_lib.load(os.path.join(ROOT, "experiments/configs/gpt_shakespeare.py"))
    return config_lib.apply_overrides(cfg, [
        f"train.steps={steps}", "train.progress=false", "train.log_every=100",
        "train.eval_every=1000000", "checkpoint.every_steps=none", "optimizer.warmup_steps=10",
        "data.eval_windows=4"])


def hand_written(cfg: config_lib.Config, steps: int) -> float:
    """Examples/s of a plain jitted step over the task's own batches."""
    task = tasks.build(cfg.data)
    cfg = dataclasses.replace(cfg, model=tasks.resolve_model(cfg.model, task))
    module = models.build(cfg.model)
    tx, _ = optim.make_baked(cfg.optimizer, steps)  # the constants a hand-written chain has
    example = jnp.asarray(task.example_inputs)
    variables = module.init({"params": jax.random.key(0), "dropout": jax.random.key(0)}, example)
    params = nn.meta.unbox(variables["params"])
    opt_state = tx.init(params)

    def loss_fn(p, batch):
        logits = module.apply({"params": p}, batch["inputs"], train=True,
                              rngs={"dropout": jax.random.key(1)})
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
        acc = (logits.argmax(-1) == batch["targets"]).mean()
        return losses.mean(), acc

    def step(p, o, batch):
        (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, batch)
        updates, o = tx.update(grads, o, p)
        return optax.apply_updates(p, updates), o, {"loss": loss, "accuracy": acc}

    step = jax.jit(step, donate_argnums=(0, 1))
    batches = task.train_batches(cfg.train.seed)
    params, opt_state, m = step(params, opt_state, next(batches))
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(steps - 1):
        params, opt_state, m = step(params, opt_state, next(batches))
    jax.block_until_ready((params, m))
    return (steps - 1) * cfg.data.batch_size / (time.perf_counter() - t0)


def via_train(cfg: config_lib.Config, workdir: str) -> float:
    return jaxmodels.train(cfg, workdir, restart=True)["examples_per_sec"]


def via_fit(cfg: config_lib.Config, workdir: str) -> float:
    from jaxmodels.data import sources

    ds = sources.load_image_dataset("mnist")
    x, y = ds.splits["train"]
    x = ((x / 255.0 - ds.mean) / ds.std).astype(np.float32)
    xv, yv = ds.splits["validation"]
    xv = ((xv[:500] / 255.0 - ds.mean) / ds.std).astype(np.float32)
    summary = jaxmodels.fit(models.build(cfg.model), (x, y), validation_data=(xv, yv[:500]),
                            batch_size=cfg.data.batch_size, steps=cfg.train.steps,
                            schedule="warmup_cosine", warmup_steps=10, log_every=100,
                            eval_every=1000000, checkpoint_every=None, progress=False,
                            workdir=workdir, restart=True)
    return summary["examples_per_sec"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=("cnn", "gpt", "host"), default=None)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    workloads = [args.only] if args.only else ["cnn", "gpt", "host"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in workloads:
            cfg = _config(name, args.steps)
            runs = {"hand-written jit": [], "jaxmodels.train": []}
            if name != "gpt":  # fit takes arrays: the image workloads
                runs["jaxmodels.fit"] = []
            for r in range(args.repeats):  # interleaved: A B C, A B C, ...
                runs["hand-written jit"].append(hand_written(cfg, args.steps))
                runs["jaxmodels.train"].append(via_train(cfg, f"{tmp}/{name}_train"))
                if name != "gpt":
                    runs["jaxmodels.fit"].append(via_fit(cfg, f"{tmp}/{name}_fit"))
                print(f"{name} repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in runs.items()),
                      file=sys.stderr)
            med = {k: statistics.median(v) for k, v in runs.items()}
            base = med["hand-written jit"]
            batch = cfg.data.batch_size
            results[name] = {k: {"examples_per_sec": med[k], "runs": runs[k],
                                 "us_per_step": 1e6 * batch / med[k],
                                 "ratio_to_hand_written": med[k] / base} for k in runs}
    print(f"{'workload':<10} {'path':<18} {'examples/s (median)':>20} {'us/step':>9} {'vs hand-written':>16}")
    for name, paths in results.items():
        for path, r in paths.items():
            print(f"{name:<10} {path:<18} {r['examples_per_sec']:>20,.0f} {r['us_per_step']:>9,.0f} "
                  f"{r['ratio_to_hand_written']:>16.3f}")
    text = json.dumps({"steps": args.steps, "repeats": args.repeats, "device": str(jax.devices()[0]),
                       "results": results}, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
