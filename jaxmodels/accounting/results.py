"""The results table: one JSON line per finished training run, appended by the run itself.

A run trained into WORKDIR appends its row to `WORKDIR/../results.jsonl`, so `runs/<name>`
lands in `runs/results.jsonl` and every run of a sweep in `SWEEP_DIR/results.jsonl`:

    row = results.row(config, summary, workdir)     # a flat dict, see `row`
    results.append(row, results.table_path(workdir))  # what `record` does for the loop
    rows = results.read("runs/results.jsonl")
    results.to_csv(rows, "runs/results.csv")

A run has exactly one row, whichever launch completes it: `record` is idempotent on the run's
identity (its folder beside the table and its `config_hash`), and the loop calls it at the end of every
launch that finishes the run, so a run killed after its last checkpoint but before its row (or
whose table was not writable then) gets the row on the next launch, and a relaunch of a run that
has one adds none. `audit` names runs with no row or with several (one line each); `jaxmodels
fit` and the sweep print those lines. Its `params`, `tokens` and `loss` columns are what
`jaxmodels fit` reads, so `jaxmodels fit runs/results.jsonl --params-column
non_embedding_params` works on it directly.

Appends are safe from several processes at once: each row is one `write` of one line to a file
opened with O_APPEND, under an exclusive `flock` (the lock also covers the rare short write, and
file systems that split large appends). A writer killed mid-row leaves a torn last line; the
next append starts on a fresh line rather than gluing its row onto it, and `read` skips torn
rows (lines starting with "{" that are not JSON) with a warning.

This module depends only on `jaxmodels.config` and `jaxmodels.files` (and JAX for the hardware
columns), so the training loop may call it without the loop depending on the rest of `scaling`.
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
from jaxmodels import files
from jaxmodels.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: O_APPEND alone
    fcntl = None

TABLE_NAME = "results.jsonl"

# Config keys left out of the hash: a label and a display switch, neither changes any number a
# run produces, so configs differing only in them are the same experiment.
# Bookkeeping, not the computation: the same run moved, renamed or with a comment edited in its
# experiment file keeps its identity (and so its one results row).
HASH_EXCLUDED = ("name", "train.progress", "experiment_file", "experiment_sha256")

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
        # The researcher's own code: the experiment file the config came from, and its hash.
        "experiment_file": config.experiment_file,
        "experiment_sha256": config.experiment_sha256,
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


def identity(row_: dict) -> tuple:
    """What makes two rows the same run: its folder (beside the table, so the name alone is
    unique there, and a sweep folder that is moved or copied keeps its rows) and its config
    hash."""
    return row_.get("run"), row_.get("config_hash")


def record(config: config_lib.Config, summary: dict, workdir: str | os.PathLike) -> dict:
    """Appends the finished run's `row` to `table_path(workdir)` unless the table already holds
    a row of this run (same `identity`), and returns the row. A table that cannot be written is
    a warning, not a failed run: summary.json already holds the numbers, and the next launch of
    the run adds the row."""
    row_ = row(config, summary, workdir)
    try:
        append(row_, table_path(workdir), once=True)
    except OSError as e:
        warnings.warn(f"could not append to the results table {table_path(workdir)} ({e.strerror}); summary.json is written and the next launch of this run adds the row", stacklevel=2)
    return row_


def _rows_of(data: bytes) -> list[dict]:
    rows = []
    for line in data.decode("utf-8", "replace").splitlines():
        try:
            parsed = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(parsed, dict):
            rows.append(parsed)
    return rows


def append(row_: dict, path: str | os.PathLike, *, once: bool = False) -> bool:
    """Appends `row_` as one JSON line to `path` (created if missing), safe across processes.

    Starts a fresh line when the file does not end with one (a writer killed mid-row). With
    `once`, nothing is written when the table already holds a row of the same `identity`
    (checked under the lock, so two launches finishing the same run add one row). Returns
    whether the row was written."""
    data = (json.dumps(row_, allow_nan=True) + "\n").encode()
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        if once and size:
            key = identity(row_)
            if any(identity(r) == key for r in _rows_of(os.pread(fd, size, 0))):
                return False
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        view = memoryview(data)
        while view:  # a short write is legal; under the lock the rest still follows directly
            view = view[os.write(fd, view):]
        # The row is the run's only record in the table: on the disk before the run says it is done.
        os.fsync(fd)
    finally:
        os.close(fd)  # closing releases the lock
    return True


def read(path: str | os.PathLike, *, warn=None) -> list[dict]:
    """The rows of a results table, oldest first; a missing file is an empty table.

    Torn rows (a line that starts like a row but is not JSON: a writer killed mid-row) are
    skipped, and `warn` (default `warnings.warn`) gets one line naming them. Any other line
    that is not a JSON object, or a file of nothing but broken lines, is a UserError: the file
    is not a results table."""
    path = pathlib.Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read results table {path} ({getattr(e, 'strerror', None) or e}): check the path and its permissions") from None
    rows, torn = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            parsed = json.loads(line)
        except json.JSONDecodeError as e:
            if line.lstrip().startswith("{"):
                torn.append((number, e.msg))
                continue
            raise UserError(f"results table {path} line {number} is not JSON ({e.msg}): delete or repair that line") from None
        if not isinstance(parsed, dict):
            raise UserError(f"results table {path} line {number} is not a JSON object: delete or repair that line")
        rows.append(parsed)
    if torn and not rows:  # nothing but broken lines: not a table with a torn row
        number, msg = torn[0]
        raise UserError(f"results table {path} line {number} is not JSON ({msg}): delete or repair that line")
    torn = [n for n, _ in torn]
    if torn:
        (warn or _warn)(torn_message(path, torn))
    return rows


def torn_message(path, lines: list[int]) -> str:
    return (f"results table {path}: skipped {len(lines)} torn row(s) (line(s) "
            f"{', '.join(map(str, lines[:10]))}{', ...' if len(lines) > 10 else ''}; a writer was "
            f"killed mid-row); relaunching those runs adds their rows again")


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)


def audit(rows: list[dict], path: str | os.PathLike) -> list[str]:
    """One line per problem with the exactly-once rule: a run with several rows, and a finished
    run beside the table (a folder holding summary.json and config.json) without a row."""
    path = pathlib.Path(path)
    lines = []
    counts: dict[tuple, int] = {}
    for r in rows:
        if r.get("run") is not None and r.get("config_hash") is not None:
            counts[identity(r)] = counts.get(identity(r), 0) + 1
    for (run, digest), n in counts.items():
        if n > 1:
            lines.append(f"results table {path}: run {run} (config {digest}) has {n} rows; "
                         f"a fit counts it {n} times: delete all but the last")
    have = {run for run, _ in counts}
    try:
        siblings = sorted(p for p in path.absolute().parent.iterdir() if p.is_dir())
    except OSError:
        siblings = []
    for folder in siblings:
        if ((folder / "summary.json").is_file() and (folder / "config.json").is_file()
                and folder.name not in have):
            lines.append(f"results table {path}: finished run {folder} has no row; relaunch it "
                         f"(the same command) to add it")
    return lines


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
    return files.write_atomic(path, buffer.getvalue())
