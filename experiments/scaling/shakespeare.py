"""A compute-budgeted scaling study: character-level Transformer LMs on the Shakespeare corpus.

  Command:  jaxmodels sweep experiments/scaling/shakespeare.py --workdir runs/scaling_shakespeare
            jaxmodels fit runs/scaling_shakespeare/results.jsonl --params-column non_embedding_params \
                --out docs/scaling/shakespeare_fit.json --plots docs/scaling
  Runtime:  18 runs (6 sizes x 3 budgets); see README "Scaling study" for the measured time.
  Expected: see README "Scaling study" (fitted exponents with bootstrap intervals).
  Tiny:     --tiny trains 2 sizes x 2 budgets for a few dozen steps each (a minute).

Six model sizes, 12k to 789k non-embedding parameters (63x), each trained at three compute
budgets (C = 3e11, 6e11, 1.8e12 FLOPs). A run's number of tokens is its budget divided by its
analytic training FLOPs per token (jaxmodels.accounting.flops: forward and backward matmuls, the
causal half of attention, the output head), so every run at one budget costs the same FLOPs and
the IsoFLOP curves compare like with like. Everything else is the gpt_shakespeare recipe (RoPE,
pre-LayerNorm, GELU, tied embeddings, AdamW with warmup and cosine decay to 10 %), batch 16 of
64-character windows, with the peak learning rate scaled as 1e-3 * sqrt(128 / d_model): a
common heuristic, not tuned per size, which is one reason the fitted exponents are rough.
"""

import math

from jaxmodels.models import TransformerLMConfig
from jaxmodels.accounting import flops
from jaxmodels.orchestration.sweep import Sweep

# (layers, d_model, heads): head size 16 to 32, d_ff = 4 d_model.
SIZES = ((1, 32, 2), (2, 32, 2), (2, 48, 3), (2, 64, 4), (3, 96, 4), (4, 128, 4))
BUDGETS = (3e11, 6e11, 1.8e12)  # training FLOPs per run
BATCH, SEQ_LEN = 16, 64
VOCAB = 85  # the character vocabulary of the Shakespeare train split (what the tokenizer finds)


def _run(layers: int, d_model: int, heads: int, budget: float) -> dict:
    model = TransformerLMConfig(num_layers=layers, num_heads=heads, d_model=d_model,
                                max_len=SEQ_LEN, positional="rope", tie_embeddings=True,
                                vocab_size=VOCAB)
    per_token = flops.account(model, (SEQ_LEN,)).model_flops_per_token
    steps = max(20, round(budget / (per_token * BATCH * SEQ_LEN)))
    return {
        "model.num_layers": layers, "model.d_model": d_model, "model.num_heads": heads,
        "train.steps": steps,
        "optimizer.learning_rate": round(1e-3 * math.sqrt(128 / d_model), 6),
        "optimizer.warmup_steps": max(1, steps // 20),
        "train.eval_every": max(1, steps // 4),
        "train.log_every": max(1, min(100, steps // 10)),
    }


def get_sweep(tiny: bool = False) -> Sweep:
    sizes, budgets = (SIZES[:1] + SIZES[3:4], (3e10, 9e10)) if tiny else (SIZES, BUDGETS)
    base = {"data.batch_size": BATCH, "data.seq_len": SEQ_LEN, "data.eval_windows": 128}
    return Sweep(config="../configs/gpt_shakespeare.py", base=base,
                 runs=[_run(*size, budget) for budget in budgets for size in sizes])
