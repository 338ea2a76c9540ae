"""What TensorBoard writing adds to a run (training/tensorboard.py): the seconds spent opening
the event log, at the log steps and at the end, on a 200-step digits MLP with a log every 10
steps. Prints a table and a JSON line.

    PYTHONPATH=. python benchmarks/tensorboard_cost.py
"""

import dataclasses
import json
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from jaxmodels.config import Config, DataConfig, OptimizerConfig, TrainConfig, CheckpointConfig  # noqa: E402
from jaxmodels.models import MLPConfig  # noqa: E402
from jaxmodels.training import loop, tensorboard as tb  # noqa: E402

CONFIG = Config(
    name="tb_cost", model=MLPConfig(hidden=(16,)),
    data=DataConfig(dataset="digits", batch_size=64, eval_batch_size=256, eval_split="test"),
    optimizer=OptimizerConfig(name="adam", learning_rate=3e-3),
    train=TrainConfig(steps=200, log_every=10, eval_every=50, progress=False),
    checkpoint=CheckpointConfig(every_steps=None, async_save=False))


def main():
    spent = {"open_s": 0.0, "log_steps_s": 0.0, "close_s": 0.0, "final_s": 0.0}
    calls = {"log_steps": 0}

    def timed(key, fn):
        def wrapped(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[key] += time.perf_counter() - t
                if key == "log_steps_s":
                    calls["log_steps"] += 1
        return wrapped

    tb.Guarded.write = timed("log_steps_s", tb.Guarded.write)
    tb.Guarded.close = timed("close_s", tb.Guarded.close)
    tb.open_log = timed("open_s", tb.open_log)
    tb.write_final = timed("final_s", tb.write_final)
    t = time.perf_counter()
    loop.train(dataclasses.replace(CONFIG), tempfile.mkdtemp())
    run = time.perf_counter() - t
    out = {**{k: round(v, 4) for k, v in spent.items()}, **calls, "run_s": round(run, 2),
           "total_tb_s": round(sum(spent.values()), 4)}
    for k, v in out.items():
        print(f"{k:>12}  {v}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
