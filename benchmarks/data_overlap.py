"""Input-pipeline cost: step time with the real train stream against a constant batch (the same
batch every step, so reading costs nothing), with data.prefetch on (2) and off (0).

  python benchmarks/data_overlap.py [--steps 200] [--repeats 3] [--json OUT]

Workloads: the seed CNN on MNIST at batch 32 and the tiny GPT on Shakespeare. The four
variants of a workload run back to back in every repeat (interleaved); the table gives the
median examples/s over repeats (summary.json's examples_per_sec, which excludes the compiling
first step) and real/constant (1.00: reading the data costs nothing; the goal is >= 0.97).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile

os.environ.setdefault("XLA_FLAGS", "")  # one CPU device, as a plain script would see

import jaxmodels  # noqa: E402
from jaxmodels import config as config_lib  # noqa: E402
from jaxmodels.training import tasks  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKLOADS = {
    "cnn_mnist_b32": ("experiments/configs/seed_cnn_mnist.py", ["data.batch_size=32"], False),
    "gpt_shakespeare": ("experiments/configs/gpt_shakespeare.py", [], True),
}


class Constant:
    """A train stream that serves its first batch forever (state: the real stream's)."""

    def __init__(self, inner):
        self._inner, self._batch = inner, next(inner)

    def __iter__(self):
        return self

    def __next__(self):
        return self._batch

    def get_state(self):
        return self._inner.get_state()

    def set_state(self, state):
        self._inner.set_state(state)


class ConstantSource:
    def __init__(self, task):
        self._task = task

    def __getattr__(self, name):
        return getattr(self._task, name)

    def train_batches(self, seed):
        return Constant(self._task.train_batches(seed))


def _build_constant(cfg):
    return ConstantSource(tasks.build(dataclasses.replace(cfg, dataset=cfg.data_dir, data_dir=None)))


def run(path, extra, tiny, steps, constant, prefetch):
    overrides = [*extra, f"train.steps={steps}", "train.eval_every=none", "train.log_every=50",
                 "checkpoint.every_steps=none", "train.progress=false", f"data.prefetch={prefetch}",
                 "data.eval_split=validation", "optimizer.warmup_steps=1"]
    cfg = config_lib.apply_overrides(config_lib.load(os.path.join(ROOT, path), tiny=tiny), overrides)
    if constant:  # the same dataset, wrapped; data_dir carries the wrapped name
        cfg = config_lib.apply_overrides(cfg, ["data.dataset=constant_of", f"data.data_dir={cfg.data.dataset}"])
    with tempfile.TemporaryDirectory() as workdir:
        return jaxmodels.train(cfg, workdir)["examples_per_sec"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json")
    args = p.parse_args(argv)
    jaxmodels.register_dataset("constant_of", _build_constant)
    variants = [(c, f) for c in (False, True) for f in (0, 2)]
    rows = {}
    for name, (path, extra, tiny) in WORKLOADS.items():
        got = {v: [] for v in variants}
        for _ in range(args.repeats):
            for v in variants:
                got[v].append(run(path, extra, tiny, args.steps, *v))
        med = {v: statistics.median(x) for v, x in got.items()}
        rows[name] = {f"{'constant' if c else 'real'}_prefetch{f}": med[(c, f)] for c, f in variants}
        for f in (0, 2):
            rows[name][f"real_over_constant_prefetch{f}"] = med[(False, f)] / med[(True, f)]
    print(f"{'workload':18} {'prefetch':>8} {'real ex/s':>11} {'const ex/s':>11} {'real/const':>10}")
    for name, r in rows.items():
        for f in (0, 2):
            print(f"{name:18} {f:>8} {r[f'real_prefetch{f}']:>11,.0f} {r[f'constant_prefetch{f}']:>11,.0f} "
                  f"{r[f'real_over_constant_prefetch{f}']:>10.3f}")
    out = json.dumps({"steps": args.steps, "repeats": args.repeats, "rows": rows}, indent=1)
    print(out)
    if args.json:
        with open(args.json, "w") as f:
            f.write(out + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
