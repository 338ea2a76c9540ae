"""Scaling-law fits to a table of training runs: `python -m jaxmodels.scaling.fit TABLE`.

  python -m jaxmodels.scaling.fit TABLE [--out FIT.json] [--plots DIR] [--bootstrap N] [--seed S]
                                 [--params-column NAME] [--tokens-column NAME] [--loss-column NAME]

TABLE is any CSV (header row) or JSONL file (one object per line) with columns `params` (N),
`tokens` (D) and `loss` (L), or others named by the --*-column options (the results table's
`non_embedding_params`, say); `flops` (C) is optional and defaults to 6 N D (also when the
column is there but empty in every row, as in a results table without FLOP counts).

Laws fitted (Hoffmann et al. 2022, "Chinchilla", approaches 3 and 2):
  joint     L(N, D) = E + A / N^alpha + B / D^beta
  single    L(N) = E + A / N^alpha   and   L(D) = E + B / D^beta
  IsoFLOP   per compute budget a parabola of L against log N; its minimum is N_opt(C), with
            D_opt = C / (6 N_opt); then N_opt ~ C^a and D_opt ~ C^b by a line in log-log space.

Method and parametrisation. The power laws are fitted in log space, as Chinchilla does:
    log L_hat = logsumexp(e, a_1 - alpha_1 x_1, ..., a_K - alpha_K x_K),   E = exp(e),
minimising the mean Huber loss (delta 1e-3) of log L_hat - log L with 50 steps of L-BFGS
(optax.lbfgs, backtracking line search) from a small grid of starts, keeping the best
objective. The grid is solved in one vmapped, jitted call, so bootstrap resamples (same row
count, hence same shapes) reuse the compiled code. To keep float32 well conditioned, x_i = log X_i - log X_i_ref is centred on
the geometric mean X_i_ref of the data: then a_i is the log of the term's size at a typical
run (a few tenths of a nat, not ~log 400) and is nearly uncorrelated with alpha_i. Converting
back, A = exp(a + alpha log N_ref), is done in float64 numpy. Nothing here sets jax.config:
with x64 enabled by the caller the same code runs in float64.

Array names carry their shapes: R rows (runs), K power-law terms, S starts, P = 1 + 2K
parameters per start.
"""

import argparse
import csv
import functools
import itertools
import json
import math
import pathlib
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxmodels.accounting import results
from jaxmodels.errors import UserError

REQUIRED = ("params", "tokens", "loss")
HUBER_DELTA = 1e-3  # Chinchilla's value: residuals beyond 0.1 % count linearly, so outliers do not dominate
LBFGS_STEPS = 50


# ---------------------------------------------------------------------------------------------
# Reading tables

def _to_float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=4)


def _read_records(path: pathlib.Path, warn=_warn) -> tuple[list[dict], set[str]]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read table {path} ({getattr(e, 'strerror', None) or e}): pass a readable CSV or JSONL file") from None
    lines = [line for line in text.splitlines() if line.strip()]
    # JSONL by extension or, for an unknown extension, by the first line being a JSON object.
    is_jsonl = path.suffix.lower() in (".jsonl", ".ndjson", ".json") or (
        path.suffix.lower() != ".csv" and bool(lines) and lines[0].lstrip().startswith("{"))
    if is_jsonl:
        records, torn = [], []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                if line.lstrip().startswith("{"):  # a row cut short by a killed writer
                    torn.append((number, e.msg))
                    continue
                raise UserError(f"table {path} line {number} is not JSON ({e.msg}): write one JSON object per line") from None
            if not isinstance(record, dict):
                raise UserError(f"table {path} line {number} is not a JSON object: write one object per line, e.g. {{\"params\": 1e8, \"tokens\": 2e9, \"loss\": 3.1}}")
            records.append({str(k).strip().lower(): v for k, v in record.items()})
        if torn and not records:  # nothing but broken lines: not a table with a torn row
            number, msg = torn[0]
            raise UserError(f"table {path} line {number} is not JSON ({msg}): write one JSON object per line")
        if torn:
            warn(results.torn_message(path, [n for n, _ in torn]))
        # A results table (jaxmodels' own): runs with several rows, or finished without one.
        if records and all("config_hash" in r and "run" in r for r in records):
            for message in results.audit(records, path):
                warn(message)
        columns = set().union(*(r.keys() for r in records)) if records else set()
        return records, columns
    reader = csv.DictReader(lines)
    try:
        records = [{(k or "").strip().lower(): v for k, v in row.items()} for row in reader]
        columns = {(k or "").strip().lower() for k in (reader.fieldnames or ())}
    except csv.Error as e:
        raise UserError(f"table {path} is not valid CSV ({e}): write a header row then one row per run") from None
    return records, columns


def _read_rows(path, columns: dict[str, str] | None = None,
               warn=_warn) -> tuple[dict[str, np.ndarray], int]:
    """(table, number of rows dropped for non-finite or non-positive values); see read_table."""
    path = pathlib.Path(path)
    records, present = _read_records(path, warn)
    source = {role: (columns or {}).get(role, role).strip().lower() for role in REQUIRED}
    missing = [source[c] for c in REQUIRED if source[c] not in present]
    if missing:
        raise UserError(f"table {path} has no column {', '.join(missing)}: it needs columns params, tokens and loss (flops optional), or name others with --params-column, --tokens-column, --loss-column")
    if not records:
        raise UserError(f"table {path} has no rows: add one row per training run")
    has_flops = "flops" in present and any(np.isfinite(_to_float(r.get("flops"))) for r in records)
    names = REQUIRED + (("flops",) if has_flops else ())
    source["flops"] = "flops"
    values = np.array([[_to_float(r.get(source[c])) for c in names] for r in records], dtype=np.float64)
    keep = np.all(np.isfinite(values) & (values > 0), axis=1)
    if not keep.any():
        raise UserError(f"table {path} has no row with finite positive {', '.join(source[c] for c in REQUIRED)}: check the values")
    table = {c: values[keep, i] for i, c in enumerate(names)}
    if not has_flops:
        table["flops"] = 6.0 * table["params"] * table["tokens"]
    return table, int((~keep).sum())


def read_table(path, columns: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    """Columns params, tokens, loss, flops (float64, one entry per run) of a CSV or JSONL table.

    `columns` maps any of the roles params, tokens, loss to another column of the table (e.g.
    {"params": "non_embedding_params"}); the result keeps the role names. Column names are
    matched case-insensitively; `flops` defaults to 6 * params * tokens. Rows
    with a missing, non-numeric, non-finite or non-positive value are dropped with a warning
    giving the count. A missing column, an empty table or an unreadable file is a UserError.
    """
    table, dropped = _read_rows(path, columns)
    if dropped:
        warnings.warn(f"{path}: dropped {dropped} row(s) with a missing, non-finite or non-positive value", stacklevel=2)
    return table


# ---------------------------------------------------------------------------------------------
# Power laws in LSE form

def _log_prediction(theta_P, x_KxR):
    """log L_hat for theta = [e, a_1..a_K, alpha_1..alpha_K] and centred log sizes x (K x R)."""
    k = x_KxR.shape[0]
    e, a_K, alpha_K = theta_P[0], theta_P[1:1 + k], theta_P[1 + k:]
    terms_KxR = a_K[:, None] - alpha_K[:, None] * x_KxR
    floor_1xR = jnp.full((1, x_KxR.shape[1]), e)
    return jax.nn.logsumexp(jnp.concatenate([floor_1xR, terms_KxR], axis=0), axis=0)


def _objective(theta_P, x_KxR, logl_R):
    r = _log_prediction(theta_P, x_KxR) - logl_R
    # Huber divided by delta: ~|r| for 1 % noise, so the values stay far above float32's
    # resolution and the line search can still compare them.
    huber = jnp.where(jnp.abs(r) <= HUBER_DELTA, 0.5 * r**2 / HUBER_DELTA, jnp.abs(r) - 0.5 * HUBER_DELTA)
    return jnp.mean(huber)


@functools.partial(jax.jit, static_argnames=("steps",))
def _solve(theta0_SxP, x_KxR, logl_R, steps: int = LBFGS_STEPS):
    """L-BFGS from each of S starts at once; returns (theta S x P, objective S)."""
    objective = functools.partial(_objective, x_KxR=x_KxR, logl_R=logl_R)
    # Backtracking (Armijo) rather than optax's default zoom line search: under vmap, the zoom
    # search's while loop ran for minutes without ending on some bootstrap resamples (optax
    # 0.2.8), whereas this one stops after max_backtracking_steps.
    opt = optax.lbfgs(linesearch=optax.scale_by_backtracking_linesearch(
        max_backtracking_steps=30, store_grad=True))
    value_and_grad = optax.value_and_grad_from_state(objective)

    def one_start(theta_P):
        def step(_, carry):
            theta, state = carry
            value, grad = value_and_grad(theta, state=state)
            updates, state = opt.update(grad, state, theta, value=value, grad=grad, value_fn=objective)
            return optax.apply_updates(theta, updates), state

        theta_P, _ = jax.lax.fori_loop(0, steps, step, (theta_P, opt.init(theta_P)))
        return theta_P, objective(theta_P)

    return jax.vmap(one_start)(theta0_SxP)


def _starts(loss: np.ndarray, k: int) -> np.ndarray:
    """A small grid of starts (S x (1 + 2K)), in units of the data rather than absolute numbers.

    The floor E is a fraction of the smallest loss; each term's size at the reference run a
    fraction of the median loss; the exponents span the range seen in language-model sweeps.
    """
    e_levels = np.log(np.min(loss) * np.array([0.1, 0.5, 0.9]))
    a_levels = np.log(np.median(loss) * np.array([0.05, 0.3]))
    alpha_levels = np.array([0.15, 0.6])
    grid = itertools.product(e_levels, *([a_levels] * k), *([alpha_levels] * k))
    return np.array(list(grid))


def _fit_power_law(sizes_KxR: np.ndarray, loss_R: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, float]:
    """(E, coefficients K, exponents K, objective) of L = E + sum_i C_i / X_i^p_i."""
    log_x = np.log(sizes_KxR)
    log_ref_K = log_x.mean(axis=1)
    dtype = jnp.zeros(()).dtype  # float32, or float64 where the caller enabled x64
    theta_SxP, obj_S = _solve(jnp.asarray(_starts(loss_R, len(sizes_KxR)), dtype),
                              jnp.asarray(log_x - log_ref_K[:, None], dtype),
                              jnp.asarray(np.log(loss_R), dtype))
    obj_S = np.where(np.isfinite(obj_S), np.asarray(obj_S, np.float64), np.inf)
    best = int(np.argmin(obj_S))
    if not np.isfinite(obj_S[best]):
        raise UserError("every start of the power-law fit diverged: check the table for outliers or a loss that does not fall with size")
    theta = np.asarray(theta_SxP[best], np.float64)
    k = len(sizes_KxR)
    e, a_K, alpha_K = theta[0], theta[1:1 + k], theta[1 + k:]
    return math.exp(e), np.exp(a_K + alpha_K * log_ref_K), alpha_K, float(obj_S[best])


def _check_rows(loss, needed: int, what: str):
    if len(loss) < needed:
        raise UserError(f"the {what} fit needs at least {needed} runs, the table has {len(loss)}: add runs")


def fit_joint(N, D, L) -> dict:
    """L(N, D) = E + A/N^alpha + B/D^beta; also the compute-optimal allocation it implies.

    With C = 6 N D, minimising L at fixed C gives N_opt = G (C/6)^a and D_opt = (C/6)^b / G with
    a = beta / (alpha + beta), b = alpha / (alpha + beta), G = (alpha A / (beta B))^(1/(alpha+beta)).
    """
    N, D, L = (np.asarray(v, np.float64) for v in (N, D, L))
    _check_rows(L, 6, "joint L(N, D)")
    E, coef, expo, objective = _fit_power_law(np.stack([N, D]), L)
    (A, B), (alpha, beta) = coef, expo
    result = {"E": E, "A": float(A), "alpha": float(alpha), "B": float(B), "beta": float(beta)}
    if alpha > 0 and beta > 0:
        result |= {"a": float(beta / (alpha + beta)), "b": float(alpha / (alpha + beta)),
                   "G": float((alpha * A / (beta * B)) ** (1 / (alpha + beta)))}
    return result | {"objective": objective, "n_rows": len(L)}


def fit_single(X, L, coef: str = "A", exponent: str = "alpha") -> dict:
    """L(X) = E + coef / X^exponent, e.g. L(N) (the default names) or L(D) with "B", "beta"."""
    X, L = np.asarray(X, np.float64), np.asarray(L, np.float64)
    _check_rows(L, 4, f"L = E + {coef}/X^{exponent}")
    E, c, p, objective = _fit_power_law(X[None, :], L)
    return {"E": E, coef: float(c[0]), exponent: float(p[0]), "objective": objective, "n_rows": len(L)}


def _budgets(log_c: np.ndarray, width: float) -> list[np.ndarray]:
    """Row indices grouped by compute budget: sorted by log10 C, a new group starts once a value
    lies more than `width` decades above the group's first, so a group never spans more than
    `width` even when budgets are continuous."""
    order = np.argsort(log_c)
    groups, start = [[order[0]]], log_c[order[0]]
    for i in order[1:]:
        if log_c[i] - start > width:
            groups.append([])
            start = log_c[i]
        groups[-1].append(i)
    return [np.array(g) for g in groups]


def fit_isoflop(N, D, L, C=None, bucket_width: float = 0.05, min_sizes: int = 3) -> dict:
    """Chinchilla approach 2: a parabola of L against log N per compute budget, then power laws.

    Rows are grouped by C (default 6 N D) within `bucket_width` decades. A budget is used when it
    has >= `min_sizes` distinct N, the parabola opens upwards and its minimum lies inside the
    sampled N (an extrapolated minimum would be a guess). Returns a and b in N_opt = kN C^a,
    D_opt = kD C^b with D_opt = C / (6 N_opt), and each budget's parabola (coefficients of
    L against ln N, highest power first), minimum and row indices.
    """
    N, D, L = (np.asarray(v, np.float64) for v in (N, D, L))
    C = 6.0 * N * D if C is None else np.asarray(C, np.float64)
    budgets = []
    for idx in _budgets(np.log10(C), bucket_width):
        log_n = np.log(N[idx])
        if len(np.unique(N[idx])) < min_sizes:
            continue
        c2, c1, c0 = np.polyfit(log_n, L[idx], 2)
        if c2 <= 0:
            continue
        x_min = -c1 / (2 * c2)
        if not log_n.min() <= x_min <= log_n.max():
            continue
        c_budget = float(np.exp(np.log(C[idx]).mean()))
        n_opt = float(np.exp(x_min))
        budgets.append({"C": c_budget, "N_opt": n_opt, "D_opt": c_budget / (6 * n_opt),
                        "loss_opt": float(np.polyval([c2, c1, c0], x_min)),
                        "parabola": [float(c2), float(c1), float(c0)], "rows": sorted(int(i) for i in idx)})
    if len(budgets) < 2:
        raise UserError(f"IsoFLOP fit found {len(budgets)} usable compute budget(s), it needs 2: "
                        f"run >= {min_sizes} model sizes per budget that bracket the loss minimum")
    log_c = np.log([b["C"] for b in budgets])
    a, log_kn = np.polyfit(log_c, np.log([b["N_opt"] for b in budgets]), 1)
    b, log_kd = np.polyfit(log_c, np.log([b["D_opt"] for b in budgets]), 1)
    return {"a": float(a), "b": float(b), "kN": float(np.exp(log_kn)), "kD": float(np.exp(log_kd)),
            "budgets": budgets, "n_rows": len(L)}


# ---------------------------------------------------------------------------------------------
# Bootstrap

def bootstrap(fit_fn, rows: dict[str, np.ndarray], n: int = 100, seed: int = 0,
              level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile intervals of every scalar `fit_fn(rows)` returns, over `n` resamples of rows.

    `fit_fn` takes a dict of equal-length columns (like `read_table`'s). Each resample draws
    as many rows as the table has, with replacement, so the jitted solver sees the same shapes
    and compiles once. Resamples whose fit raises a UserError (an IsoFLOP budget left with too
    few sizes, say) are skipped; more than half skipped is a UserError.
    """
    rng = np.random.default_rng(seed)
    n_rows = len(next(iter(rows.values())))
    samples, failed = [], 0
    for _ in range(n):
        idx = rng.integers(0, n_rows, n_rows)
        try:
            samples.append(fit_fn({k: v[idx] for k, v in rows.items()}))
        except UserError:
            failed += 1
    if len(samples) < max(2, n / 2):
        raise UserError(f"bootstrap: {failed} of {n} resamples could not be fitted: add runs so that resampled tables stay fittable")
    if failed:
        warnings.warn(f"bootstrap: skipped {failed} of {n} resamples that could not be fitted", stacklevel=2)
    keys = [k for k, v in samples[0].items() if isinstance(v, float) and k != "objective"]
    tail = 100 * (1 - level) / 2
    intervals = {}
    for k in keys:
        values = np.array([s.get(k, math.nan) for s in samples], np.float64)
        lo, hi = np.nanpercentile(values, [tail, 100 - tail])
        intervals[k] = (float(lo), float(hi))
    return intervals


def joint_fn(rows):
    return fit_joint(rows["params"], rows["tokens"], rows["loss"])


def params_fn(rows):
    return fit_single(rows["params"], rows["loss"])


def tokens_fn(rows):
    return fit_single(rows["tokens"], rows["loss"], coef="B", exponent="beta")


def isoflop_fn(rows):
    return fit_isoflop(rows["params"], rows["tokens"], rows["loss"], rows["flops"])


# ---------------------------------------------------------------------------------------------
# Command line

def fit_table(table: dict[str, np.ndarray], n_bootstrap: int = 100, seed: int = 0) -> dict:
    """Every fit the table supports, with bootstrap intervals as `<key>_ci`; what main writes.

    The joint law needs >= 3 distinct N and >= 3 distinct D (else E and the constant term trade
    off freely); the single laws are fitted to every row, which estimates L(N) only when D is
    held fixed or large (and vice versa). Fits the table cannot support are recorded under
    `skipped` with the reason.
    """
    result = {"n_rows": len(table["loss"]), "skipped": {}}
    fits = {"joint": joint_fn, "L(N)": params_fn, "L(D)": tokens_fn, "isoflop": isoflop_fn}
    varies = {c: len(np.unique(table[c])) >= 3 for c in ("params", "tokens")}
    for name, fn in fits.items():
        if name == "joint" and not all(varies.values()):
            result["skipped"][name] = "needs >= 3 distinct params and >= 3 distinct tokens"
            continue
        if (name == "L(N)" and not varies["params"]) or (name == "L(D)" and not varies["tokens"]):
            result["skipped"][name] = "needs >= 3 distinct sizes"
            continue
        try:
            fit = fn(table)
        except UserError as e:
            result["skipped"][name] = str(e)
            continue
        if n_bootstrap:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    intervals = bootstrap(fn, table, n=n_bootstrap, seed=seed)
                except UserError:
                    intervals = {}
            for k in [k for k, v in fit.items() if isinstance(v, float) and k != "objective"]:
                fit[f"{k}_ci"] = list(intervals.get(k, (math.nan, math.nan)))
        result[name] = fit
    # The headline keys: the joint law when fitted, else whichever single law has them.
    for key in ("E", "A", "alpha", "B", "beta"):
        for name in ("joint", "L(N)", "L(D)"):
            if key in result.get(name, {}):
                result[key] = result[name][key]
                result[f"{key}_ci"] = result[name].get(f"{key}_ci", [math.nan, math.nan])
                break
        else:
            result[key], result[f"{key}_ci"] = None, None
    headline = ("E", "E_ci", "A", "A_ci", "alpha", "alpha_ci", "B", "B_ci", "beta", "beta_ci")
    return {k: result[k] for k in headline} | {k: v for k, v in result.items() if k not in headline}


def format_table(result: dict) -> str:
    """The fits as a plain-text table: law, parameter, value, 95 % interval."""
    lines = [f"{'law':<10} {'parameter':<10} {'value':>12}   95% interval"]
    for name in ("joint", "L(N)", "L(D)", "isoflop"):
        fit = result.get(name)
        if fit is None:
            lines.append(f"{name:<10} (skipped: {result['skipped'].get(name, '')})")
            continue
        for k, v in fit.items():
            if not isinstance(v, float) or k == "objective":
                continue
            ci = fit.get(f"{k}_ci")
            ci_text = f"[{ci[0]:.4g}, {ci[1]:.4g}]" if ci else ""
            lines.append(f"{name:<10} {k:<10} {v:>12.4g}   {ci_text}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxmodels fit", description=__doc__.split("\n")[0])
    parser.add_argument("table", help="CSV or JSONL with columns params, tokens, loss (flops optional)")
    parser.add_argument("--out", default=None, help="write the fit as JSON here")
    parser.add_argument("--plots", default=None, help="write PNG plots into this folder")
    parser.add_argument("--bootstrap", type=int, default=100, help="resamples for the intervals (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    for role in REQUIRED:
        parser.add_argument(f"--{role}-column", default=role, metavar="NAME",
                            help=f"the table's column holding {role} (default: {role})")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.bootstrap < 0:
            raise UserError(f"--bootstrap {args.bootstrap} is negative: pass 0 for no intervals or a count such as 100")
        columns = {role: getattr(args, f"{role}_column") for role in REQUIRED}
        table, dropped = _read_rows(
            args.table, columns,
            warn=lambda message: print(f"jaxmodels fit: warning: {message}", file=sys.stderr))
        print(f"{args.table}: {len(table['loss'])} runs" + (f", dropped {dropped} with a missing, non-finite or non-positive value" if dropped else ""))
        result = fit_table(table, n_bootstrap=args.bootstrap, seed=args.seed)
        result |= {"table": str(args.table), "dropped_rows": dropped, "bootstrap": args.bootstrap}
        print(format_table(result))
        if args.out:
            out = pathlib.Path(args.out)
            try:
                out.parent.mkdir(parents=True, exist_ok=True)
                # NaN (an interval no resample could give) is written as null: strict JSON.
                out.write_text(json.dumps(_nan_to_none(result), indent=2) + "\n")
            except OSError as e:
                raise UserError(f"cannot write {out} ({e.strerror}): pick a writable --out path") from None
            print(f"wrote {out}")
        if args.plots:
            from jaxmodels.scaling import plots

            for path in plots.plot_all(table, result, args.plots):
                print(f"wrote {path}")
    except UserError as e:
        if args.debug:
            raise
        print(f"jaxmodels fit: error: {e}", file=sys.stderr)
        return 2
    return 0


def _nan_to_none(value):
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


if __name__ == "__main__":
    sys.exit(main())
