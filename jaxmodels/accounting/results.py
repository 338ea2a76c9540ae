"""The results table: one JSON line per finished training run, appended by the run itself.

A run trained into WORKDIR appends its row to `WORKDIR/../results.jsonl`, so `runs/<name>`
lands in `runs/results.jsonl` and every run of a sweep in `SWEEP_DIR/results.jsonl`:

    row = results.row(config, summary, workdir)     # a flat dict, see `row`
    results.append(row, results.table_path(workdir))  # what `record` does for the loop
    rows = results.read("runs/results.jsonl")
    results.to_csv(rows, "runs/results.csv")

The table is a log, not a database: a rerun appends a second row (same `config_hash`, later
`time`). Its `params`, `tokens` and `loss` columns are what `jaxmodels fit` reads, so
`jaxmodels fit runs/results.jsonl --params-column non_embedding_params` works on it directly.

Appends are safe from several processes at once: each row is one `write` of one line to a file
opened with O_APPEND, under an exclusive `flock` (the lock also covers the rare short write, and
file systems that split large appends).

This module depends only on `jaxmodels.config` (and JAX for the hardware columns), so the
training loop may call it without the loop depending on the rest of `scaling`.
"""

from __future__ import annotations

import csv
import datetime
import functools
import hashlib
import io
import json
import os
import pathlib
import subprocess
import warnings

import flax
import jax

from jaxmodels import config as config_lib
from jaxmodels.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: O_APPEND alone
    fcntl = None

TABLE_NAME = "results.jsonl"

# Config keys left out of the hash: a label and a display switch, neither changes any number a
# run produces, so configs differing only in them are the same experiment.
HASH_EXCLUDED = ("name", "train.progress")

# Summary keys the loop may not write (older loops, or not yet measured): read with None.
_SUMMARY_NUMBERS = ("params", "non_embedding_params", "examples_seen", "tokens_seen", "flops",
                    "train_loss", "eval_loss", "eval_split", "eval_accuracy", "wall_time_s",
                    "mfu", "hfu")


def table_path(workdir: str | os.PathLike) -> pathlib.Path:
    """The results table a run in `workdir` appends to: `results.jsonl` beside the workdir."""
    return pathlib.Path(workdir).absolute().parent / TABLE_NAME


def canonical_config(config: config_lib.Config) -> dict:
    """The config as a JSON-ready dict without the `HASH_EXCLUDED` keys."""
    out = json.loads(json.dumps(config_lib.to_dict(config)))  # tuples -> lists, as in config.json
    for key in HASH_EXCLUDED:
        *parents, leaf = key.split(".")
        section = out
        for p in parents:
            section = section[p]
        section.pop(leaf, None)
    return out


def config_hash(config: config_lib.Config) -> str:
    """First 12 hex digits of the sha256 of the canonical config JSON (sorted keys, no spaces).

    Equal for configs that differ only in `HASH_EXCLUDED` keys; any other change alters it.
    """
    text = json.dumps(canonical_config(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@functools.cache
def source_commit() -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git checkout holding this jaxmodels source, or (None, None).

    Never fails: an installed wheel, a missing git or a slow file system all give (None, None).
    `dirty` counts changes to tracked files only (untracked outputs such as runs/ would
    otherwise mark every checkout dirty). Cached: a process runs the code it imported at start.
    """
    root = pathlib.Path(__file__).resolve().parents[2]

    def git(*args) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                                 timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    # The package must be the top of its checkout, not a folder inside some other repository.
    top = git("rev-parse", "--show-toplevel")
    if top is None or pathlib.Path(top).resolve() != root:
        return None, None
    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no")
    return commit, (None if status is None else bool(status))


def row(config: config_lib.Config, summary: dict, workdir: str | os.PathLike) -> dict:
    """The results-table row of a finished run: identity, provenance, hardware, size, outcome.

    `config` is the resolved config the run trained (what config.json holds), `summary` the
    dict written to summary.json. Columns `tokens` (tokens seen, or examples seen for a model
    that does not read tokens) and `loss` (the final eval loss) are the ones `jaxmodels fit`
    reads; `config` holds the whole config so the table alone can be grouped by any key.
    """
    workdir = pathlib.Path(workdir).absolute()
    values = {k: summary.get(k) for k in _SUMMARY_NUMBERS}
    commit, dirty = source_commit()
    device = jax.devices()[0]
    tokens = values["tokens_seen"] if values["tokens_seen"] is not None else values["examples_seen"]
    return {
        "run": workdir.name,
        "workdir": str(workdir),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config_hash": config_hash(config),
        "name": config.name,
        "model": config.model.kind,
        "git_commit": commit,
        "git_dirty": dirty,
        "jax_version": jax.__version__,
        "flax_version": flax.__version__,
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
        "params": values["params"],
        "non_embedding_params": values["non_embedding_params"],
        "examples_seen": values["examples_seen"],
        "tokens_seen": values["tokens_seen"],
        "flops": values["flops"],
        "tokens": tokens,
        "train_loss": values["train_loss"],
        "eval_loss": values["eval_loss"],
        "loss": values["eval_loss"],
        "eval_split": values["eval_split"],
        "eval_accuracy": values["eval_accuracy"],
        "wall_time_s": values["wall_time_s"],
        "mfu": values["mfu"],
        "hfu": values["hfu"],
        "config": json.loads(json.dumps(config_lib.to_dict(config))),
    }


def record(config: config_lib.Config, summary: dict, workdir: str | os.PathLike) -> dict:
    """Appends the finished run's `row` to `table_path(workdir)` and returns it. A table that
    cannot be written is a warning, not a failed run: summary.json already holds the numbers."""
    row_ = row(config, summary, workdir)
    try:
        append(row_, table_path(workdir))
    except OSError as e:
        warnings.warn(f"could not append to the results table {table_path(workdir)} ({e.strerror}); summary.json is written", stacklevel=2)
    return row_


def append(row_: dict, path: str | os.PathLike) -> None:
    """Appends `row_` as one JSON line to `path` (created if missing), safe across processes."""
    data = (json.dumps(row_, allow_nan=True) + "\n").encode()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        view = memoryview(data)
        while view:  # a short write is legal; under the lock the rest still follows directly
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)  # closing releases the lock


def read(path: str | os.PathLike) -> list[dict]:
    """The rows of a results table, oldest first; a missing file is an empty table."""
    path = pathlib.Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read results table {path} ({getattr(e, 'strerror', None) or e}): check the path and its permissions") from None
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise UserError(f"results table {path} line {number} is not JSON ({e.msg}): delete or repair that line") from None
    return rows


def _flatten(nested: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in nested.items():
        if isinstance(value, dict):
            out |= _flatten(value, f"{prefix}{key}.")
        elif isinstance(value, (list, tuple)):
            out[prefix + key] = json.dumps(value)
        else:
            out[prefix + key] = "" if value is None else value
    return out


def to_csv(rows: list[dict], path: str | os.PathLike) -> pathlib.Path:
    """Writes `rows` as CSV: columns in first-seen order, nested dicts as dotted columns
    (`config.model.hidden`), lists as JSON, None as an empty cell. Written atomically."""
    flat = [_flatten(r) for r in rows]
    columns = list(dict.fromkeys(k for r in flat for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat)
    path = pathlib.Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(buffer.getvalue())
    os.replace(tmp, path)
    return path
