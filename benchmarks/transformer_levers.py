"""The transformer's CPU levers, each measured against the current default in one sitting.

  python benchmarks/transformer_levers.py [--shapes small,medium] [--variants a,b,...]
      [--repeats 3] [--steps N] [--torch] [--json OUT]

What one measurement is: the time of a jitted, state-donating forward+backward+Adam step of the
jaxmodels GPT (learned positions, tied embeddings, vocabulary 65, random tokens), the median over
`--steps` timed steps after two warm-up steps. Variants are alternated A B C A B C ... `--repeats`
times, so machine load drifts over all of them alike; the table gives each variant's median step
time and its speed-up over "base" (base time / variant time) as the median and the range of the
per-repeat ratios (a range that straddles 1.0 is noise, not a result), and the fastest single
step of each variant with its ratio (on a shared machine the least disturbed step; more stable
than the medians when other jobs come and go).

Shapes: "small" is GPT 4L/128D/4H, ctx 64, batch 12; "medium" 6L/384D/6H, ctx 256, batch 16.
Variants are config overrides of the model (see VARIANTS). `--torch` adds a minimal hand-written
PyTorch eager GPT of the same shape (pre-norm, GELU MLP, fused QKV as nanoGPT has it,
scaled_dot_product_attention, Adam) as a ratio reference; the official peer table is
benchmarks/run.py's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from jaxmodels import runtime  # noqa: E402  (imports JAX but does not start its backend)

# The XLA CPU flags `fit` and the CLI set when XLA_FLAGS is unset, so these rows measure what a
# run gets; set XLA_FLAGS yourself (even to "") to measure without them.
runtime.configure_xla_flags()

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from jaxmodels import models  # noqa: E402

SHAPES = {
    "small": dict(num_layers=4, d_model=128, num_heads=4, ctx=64, batch=12),
    "medium": dict(num_layers=6, d_model=384, num_heads=6, ctx=256, batch=16),
}
VARIANTS = {
    "base": {},
    "einsum": {"attention": "einsum"},
    "blocked": {"attention": "blocked", "attention_block": 128},
    "blocked64": {"attention": "blocked", "attention_block": 64},
    "fused": {"fused_projections": True},
    "einsum_fused": {"attention": "einsum", "fused_projections": True},
    "blocked_fused": {"attention": "blocked", "attention_block": 128, "fused_projections": True},
    "bf16": {"dtype": "bfloat16"},
    "einsum_vjp": {"attention": "einsum_vjp"},
    "blocked_vjp": {"attention": "blocked_vjp", "attention_block": 128},
    "blocked64_vjp": {"attention": "blocked_vjp", "attention_block": 64},
    "blocked_vjp_fused": {"attention": "blocked_vjp", "attention_block": 128, "fused_projections": True},
    "blocked_vjp_bf16": {"attention": "blocked_vjp", "attention_block": 128, "dtype": "bfloat16"},
}


def gpt_config(shape: str, **overrides) -> models.TransformerLMConfig:
    s = SHAPES[shape]
    # "base" pins the reference explicitly, whatever the config's defaults become.
    fields = dict(num_layers=s["num_layers"], d_model=s["d_model"], num_heads=s["num_heads"],
                  max_len=s["ctx"], vocab_size=65, positional="learned", tie_embeddings=True,
                  attention="jax", fused_projections=False, dtype="float32")
    return models.TransformerLMConfig(**{**fields, **overrides})


def jax_step(cfg: models.TransformerLMConfig, batch: int, ctx: int):
    """A () -> None callable running one training step on fixed random tokens."""
    module = models.build(cfg)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 65, size=(batch, ctx + 1)), jnp.int32)
    params = nn.meta.unbox(jax.jit(module.init)(jax.random.key(0), tokens[:, :-1])["params"])
    tx = optax.adam(1e-3)
    state = [params, tx.init(params)]

    def loss_fn(p):
        logits = module.apply({"params": p}, tokens[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    def step(p, o):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, o = tx.update(grads, o, p)
        return optax.apply_updates(p, updates), o, loss

    step = jax.jit(step, donate_argnums=(0, 1))

    def run():
        state[0], state[1], loss = step(*state)
        return loss

    return run


def torch_step(shape: str):
    import torch
    from torch import nn as tnn

    torch.manual_seed(0)
    s = SHAPES[shape]
    d, h, ctx = s["d_model"], s["num_heads"], s["ctx"]

    class Block(tnn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = tnn.LayerNorm(d), tnn.LayerNorm(d)
            self.qkv, self.proj = tnn.Linear(d, 3 * d, bias=False), tnn.Linear(d, d, bias=False)
            self.up, self.down = tnn.Linear(d, 4 * d, bias=False), tnn.Linear(4 * d, d, bias=False)

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
            y = tnn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
            return x + self.down(tnn.functional.gelu(self.up(self.ln2(x))))

    class GPT(tnn.Module):
        def __init__(self):
            super().__init__()
            self.tok, self.pos = tnn.Embedding(65, d), tnn.Embedding(ctx, d)
            self.blocks = tnn.ModuleList(Block() for _ in range(s["num_layers"]))
            self.ln = tnn.LayerNorm(d)

        def forward(self, idx):
            x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
            for blk in self.blocks:
                x = blk(x)
            return self.ln(x) @ self.tok.weight.T  # tied embeddings

    model = GPT()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    tokens = torch.from_numpy(np.random.default_rng(0).integers(0, 65, size=(s["batch"], ctx + 1)))

    def run():
        logits = model(tokens[:, :-1])
        loss = tnn.functional.cross_entropy(logits.reshape(-1, 65), tokens[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return run


def time_steps(run, steps: int, block) -> tuple[float, float]:
    """(median, fastest) seconds per step over `steps` steps (each step waited for). The fastest
    step is the one least disturbed by other work on a shared machine."""
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        block(run())
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="small,medium")
    ap.add_argument("--variants", default="base,einsum,blocked,fused,einsum_fused")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=0, help="timed steps per repeat (0: 20 small, 5 medium)")
    ap.add_argument("--torch", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    variants = args.variants.split(",")
    if variants[0] != "base":
        variants = ["base"] + [v for v in variants if v != "base"]
    report = {"jax": jax.__version__, "devices": str(jax.devices()), "shapes": {}}
    for shape in args.shapes.split(","):
        s = SHAPES[shape]
        steps = args.steps or (20 if shape == "small" else 5)
        runs = {}
        for v in variants:
            runs[v] = (jax_step(gpt_config(shape, **VARIANTS[v]), s["batch"], s["ctx"]), jax.block_until_ready)
        if args.torch:
            runs["torch_eager"] = (torch_step(shape), lambda x: x)
        for run, block in runs.values():  # warm-up: compile and two steps each
            for _ in range(2):
                block(run())
        times = {name: [] for name in runs}
        fastest = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, (run, block) in runs.items():
                med, best = time_steps(run, steps, block)
                times[name].append(med)
                fastest[name].append(best)
        rows = {}
        for name, ts in times.items():
            ratios = [b / t for b, t in zip(times["base"], ts)]
            best_ratio = min(fastest["base"]) / min(fastest[name])
            rows[name] = {"median_step_ms": 1e3 * statistics.median(ts), "step_ms": [1e3 * t for t in ts],
                          "fastest_step_ms": 1e3 * min(fastest[name]),
                          "speedup_vs_base": statistics.median(ratios),
                          "speedup_range": [min(ratios), max(ratios)],
                          "speedup_fastest_steps": best_ratio,
                          "tokens_per_s": s["batch"] * s["ctx"] / statistics.median(ts)}
        report["shapes"][shape] = {"shape": s, "steps_per_repeat": steps, "repeats": args.repeats, "rows": rows}
        print(f"\n{shape}: {s}  ({args.repeats} repeats x {steps} steps, interleaved)")
        print(f"{'variant':14s} {'step ms':>9s} {'tokens/s':>9s} {'x base':>7s} {'range':>10s} "
              f"{'fastest ms':>10s} {'x base':>7s}")
        for name, r in rows.items():
            lo, hi = r["speedup_range"]
            print(f"{name:14s} {r['median_step_ms']:9.1f} {r['tokens_per_s']:9.0f} {r['speedup_vs_base']:7.2f} "
                  f"{lo:5.2f}-{hi:4.2f} {r['fastest_step_ms']:10.1f} {r['speedup_fastest_steps']:7.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
