"""Where a Transformer training step's time goes: jaxmodels and PyTorch eager with one part taken
out at a time, side by side in one process.

  python benchmarks/step_ablation.py [--only gpt_4l,vit] [--parts attention,norm,gelu]
      [--repeats 4] [--steps 10] [--json OUT]
  python benchmarks/step_ablation.py --smoke --json OUT      # toy shapes (the tests)

What one measurement is: a training step of a benchmarks/workloads.py workload (the experiment
file's model and optimizer, the suite's shape; random inputs) with one part replaced, in both
frameworks alike:

  attention  softmax(QK^T)V -> Q + K + V (the projections around it stay)
  norm       every LayerNorm -> the identity
  gelu       the MLP's GELU -> the identity

The jaxmodels step is measure.py's "jaxmodels-step" (the model and optax chain in a jitted,
donating step); the PyTorch one is peers/torch_models.py's. Every (framework, part) pair runs
`--steps` steps per round, all pairs alternate round by round, `--repeats` rounds; a pair's time
is its fastest step (on a shared machine the least disturbed one). A part's cost is the full
step's time minus the time without it: what the step would save without that part, its
neighbours' lost fusion included, which is not the same as the part's time alone.

Uses the XLA CPU flags a jaxmodels run gets (runtime.configure_xla_flags) and should run under
the host allocator's tunable like the suite: `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`. The
replacements patch module attributes (attention_ops, transformer_blocks.norm, flax.linen.gelu;
torch.nn.functional, nn.LayerNorm.forward) while a step is traced or run: an analysis tool, not
an API.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import time

import bench_json

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))  # the repository's jaxmodels over an installed one

WORKLOADS = ("gpt_6l", "gpt_4l", "vit")
PARTS = ("attention", "norm", "gelu")


@contextlib.contextmanager
def removed(part: str | None):
    """Both frameworks with `part` replaced (None: as they are) inside the block."""
    import flax.linen as nn

    from jaxmodels.models import attention_ops, transformer_blocks

    saved = [(attention_ops, "einsum_attention"), (attention_ops, "blocked_causal_attention"),
             (transformer_blocks, "norm"), (nn, "gelu")]
    try:
        import torch
        import torch.nn.functional as F

        saved += [(F, "scaled_dot_product_attention"), (F, "gelu"), (torch.nn.LayerNorm, "forward")]
    except ImportError:
        torch = F = None
    old = [(owner, name, getattr(owner, name)) for owner, name in saved]

    class Identity(nn.Module):
        @nn.compact
        def __call__(self, x):
            return x

    def sum_qkv(q, k, v, **_):
        return q + k + v  # the same shape as attention's output: K and V have Q's heads here

    try:
        if part == "attention":
            attention_ops.einsum_attention = attention_ops.blocked_causal_attention = sum_qkv
            if F is not None:
                F.scaled_dot_product_attention = sum_qkv
        elif part == "norm":
            transformer_blocks.norm = lambda cfg, name: Identity(name=name)
            if torch is not None:
                torch.nn.LayerNorm.forward = lambda self, x: x
        elif part == "gelu":
            nn.gelu = lambda x, **_: x
            if F is not None:
                F.gelu = lambda x, **_: x
        elif part is not None:
            raise ValueError(f"unknown part {part!r}")
        yield
    finally:
        for owner, name, value in old:
            setattr(owner, name, value)


def inputs(w, rng):
    """One random batch of the workload's shape: (numpy inputs, numpy targets, outputs)."""
    import numpy as np

    b = w.shape["batch"]
    if w.family == "vit":
        return rng.random((b, 28, 28, 1), np.float32), rng.integers(0, 10, b).astype(np.int32), 10
    tokens = rng.integers(0, 65, (b, w.shape["seq_len"] + 1))
    return tokens[:, :-1].astype(np.int32), tokens[:, 1:].astype(np.int32), 65


def jax_step(w, part, x, y, outputs, steps_total: int):
    """A () -> loss callable: jaxmodels' module and optax chain, jitted and donating, traced
    with `part` removed."""
    import dataclasses

    import flax.linen as nn
    import jax
    import optax

    from jaxmodels import models
    from jaxmodels.training import optim

    cfg = w.config(steps_total)
    model_cfg = cfg.model
    if hasattr(model_cfg, "vocab_size"):
        model_cfg = dataclasses.replace(model_cfg, vocab_size=outputs)
    tx, _ = optim.make_baked(cfg.optimizer, steps_total)
    x, y = jax.numpy.asarray(x), jax.numpy.asarray(y)
    with removed(part):
        module = models.build(model_cfg)

        @jax.jit
        def make(x):
            rngs = {"params": jax.random.key(0), "dropout": jax.random.key(0)}
            params = nn.meta.unbox(module.init(rngs, x)["params"])
            return params, tx.init(params)

        state = list(make(x[:1]))

        def loss_fn(p):
            logits = module.apply({"params": p}, x, train=True, rngs={"dropout": jax.random.key(1)})
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        def step(p, o):
            loss, grads = jax.value_and_grad(loss_fn)(p)
            updates, o = tx.update(grads, o, p)
            return optax.apply_updates(p, updates), o, loss

        step = jax.jit(step, donate_argnums=(0, 1))
        state[0], state[1], loss = step(*state)  # traced and compiled here, under the patch
        jax.block_until_ready(loss)

    def run():
        state[0], state[1], loss = step(*state)
        return jax.block_until_ready(loss)

    return run


def torch_step(w, part, x, y, outputs, steps_total: int):
    import dataclasses

    import torch
    from peers import torch_models as tm

    model = tm.build(w.family, w.shape, outputs)
    spec = dataclasses.asdict(w.config(steps_total).optimizer)
    opt, sched = tm.optimizer(model, spec, steps_total)
    step = tm.train_step(model, opt, sched, spec["grad_clip_norm"])
    tx, ty = tm.to_torch_inputs(w.family, x), torch.from_numpy(y).long()

    def run():
        with removed(part):
            return step(tx, ty).item()

    return run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default="gpt_4l,vit", help=f"comma-separated, of {', '.join(WORKLOADS)}")
    p.add_argument("--parts", default=",".join(PARTS))
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--steps", type=int, default=10, help="timed steps per round")
    p.add_argument("--smoke", action="store_true", help="toy shapes, one round of 2 steps")
    p.add_argument("--json", help="also write the report here")
    args = p.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    parts = [q for q in args.parts.split(",") if q]
    for value, allowed, flag in ((names, WORKLOADS, "--only"), (parts, PARTS, "--parts")):
        bad = [v for v in value if v not in allowed]
        if bad:
            raise SystemExit(f"{flag}: unknown {bad[0]!r}; choose from {', '.join(allowed)}")
    repeats, steps = (1, 2) if args.smoke else (args.repeats, args.steps)

    from jaxmodels import runtime

    runtime.configure_xla_flags()
    import jax
    import numpy as np

    import workloads

    try:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        frameworks = ("jaxmodels", "torch")
    except ImportError:
        frameworks = ("jaxmodels",)
    builders = {"jaxmodels": jax_step, "torch": torch_step}
    report = {"benchmark": "step_ablation", "mode": "smoke" if args.smoke else "full",
              "xla_flags": os.environ.get("XLA_FLAGS"), "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
              "jax": jax.__version__, "torch": torch.__version__ if "torch" in frameworks else None,
              "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
              "repeats": repeats, "steps": steps, "workloads": {}}
    for name in names:
        # The smoke shapes have no 4-layer GPT of their own: the 6-layer one's toy shape serves.
        w = workloads.get("gpt_6l" if args.smoke and name.startswith("gpt") else name,
                          "smoke" if args.smoke else "quick")
        x, y, outputs = inputs(w, np.random.default_rng(0))
        runs = {(fw, part): builders[fw](w, part, x, y, outputs, 10_000)
                for part in (None, *parts) for fw in frameworks}
        best = {key: float("inf") for key in runs}
        losses = {}
        for _ in range(repeats):
            for key, run in runs.items():
                for _ in range(steps):
                    t0 = time.perf_counter()
                    losses[key] = run()
                    best[key] = min(best[key], time.perf_counter() - t0)
        rows = {}
        for fw in frameworks:
            full = 1e3 * best[(fw, None)]
            rows[fw] = {"step_ms": full, "loss": float(losses[(fw, None)]), "without_ms": {}, "part_ms": {},
                        "without_loss": {}}
            for part in parts:
                rows[fw]["without_ms"][part] = 1e3 * best[(fw, part)]
                rows[fw]["without_loss"][part] = float(losses[(fw, part)])
                rows[fw]["part_ms"][part] = full - 1e3 * best[(fw, part)]
            rows[fw]["rest_ms"] = full - sum(rows[fw]["part_ms"].values())
        report["workloads"][name] = {"shape": w.shape, **rows}

    header = f"{'workload':9} {'part':10} " + " ".join(f"{fw + ' ms':>14}" for fw in frameworks)
    print(header)
    for name, r in report["workloads"].items():
        print(f"{name:9} {'full step':10} " + " ".join(f"{r[fw]['step_ms']:14.2f}" for fw in frameworks))
        for part in parts:
            print(f"{'':9} {part:10} " + " ".join(f"{r[fw]['part_ms'][part]:14.2f}" for fw in frameworks))
        print(f"{'':9} {'the rest':10} " + " ".join(f"{r[fw]['rest_ms']:14.2f}" for fw in frameworks))
    bench_json.emit(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
