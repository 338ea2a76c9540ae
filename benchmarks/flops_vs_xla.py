"""Analytic training FLOPs (`jaxmodels.accounting.flops`) next to XLA's count of the compiled step.

  python benchmarks/flops_vs_xla.py [CONFIG] [KEY=VALUE ...]

CONFIG is an experiment file (default: the embedded classic CNN). The config's real train step
(its optimizer, its batch size) is compiled for one device and never run; the data is loaded only
to resolve the vocabulary and the input shape. Prints one JSON line: parameters, analytic model
FLOPs per example and per token, XLA's `cost_analysis()` FLOPs per step divided the same ways,
and their ratio. XLA counts elementwise work and the optimizer too (ratio above 1), skips the
multiply-adds a 'same' convolution makes with its zero padding (below 1 for small images), computes
the whole causal attention square (above 1), and counts a while-loop body once (scan_layers, RNN
time steps: far below 1; the output's "xla_caveat" then says "lower bound"), which is why the
tests compare on unrolled layers. The XLA figure is `accounting.xla_flops.train_flops_per_example`,
what the training loop reports for models that have no analytic formula.
"""

import argparse
import dataclasses
import json

import jax
import jax.numpy as jnp

from jaxmodels import config as config_lib
from jaxmodels import models
from jaxmodels.accounting import flops, xla_flops
from jaxmodels.training import optim, state, step, tasks


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", nargs="?")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = config_lib.load(args.config) if args.config else config_lib.Config()
    cfg = config_lib.apply_overrides(cfg, args.overrides)
    task = tasks.build(cfg.data)
    model_cfg = tasks.resolve_model(cfg.model, task)
    acc = flops.account(model_cfg, task.example_inputs.shape[1:])

    model = models.build(model_cfg)
    tx, schedule = optim.make(cfg.optimizer, 1000)
    example = jnp.asarray(task.example_inputs)
    state_shapes = jax.eval_shape(lambda: state.init_state(model, tx, example, 0))
    batch = next(iter(task.train_batches(0)))
    batch_shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
    batch_size = batch["inputs"].shape[0]
    xf = xla_flops.train_flops_per_example(jax.jit(step.make_train_step(model, tx, schedule=schedule)),
                                           state_shapes, batch_shapes, batch_size=batch_size)
    xla = xf.per_step

    per_token = acc.tokens_per_example
    print(flops.describe(acc))
    print(json.dumps({
        "config": args.config or "default (classic CNN)", "model": dataclasses.asdict(model_cfg),
        "batch_size": batch_size, "tokens_per_example": per_token, "params": acc.params,
        "non_embedding_params": acc.non_embedding_params,
        "analytic_model_flops_per_example": acc.model_flops_per_example,
        "analytic_model_flops_per_token": acc.model_flops_per_token,
        "xla_flops_per_step": xla,
        "xla_flops_per_example": None if xla is None else xla / batch_size,
        "xla_flops_per_token": None if xla is None else xla / batch_size / per_token,
        "xla_over_analytic": None if xla is None else xla / batch_size / acc.model_flops_per_example,
        "xla_while_loops": xf.while_loops,
        "xla_caveat": xf.reason,
    }))


if __name__ == "__main__":
    main()
