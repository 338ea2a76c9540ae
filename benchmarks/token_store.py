"""Token stores: memory use of training from a 2 GB store, prepare speed, and the reason for
a raw memory map (random-window reads: memmap against ArrayRecord).

  PYTHONPATH=. python benchmarks/token_store.py [--gb 2] [--steps 20] [--tmp /tmp]
  (ArrayRecord, optional: pip install --target /tmp/ar_pkgs --no-deps array-record==0.8.6,
   then PYTHONPATH=.:/tmp/ar_pkgs)

1. Writes a synthetic store of `--gb` GB of random uint16 tokens (vocab 256, byte tokenizer)
   in 32 MB chunks under --tmp, trains the tiny GPT config on it in a fresh process
   (data.dataset=tokens) and reports that process's peak RSS (getrusage ru_maxrss), next to
   the same run on a 1M-token store: the store's size must not show in memory. Deletes it.
2. prepare's tokens/s on the Wikipedia excerpt (char and byte; encoding and writing, the
   corpus already read).
3. Random windows of 65 tokens, batches of 32, from a 20M-token split: LMBatches over the
   store's np.memmap (windows by pread, as training reads them) and through the map's pages,
   against ArrayRecord records of 1,024 tokens (a window reads one or two records).
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jaxmodels.data import token_store  # noqa: E402
from jaxmodels.data.tokenizers import ByteTokenizer  # noqa: E402

CHUNK = 1 << 24  # tokens per write (32 MB of uint16)


def synthetic_store(folder: pathlib.Path, train_tokens: int, val_tokens: int = 1 << 20) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {}
    for split, n in (("train", train_tokens), ("validation", val_tokens)):
        w = token_store.SplitWriter(folder, split, np.dtype("<u2"))
        for lo in range(0, n, CHUNK):
            w.write(rng.integers(0, 256, min(CHUNK, n - lo), dtype=np.uint16))
        meta[split] = w.close()
    token_store.write_index(folder, ByteTokenizer().to_json(), meta)


CHILD = """
import resource, sys, json
from jaxmodels.cli import main
rc = main(sys.argv[1:])
print("RSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "RC", rc)
"""


def train_rss(store: pathlib.Path, workdir: pathlib.Path, steps: int) -> float:
    """Peak RSS (MB) of a fresh process training the tiny GPT for `steps` on `store`."""
    argv = ["train", str(ROOT / "experiments/configs/gpt_shakespeare.py"), "--tiny",
            "data.dataset=tokens", f"data.data_dir={store}", f"train.steps={steps}",
            "train.eval_every=none", "data.final_eval_windows=64", "--workdir", str(workdir)]
    out = subprocess.run([sys.executable, "-c", CHILD, *argv], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=1800)
    line = [x for x in out.stdout.splitlines() if x.startswith("RSS_KB")]
    if out.returncode or not line or not line[0].endswith("RC 0"):
        raise RuntimeError(out.stderr[-3000:])
    return int(line[0].split()[1]) / 1024


def prepare_speed(kind: str, tmp: pathlib.Path) -> float:
    from jaxmodels.data import prepare

    summary = prepare.prepare(["wikipedia"], tmp / f"wiki_{kind}", tokenizer=kind, progress=False)
    shutil.rmtree(tmp / f"wiki_{kind}")
    return summary["tokens_per_sec"]


def window_reads(tmp: pathlib.Path, tokens: int = 20_000_000, batches: int = 300) -> dict:
    from jaxmodels.data.lm import LMBatches

    folder = tmp / "reads"
    synthetic_store(folder, tokens, 1 << 16)
    ids = token_store.open_store(folder, verify=False).ids["train"]
    b = LMBatches(ids, batch_size=32, seq_len=64, seed=0)
    next(b)
    t = time.perf_counter()
    for _ in range(batches):
        next(b)
    out = {"pread_windows_per_s": batches * 32 / (time.perf_counter() - t)}
    # The same windows through the map's pages (what LMBatches does for an in-memory array).
    b = LMBatches(np.asarray(ids), batch_size=32, seq_len=64, seed=0)
    next(b)
    t = time.perf_counter()
    for _ in range(batches):
        next(b)
    out["memmap_windows_per_s"] = batches * 32 / (time.perf_counter() - t)
    try:
        from array_record.python import array_record_module as ar
    except ImportError:
        out["array_record_windows_per_s"] = None
        shutil.rmtree(folder)
        return out
    record = 1024
    path = str(folder / "train.array_record")
    w = ar.ArrayRecordWriter(path, "group_size:1")
    arr = np.asarray(ids)
    for lo in range(0, len(arr), record):
        w.write(arr[lo:lo + record].tobytes())
    w.close()
    reader = ar.ArrayRecordReader(path)
    n = len(arr) - 65
    t = time.perf_counter()
    for k in range(batches):
        starts = np.random.default_rng([0, k]).integers(0, n, 32)
        rows = []
        for s in starts:
            first, last = s // record, (s + 64) // record
            raw = reader.read(list(range(first, last + 1)))
            chunk = np.frombuffer(b"".join(raw), np.uint16)
            rows.append(chunk[s - first * record: s - first * record + 65])
        np.stack(rows)
    out["array_record_windows_per_s"] = batches * 32 / (time.perf_counter() - t)
    reader.close()
    shutil.rmtree(folder)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--gb", type=float, default=2.0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--tmp", default="/tmp")
    args = p.parse_args()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="token_store_bench_", dir=args.tmp))
    results = {}
    try:
        big = tmp / "big"
        t = time.perf_counter()
        synthetic_store(big, int(args.gb * 2 ** 30) // 2)
        results["write_s"] = time.perf_counter() - t
        results["store_bytes"] = sum(f.stat().st_size for f in big.iterdir())
        results["rss_mb_big_store"] = train_rss(big, tmp / "run_big", args.steps)
        shutil.rmtree(big)  # disk is limited: the 2 GB go before anything else runs
        small = tmp / "small"
        synthetic_store(small, 1 << 20)
        results["rss_mb_small_store"] = train_rss(small, tmp / "run_small", args.steps)
        for kind in ("char", "byte"):
            results[f"prepare_{kind}_tokens_per_s"] = prepare_speed(kind, tmp)
        results.update(window_reads(tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows = [("store on disk", f"{results['store_bytes'] / 1e9:.2f} GB"),
            ("write (random tokens)", f"{results['write_s']:.1f} s"),
            (f"peak RSS, {args.steps} steps on it", f"{results['rss_mb_big_store']:.0f} MB"),
            ("peak RSS, same on a 1M-token store", f"{results['rss_mb_small_store']:.0f} MB"),
            ("prepare wikipedia, char", f"{results['prepare_char_tokens_per_s'] / 1e6:.1f} M tokens/s"),
            ("prepare wikipedia, byte", f"{results['prepare_byte_tokens_per_s'] / 1e6:.1f} M tokens/s"),
            ("65-token windows, memmap + pread", f"{results['pread_windows_per_s']:,.0f} /s"),
            ("65-token windows, through the map", f"{results['memmap_windows_per_s']:,.0f} /s")]
    if results.get("array_record_windows_per_s"):
        rows.append(("65-token windows, ArrayRecord", f"{results['array_record_windows_per_s']:,.0f} /s"))
    for name, value in rows:
        print(f"{name:<40} {value}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
