"""Import time and peak host memory of `jaxmodels.interop.hf.load` on a GPT-2-small-shaped
(124M parameters) random checkpoint built locally with transformers (no download), and the
logits' max abs difference from PyTorch's on one batch.

    PYTHONPATH=. python benchmarks/hf_import.py [--layers 12]

Prints a table and one JSON line. The checkpoint is built in a child process, so the parent's
ru_maxrss is the import's own (plus the JAX forward pass for the parity check, measured after).
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time

BUILD = """
import sys, torch, transformers
torch.manual_seed(0)
cfg = transformers.GPT2Config(n_layer=int(sys.argv[2]), bos_token_id=None, eos_token_id=None)
m = transformers.GPT2LMHeadModel(cfg).eval()
m.save_pretrained(sys.argv[1])
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=12)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-c", BUILD, tmp, str(args.layers)], check=True,
                       stderr=subprocess.DEVNULL)
        from jaxmodels.interop import hf

        t0 = time.perf_counter()
        cfg, params = hf.load(tmp)
        load_s = time.perf_counter() - t0
        rss_load_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        n = sum(a.size for a in __import__("jax").tree.leaves(params))

        import jax.numpy as jnp
        import numpy as np
        import torch
        import transformers

        from jaxmodels.models.transformer import TransformerLM
        tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(2, 64)).astype(np.int32)
        ours = np.asarray(TransformerLM(cfg).apply({"params": params}, jnp.asarray(tokens)))
        model = transformers.AutoModelForCausalLM.from_pretrained(tmp).eval()
        with torch.no_grad():
            theirs = model(torch.tensor(tokens, dtype=torch.long)).logits.numpy()
        diff = float(np.abs(ours - theirs).max())
    row = {"params": int(n), "layers": args.layers, "import_s": round(load_s, 2),
           "peak_rss_after_import_mib": round(rss_load_mib), "logits_max_abs_diff": diff}
    print(f"{'params':>12} {'import s':>9} {'peak RSS MiB':>13} {'max |dlogit|':>13}")
    print(f"{n:>12,} {load_s:>9.2f} {rss_load_mib:>13.0f} {diff:>13.2e}")
    print(json.dumps(row))


if __name__ == "__main__":
    main()
