"""Sweeps: many runs of one experiment file, each in DIR/<run name>, relaunchable.

    jaxmodels sweep SWEEP_FILE [--workdir DIR] [--workers N] [--tiny] [--dry-run]

A sweep file is Python defining `get_sweep(tiny: bool = False) -> Sweep`:

    from jaxmodels.orchestration.sweep import Sweep, grid

    def get_sweep(tiny=False):
        return Sweep(config="../configs/mlp_mnist.py",         # relative to this file
                     tiny=tiny,                                  # the config's tiny variant
                     base={"data.dataset": "digits", "train.steps": 500},   # every run
                     runs=grid({"model.hidden": [(32,), (128,)], "train.seed": [0, 1]})
                          + [{"optimizer.learning_rate": 3e-4}])

Values are Python values (int, float, bool, str, None, tuples of them) turned into the usual
`KEY=VALUE` overrides, so they are parsed and checked exactly as on the command line. Every
run's config is resolved before any run trains: a bad key in the last run is one line at once.

A run is named by its own values (`hidden=32,seed=0`; a long name is cut and given a short
hash) and trains into DIR/<name>. On a relaunch each run is, by what its workdir holds:
  done      summary.json and a config.json equal to the run's config: skipped
  resume    a config.json equal to the run's config but no summary: trained into the same
            workdir, so the loop picks up its checkpoints
  changed   a config.json of another config: the folder is renamed to <name>.replaced-<hash>
            (nothing is deleted) and the run trains afresh
  new       nothing there yet
"Equal" compares `results.config_hash` (labels and display switches excluded), with
`model.vocab_size=none` in the request matching the size the loop filled in from the tokenizer.

Runs go one after another in this process, or with `workers=N` up to N at once, each a
subprocess (`python -m jaxmodels.orchestration.workers --worker ...`, see workers.py) given the resolved config as JSON,
its output in DIR/logs/<name>.log, and, on Linux, its own 1/N of this process's CPUs (CPU
affinity, set in the worker before JAX starts; XLA and NumPy size their thread pools from it,
so N workers do not each start a pool as large as the machine). Workers do not split
accelerators: on a GPU or TPU host every worker would claim every device, so use --workers 1.
A failed run (an exception, a non-finite loss, or a non-zero exit) is marked failed with its
one-line error and the others go on, with or without workers. SIGTERM/SIGINT stop the sweep:
the running run (or every worker, to which the parent forwards the signal) saves its checkpoint,
and the sweep exits with 128 + the signal; a relaunch resumes. Workers end with their parent,
even a `kill -9`'d one (workers.py). At the end a table is printed and DIR/sweep.csv written: one line per run with its
swept values, status and its latest row of the results table (DIR/results.jsonl, which every
run appends to itself; see results.py). Each run's step bar is switched off
(`train.progress=false`, display only): the sweep shows one bar over runs.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import itertools
import json
import numbers
import os
import pathlib
import re
import shlex
import signal
import sys
import traceback
from collections.abc import Mapping, Sequence
from typing import Literal

# tqdm.auto: a widget inside Jupyter and Colab (one updating bar, not a stream of \r chunks),
# the plain text bar everywhere else, so the command line's output is unchanged.
import tqdm.auto
import tqdm.contrib

from jaxmodels import config as config_lib
from jaxmodels.errors import ConfigError, RunStopped, UserError
from jaxmodels.accounting import results
from jaxmodels.orchestration import workers as workers_lib
from jaxmodels.training import loop

Value = int | float | bool | str | None | tuple
State = Literal["new", "done", "resume", "changed"]
Status = Literal["trained", "skipped", "failed", "stopped"]

MAX_NAME = 64  # characters of a run folder name; longer ones are cut and given a hash


# ---------------------------------------------------------------------------------------------
# Declaring a sweep


@dataclasses.dataclass(frozen=True)
class Sweep:
    """What to run: one experiment file, overrides shared by every run, one dict per run."""

    config: str  # experiment file defining get_config(tiny=False); relative to the sweep file
    runs: tuple[Mapping[str, Value], ...] = ({},)
    base: Mapping[str, Value] = dataclasses.field(default_factory=dict)
    tiny: bool = False  # the experiment file's tiny variant

    def __post_init__(self):
        if not isinstance(self.config, (str, os.PathLike)):
            raise ConfigError(f"Sweep(config={self.config!r}) must be the path of an experiment file, e.g. config='../configs/mlp_mnist.py'")
        if isinstance(self.runs, Mapping) or not isinstance(self.runs, Sequence):
            raise ConfigError(f"Sweep(runs=...) must be a list of dicts (one per run), got {type(self.runs).__name__}: wrap it in [...] or use grid({{...}})")
        for i, run in enumerate(self.runs):
            _check_overrides(run, f"Sweep run {i}")
        _check_overrides(self.base, "Sweep(base=...)")
        if not self.runs:
            raise ConfigError("Sweep(runs=[]) has no runs: list at least one dict of overrides ({} runs the config as it is)")
        object.__setattr__(self, "runs", tuple(dict(r) for r in self.runs))
        object.__setattr__(self, "base", dict(self.base))


def _check_overrides(values, where: str) -> None:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where} is a {type(values).__name__}, not a dict of overrides: write {{'train.seed': 0}}")
    for key in values:
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{where} has the key {key!r}: keys are dotted config names such as 'model.hidden'")


def _axes(axes: Mapping[str, Sequence[Value]], what: str) -> list[tuple[str, list]]:
    if not isinstance(axes, Mapping):
        raise ConfigError(f"{what}() takes a dict of key -> list of values, got {type(axes).__name__}")
    out = []
    for key, values in axes.items():
        # A string or a tuple is one value here, not a list of them (tuples are values of
        # tuple fields such as model.hidden).
        if isinstance(values, (str, bytes, tuple)) or not isinstance(values, Sequence):
            raise ConfigError(f"{what}() axis '{key}' needs a list of values, got {values!r}: write '{key}': [{values!r}, ...]")
        if not values:
            raise ConfigError(f"{what}() axis '{key}' has no values: give it at least one")
        out.append((key, list(values)))
    return out


def grid(axes: Mapping[str, Sequence[Value]]) -> list[dict[str, Value]]:
    """Every combination of the axes' values (the last key varies fastest), one dict each."""
    pairs = _axes(axes, "grid")
    keys = [k for k, _ in pairs]
    return [dict(zip(keys, combo)) for combo in itertools.product(*(v for _, v in pairs))]


def zip_runs(axes: Mapping[str, Sequence[Value]]) -> list[dict[str, Value]]:
    """Runs that pair the i-th values of every axis (e.g. a width with its learning rate)."""
    pairs = _axes(axes, "zip_runs")
    lengths = {k: len(v) for k, v in pairs}
    if len(set(lengths.values())) > 1:
        raise ConfigError(f"zip_runs() axes differ in length ({', '.join(f'{k}: {n}' for k, n in lengths.items())}): give every axis the same number of values")
    keys = [k for k, _ in pairs]
    return [dict(zip(keys, combo)) for combo in zip(*(v for _, v in pairs))]


def load(path: str | os.PathLike, *, tiny: bool = False) -> Sweep:
    """Runs a sweep file and returns its `get_sweep(tiny=...)`; problems are one-line errors."""
    path = pathlib.Path(path)
    try:
        sweep = config_lib.run_file(path, "get_sweep", kind="sweep",
                                    example="experiments/sweeps/mlp_width_digits.py", tiny=tiny,
                                    returns="a jaxmodels Sweep")
    except ConfigError as e:
        # Errors of the file itself already name it; those raised by Sweep(...) get its name.
        message = str(e)
        raise ConfigError(message if str(path) in message else f"sweep file {str(path)!r}: {message}") from None
    if not isinstance(sweep, Sweep):
        raise ConfigError(f"get_sweep() in {str(path)!r} returned {type(sweep).__name__}, expected jaxmodels.orchestration.sweep.Sweep")
    return sweep


# ---------------------------------------------------------------------------------------------
# Resolving runs


@dataclasses.dataclass(frozen=True)
class Run:
    name: str  # the folder name under the sweep's workdir
    values: dict  # this run's own overrides, typed (the columns of sweep.csv)
    overrides: tuple[str, ...]  # base then own, as KEY=VALUE (what `jaxmodels train` takes)
    config: config_lib.Config  # resolved and validated, step bar off
    workdir: pathlib.Path
    config_file: pathlib.Path  # the experiment file it came from
    tiny: bool  # ... and whether its tiny variant


def _override_text(key: str, value: Value, where: str) -> str:
    """`value` as the text the KEY=VALUE parser reads back to the same value."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return repr(float(value))  # repr round-trips a float exactly
    if isinstance(value, str):
        return value
    if isinstance(value, (tuple, list)):
        parts = []
        for v in value:
            if isinstance(v, (tuple, list)) or (isinstance(v, str) and "," in v):
                raise ConfigError(f"{where}: {key}={value!r} nests a tuple or a comma: tuple values hold plain numbers or words")
            parts.append(_override_text(key, v, where))
        return "(" + ",".join(parts) + ("," if len(parts) == 1 else "") + ")"
    raise ConfigError(f"{where}: {key}={value!r} is a {type(value).__name__}: sweep values are int, float, bool, str, None or tuples of them")


def _name_text(value: Value) -> str:
    if isinstance(value, (tuple, list)):
        return "-".join(_name_text(v) for v in value) or "empty"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    return str(value)


def _digest(values: dict) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:8]


def run_names(runs: Sequence[Mapping[str, Value]]) -> list[str]:
    """Readable, deterministic, distinct folder names: `key=value` pairs of each run's own
    values, keys shortened to their last part unless two keys share it ("base": no values)."""
    keys = list(dict.fromkeys(k for r in runs for k in r))
    last = [k.rsplit(".", 1)[-1] for k in keys]
    short = {k: (p if last.count(p) == 1 else k) for k, p in zip(keys, last)}
    names = []
    for r in runs:
        name = ",".join(f"{short[k]}={_name_text(v)}" for k, v in r.items()) or "base"
        name = re.sub(r"[^A-Za-z0-9._=,+-]", "_", name)  # safe as a folder name everywhere
        if len(name) > MAX_NAME:
            name = f"{name[:MAX_NAME - 9]}-{_digest(dict(r))}"
        names.append(name)
    # Different values can still meet (cut names, replaced characters): the hash tells them apart.
    clashes = {n for n in names if names.count(n) > 1}
    return [f"{n}-{_digest(dict(r))}" if n in clashes else n for n, r in zip(names, runs)]


def resolve(sweep: Sweep, *, root: str | os.PathLike, workdir: str | os.PathLike) -> list[Run]:
    """Every run's validated config, before anything trains. `root` is the folder the sweep's
    config path is relative to (the sweep file's)."""
    config_path = pathlib.Path(root) / sweep.config
    base_config = config_lib.load(config_path, tiny=sweep.tiny)
    names = run_names(sweep.runs)
    runs, seen = [], {}
    for i, (name, values) in enumerate(zip(names, sweep.runs)):
        where = f"sweep run {i} ({name})"
        texts = [f"{k}={_override_text(k, v, where)}" for k, v in (*sweep.base.items(), *values.items())]
        try:
            config = config_lib.apply_overrides(base_config, texts)
        except ConfigError as e:
            raise ConfigError(f"{_blame(base_config, texts[:len(sweep.base)], e) or where}: {e}") from None
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, progress=False))
        digest = results.config_hash(config)
        if digest in seen:
            raise ConfigError(f"{where} trains the same config as run {seen[digest]}: remove one of them")
        seen[digest] = f"{i} ({name})"
        runs.append(Run(name, dict(values), tuple(texts), config, pathlib.Path(workdir) / name,
                        config_path, sweep.tiny))
    return runs


def _blame(base_config: config_lib.Config, base_texts: list[str], error: ConfigError) -> str | None:
    """"sweep base" when the shared overrides alone raise `error` (so every run would)."""
    try:
        config_lib.apply_overrides(base_config, base_texts)
    except ConfigError as e:
        return "sweep base" if str(e) == str(error) else None
    return None


def _stored_config(workdir: pathlib.Path) -> config_lib.Config | None:
    try:
        return config_lib.from_dict(json.loads((workdir / "config.json").read_text()))
    except (OSError, ValueError, KeyError, TypeError, ConfigError):
        return None


def _same_config(requested: config_lib.Config, stored: config_lib.Config) -> bool:
    # The loop fills model.vocab_size=None from the tokenizer before writing config.json.
    model = requested.model
    if (getattr(model, "vocab_size", 0) is None and type(stored.model) is type(model)):
        requested = dataclasses.replace(
            requested, model=dataclasses.replace(model, vocab_size=stored.model.vocab_size))
    return results.config_hash(requested) == results.config_hash(stored)


def state(run: Run) -> State:
    """What the run's workdir holds (see the module docstring)."""
    if not (run.workdir / "config.json").exists():
        return "new"
    stored = _stored_config(run.workdir)
    if stored is None or not _same_config(run.config, stored):
        return "changed"
    if not (run.workdir / "summary.json").is_file():
        return "resume"
    # Finished, but killed before its results row (or its table was not writable then): a
    # relaunch only evaluates it again and adds the row.
    return "done" if _has_row(run, stored) else "resume"


def _has_row(run: Run, stored: config_lib.Config) -> bool:
    table = run.workdir.parent / results.TABLE_NAME
    try:
        rows = results.read(table, warn=lambda message: None)
    except UserError:
        return True  # an unreadable table is reported by the sweep's own read; keep the run
    key = (run.workdir.name, results.config_hash(stored))
    return any(results.identity(r) == key for r in rows)


def plan(path: str | os.PathLike, workdir: str | os.PathLike | None = None, *,
         tiny: bool = False) -> list[tuple[Run, State]]:
    """The sweep file's runs and what each workdir holds; nothing is created."""
    path = pathlib.Path(path)
    workdir = pathlib.Path(workdir) if workdir is not None else pathlib.Path("runs") / path.stem
    runs = resolve(load(path, tiny=tiny), root=path.parent, workdir=workdir)
    return [(run, state(run)) for run in runs]


def command(run: Run) -> str:
    """The `jaxmodels train` command that trains this one run by hand."""
    relative = os.path.relpath(run.config_file)
    config_file = str(run.config_file.absolute()) if relative.startswith("..") else relative
    parts = ["jaxmodels", "train", config_file,
             *(["--tiny"] if run.tiny else []), *run.overrides, "--workdir", str(run.workdir)]
    return " ".join(shlex.quote(p) for p in parts)


def format_plan(planned: list[tuple[Run, State]]) -> str:
    """The --dry-run listing: each run, what its workdir holds, and its own train command."""
    width = max(len(r.name) for r, _ in planned)
    lines = [f"{len(planned)} runs ({sum(s == 'done' for _, s in planned)} done):"]
    lines += [f"  {r.name:<{width}}  {s:<7}  {command(r)}" for r, s in planned]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Running


@dataclasses.dataclass(frozen=True)
class Outcome:
    run: Run
    status: Status
    summary: dict | None = None  # summary.json of a trained or skipped run
    error: str | None = None  # one line, for a failed run


def _one_line(e: BaseException) -> str:
    text = str(e) if isinstance(e, (UserError, RunStopped)) else f"{type(e).__name__}: {e}"
    return (text.strip().splitlines() or [type(e).__name__])[0][:500]


def _move_aside(run: Run) -> pathlib.Path:
    stored = _stored_config(run.workdir)
    tag = results.config_hash(stored) if stored is not None else "unknown"
    target = run.workdir.with_name(f"{run.name}.replaced-{tag}")
    n = 1
    while target.exists():
        n += 1
        target = run.workdir.with_name(f"{run.name}.replaced-{tag}-{n}")
    run.workdir.rename(target)
    return target


def _read_summary(run: Run) -> dict | None:
    try:
        return json.loads((run.workdir / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def _train_here(run: Run, log_dir: pathlib.Path, bar_file) -> Outcome:
    # The loop prints to sys.stderr; routing that through tqdm keeps the sweep's bar intact.
    try:
        with contextlib.redirect_stderr(tqdm.contrib.DummyTqdmFile(bar_file)):
            summary = loop.train(run.config, run.workdir)
    except RunStopped as e:
        # A signal (SIGTERM, Ctrl-C) stops the sweep, not just this run: its checkpoint is
        # saved and a relaunch resumes it. A non-finite loss (exit 3) fails this run only,
        # as it does with --workers N.
        if e.exit_code >= 128:
            raise
        return Outcome(run, "failed", error=_one_line(e))
    except Exception as e:  # noqa: BLE001 - one failed run must not stop the others
        if not isinstance(e, UserError):
            log_dir.mkdir(exist_ok=True)
            (log_dir / f"{run.name}.log").write_text(traceback.format_exc())
        return Outcome(run, "failed", error=_one_line(e))
    return Outcome(run, "trained", summary=summary)


def _train_in_worker(pool: workers_lib.Pool, run: Run) -> Outcome | None:
    finished = pool.run(run.name, run.workdir, run.config)
    if finished.returncode is None and finished.error is None:
        return None
    if finished.returncode == 0:
        return Outcome(run, "trained", summary=_read_summary(run))
    if pool.stopping is not None and finished.returncode is not None and (
            finished.returncode >= 128 or finished.returncode < 0):
        return Outcome(run, "stopped", error=f"stopped by {signal.Signals(pool.stopping).name}")
    return Outcome(run, "failed", error=workers_lib.error_line(finished))


def run_sweep(path: str | os.PathLike, workdir: str | os.PathLike | None = None, *,
              tiny: bool = False, workers: int = 1) -> list[Outcome]:
    """Trains every run of the sweep file that is not done; returns one Outcome per run (in the
    file's order), prints the summary table and writes DIR/sweep.csv."""
    if workers < 1:
        raise UserError(f"--workers {workers} must be at least 1: pass 1 to run one after another")
    path = pathlib.Path(path)
    workdir = pathlib.Path(workdir) if workdir is not None else pathlib.Path("runs") / path.stem
    planned = plan(path, workdir, tiny=tiny)  # every config is valid before anything is created
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"sweep workdir {str(workdir)!r} cannot be created ({e.strerror}): pass --workdir with a folder you can write to") from None
    log_dir = workdir / "logs"
    if workers > 1:
        log_dir.mkdir(exist_ok=True)

    outcomes: dict[str, Outcome] = {}
    todo = []
    for run, st in planned:
        if st == "done":
            outcomes[run.name] = Outcome(run, "skipped", summary=_read_summary(run))
            continue
        if st == "changed":
            moved = _move_aside(run)
            print(f"{run.name}: its config changed; the old run is now {moved}", file=sys.stderr)
        todo.append(run)

    bar_file = sys.stderr
    bar = tqdm.auto.tqdm(total=len(planned), initial=len(outcomes), unit="run", desc="sweep",
                         dynamic_ncols=True, file=bar_file)

    def report(outcome: Outcome | None) -> None:
        if outcome is None:  # never started: the sweep is stopping
            return
        outcomes[outcome.run.name] = outcome
        if outcome.status == "failed":
            bar.write(f"{outcome.run.name}: failed: {outcome.error}", file=bar_file)
        bar.update(1)

    try:
        if workers == 1:
            for run in todo:
                report(_train_here(run, log_dir, bar_file))
        else:
            pool = workers_lib.Pool(workers, log_dir)
            with (workers_lib.forwarding_signals(pool),
                  concurrent.futures.ThreadPoolExecutor(workers) as executor):
                futures = [executor.submit(_train_in_worker, pool, run) for run in todo]
                try:
                    for future in concurrent.futures.as_completed(futures):
                        report(future.result())
                except BaseException:
                    pool.forward(signal.SIGTERM)  # workers save their checkpoints and stop
                    executor.shutdown(wait=False, cancel_futures=True)
                    pool.wait_all()
                    raise
            if pool.stopping is not None:
                stopped = [run.name for run, _ in planned
                           if run.name in outcomes and outcomes[run.name].status == "stopped"]
                name = signal.Signals(pool.stopping).name
                raise RunStopped(f"sweep stopped by {name}: {len(stopped)} running run(s) saved "
                                 f"their checkpoints ({', '.join(stopped) or 'none'}); run the "
                                 f"same command to resume", exit_code=128 + pool.stopping)
    finally:
        bar.close()
    ordered = [outcomes[run.name] for run, _ in planned]
    print(format_table(ordered))
    csv_path = results.to_csv(sweep_rows(ordered, workdir), workdir / "sweep.csv")
    print(f"wrote {csv_path}; every run's row is in {workdir / results.TABLE_NAME}")
    table = workdir / results.TABLE_NAME
    for line in results.audit(results.read(table, warn=_warn), table):
        _warn(line)
    return ordered


def _warn(message: str) -> None:
    print(f"jaxmodels: warning: {message}", file=sys.stderr)


def sweep_rows(outcomes: list[Outcome], workdir: pathlib.Path) -> list[dict]:
    """One row per run for sweep.csv: name, status, error, swept values, then the run's latest
    row of the results table (or its summary's numbers, for a run finished before the table)."""
    table = results.read(pathlib.Path(workdir) / results.TABLE_NAME, warn=_warn)
    swept = list(dict.fromkeys(k for o in outcomes for k in o.run.values))
    rows = []
    for o in outcomes:
        row = {"run": o.run.name, "status": o.status, "error": o.error,
               **{k: o.run.values.get(k) for k in swept}}
        stored = _stored_config(o.run.workdir) if o.status != "failed" else None
        digest = results.config_hash(stored) if stored is not None else None
        # By the run's identity beside the table (folder name and config hash), not the absolute
        # `workdir` a row was written with: a sweep folder moved or copied keeps its matches.
        key = (o.run.workdir.name, digest)
        matches = [r for r in table if results.identity(r) == key]
        if matches:
            row |= {k: v for k, v in matches[-1].items() if k not in row and k != "config"}
        elif o.summary is not None:
            row |= {k: o.summary.get(k) for k in ("eval_loss", "eval_accuracy", "train_loss",
                                                  "wall_time_s", "params")}
        rows.append(row)
    return rows


def format_table(outcomes: list[Outcome]) -> str:
    """The summary printed at the end: one line per run, then the failed runs' errors."""

    def cell(value, fmt: str, width: int) -> str:
        return f"{'-' if value is None else format(value, fmt):>{width}}"

    width = max([len(o.run.name) for o in outcomes] + [3])
    lines = [f"{'run':<{width}}  {'status':<7}  {'eval_loss':>9}  {'eval_acc':>8}  {'wall_s':>8}  {'params':>11}"]
    for o in outcomes:
        s = o.summary or {}
        acc = s.get("eval_accuracy")
        lines.append(f"{o.run.name:<{width}}  {o.status:<7}  {cell(s.get('eval_loss'), '.4f', 9)}  "
                     f"{cell(None if acc is None else 100 * acc, '.2f', 7)}{'%' if acc is not None else ' '}  "
                     f"{cell(s.get('wall_time_s'), '.1f', 8)}  {cell(s.get('params'), ',d', 11)}")
    lines += [f"failed: {o.run.name}: {o.error}" for o in outcomes if o.status == "failed"]
    return "\n".join(lines)


# Kept importable here for older callers; the worker lives in workers.py.
_cpu_slots = workers_lib.cpu_slots

if __name__ == "__main__":
    sys.exit(workers_lib.worker_main(sys.argv[1:]))
