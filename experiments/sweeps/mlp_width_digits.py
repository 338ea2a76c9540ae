"""Width x seed sweep of the one-hidden-layer MLP on the 8x8 digits: a scaling study in minutes.

  Command:  jaxmodels sweep experiments/sweeps/mlp_width_digits.py --workdir runs/mlp_width_digits
  Runtime:  21 runs (7 widths x 3 seeds, 600 steps each): 6.7 min with --workers 2 on 2 CPU
            cores that other jobs shared (load ~7); each run 13-28 s.
  Expected: test loss (median of 3 seeds) for widths 4, 8, 16, 32, 64, 128, 256:
            1.43, 0.86, 0.34, 0.24, 0.15, 0.105, 0.080; accuracy from 30-60 % (width 4, seeds
            differ widely) to 98.5 % (width 256).
  Tiny:     --tiny trains widths 8, 32, 128 for 40 steps (about 30 s on the loaded machine;
            test loss 1.81, 0.72, 0.25); a relaunch skips all three.

Every run appends its row to runs/mlp_width_digits/results.jsonl; sweep.csv holds one line per
run (width, seed, losses, parameters). `--workers 2` runs two at once, one CPU each.
"""

from jaxmodels.orchestration.sweep import Sweep, grid


def get_sweep(tiny: bool = False) -> Sweep:
    # The MNIST MLP's recipe, pointed at the digits (64 pixels, 1,257 training images).
    base = {"data.dataset": "digits", "data.batch_size": 64, "model.dropout": 0.0}
    if tiny:
        return Sweep(config="../configs/mlp_mnist.py", tiny=True, base=base,
                     runs=grid({"model.hidden": [(8,), (32,), (128,)]}))
    return Sweep(config="../configs/mlp_mnist.py", base=base | {
                     "train.steps": 600, "train.log_every": 50, "train.eval_every": 200,
                     "optimizer.warmup_steps": 60},
                 runs=grid({"model.hidden": [(4,), (8,), (16,), (32,), (64,), (128,), (256,)],
                            "train.seed": [0, 1, 2]}))
