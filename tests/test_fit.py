"""Scaling-law fits: recovery of a known law from noisy synthetic runs, table reading, the CLI.

Every synthetic table has 81 rows (a 9 x 9 grid, or 9 budgets x 9 sizes) so the jitted solver
compiles once per law shape for the whole file; compilation dominates the run time on CPU.
"""

import json
import warnings

import numpy as np
import pytest

from jaxmodels.errors import UserError
from jaxmodels.scaling import fit

# The law the runs are drawn from (close to Chinchilla's published fit).
E, A, ALPHA, B, BETA = 1.7, 400.0, 0.34, 410.0, 0.28
A_OPT = BETA / (ALPHA + BETA)  # N_opt ~ C^a for this law
NOISE = 0.01  # multiplicative, log-normal


def _law(N, D):
    return E + A / N**ALPHA + B / D**BETA


def _noisy(loss, seed):
    return loss * np.exp(NOISE * np.random.default_rng(seed).standard_normal(loss.shape))


def _grid_runs(seed=0):
    """N over 2 decades x D over 2 decades."""
    N, D = (g.ravel() for g in np.meshgrid(np.geomspace(1e7, 1e9, 9), np.geomspace(1e9, 1e11, 9)))
    return {"params": N, "tokens": D, "loss": _noisy(_law(N, D), seed), "flops": 6 * N * D}


def _isoflop_runs(seed=0):
    """9 budgets from 1e18 to 1e22 FLOPs, 9 sizes each spanning 0.6 decades either side of the
    law's true N_opt(C), as an IsoFLOP sweep would be laid out."""
    G = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA))
    N, D = [], []
    for C in np.geomspace(1e18, 1e22, 9):
        sizes = G * (C / 6) ** A_OPT * np.geomspace(10**-0.6, 10**0.6, 9)
        N.extend(sizes)
        D.extend(C / (6 * sizes))
    N, D = np.array(N), np.array(D)
    return {"params": N, "tokens": D, "loss": _noisy(_law(N, D), seed), "flops": 6 * N * D}


def test_joint_fit_recovers_the_known_law():
    runs = _grid_runs()
    result = fit.fit_joint(runs["params"], runs["tokens"], runs["loss"])
    # Tolerances are a few times the seed-to-seed spread of the estimates at 1 % noise.
    assert abs(result["alpha"] - ALPHA) < 0.04, result
    assert abs(result["beta"] - BETA) < 0.04, result
    assert abs(result["E"] - E) < 0.1, result
    assert abs(result["a"] - A_OPT) < 0.05, result
    assert result["a"] + result["b"] == pytest.approx(1.0)


def test_joint_fit_shrugs_off_a_diverged_run():
    # The Huber loss counts a residual beyond 0.1 % linearly: one run with a 50 % worse loss (a
    # diverged run left in the table) moves a least-squares fit, not this one.
    runs = _grid_runs()
    loss = runs["loss"].copy()
    loss[40] *= 1.5
    clean = fit.fit_joint(runs["params"], runs["tokens"], runs["loss"])
    dirty = fit.fit_joint(runs["params"], runs["tokens"], loss)
    # Measured: least squares (delta 10) moves E by 0.6 and the exponents by 0.07 and 0.1 here;
    # the Huber fit by 0.02 and 0.005.
    for key, tolerance in (("E", 0.05), ("alpha", 0.02), ("beta", 0.02)):
        assert abs(dirty[key] - clean[key]) < tolerance, (key, clean[key], dirty[key])


def test_joint_fit_of_noiseless_runs_is_exact():
    # Without noise the only error left is the optimiser's (float32, 50 L-BFGS steps).
    runs = _grid_runs()
    loss = _law(runs["params"], runs["tokens"])
    result = fit.fit_joint(runs["params"], runs["tokens"], loss)
    np.testing.assert_allclose([result["E"], result["alpha"], result["beta"]], [E, ALPHA, BETA], rtol=0.02)
    np.testing.assert_allclose([result["A"], result["B"]], [A, B], rtol=0.15)


def test_bootstrap_intervals_contain_the_truth_without_recompiling():
    runs = _grid_runs()
    fit.joint_fn(runs)
    compiled = fit._solve._cache_size()
    intervals = fit.bootstrap(fit.joint_fn, runs, n=30, seed=0)
    assert fit._solve._cache_size() == compiled  # every resample reused the compiled solver
    for key, truth in (("E", E), ("alpha", ALPHA), ("beta", BETA), ("A", A), ("B", B), ("a", A_OPT)):
        lo, hi = intervals[key]
        assert lo <= truth <= hi, (key, intervals[key])
    # Informative, not merely wide: 81 runs at 1 % noise pin the exponents to about +-0.05.
    assert intervals["alpha"][1] - intervals["alpha"][0] < 0.15, intervals["alpha"]
    assert intervals["beta"][1] - intervals["beta"][0] < 0.15, intervals["beta"]


def test_single_fit_recovers_alpha_when_data_are_plentiful():
    N = np.tile(np.geomspace(1e7, 1e9, 9), 9)
    D = np.full_like(N, 1e15)  # B / D^beta = 0.026: the floor, nearly constant
    result = fit.fit_single(N, _noisy(_law(N, D), seed=1))
    assert abs(result["alpha"] - ALPHA) < 0.03, result
    assert abs(result["E"] - (E + B / 1e15**BETA)) < 0.05, result


def test_single_fit_names_the_tokens_law():
    D = np.tile(np.geomspace(1e9, 1e11, 9), 9)
    N = np.full_like(D, 1e13)
    result = fit.fit_single(D, _noisy(_law(N, D), seed=2), coef="B", exponent="beta")
    assert abs(result["beta"] - BETA) < 0.03, result
    assert set(result) >= {"E", "B", "beta"}


def test_isoflop_recovers_the_compute_optimal_exponent():
    runs = _isoflop_runs()
    result = fit.fit_isoflop(runs["params"], runs["tokens"], runs["loss"])
    assert len(result["budgets"]) == 9
    # The parabola is only an approximation of the law along a budget, hence 0.03, not 0.01.
    assert abs(result["a"] - A_OPT) < 0.03, result["a"]
    assert result["a"] + result["b"] == pytest.approx(1.0)  # D_opt = C / (6 N_opt)
    assert all(len(b["rows"]) == 9 for b in result["budgets"])


def test_isoflop_without_enough_budgets_is_a_user_error():
    runs = _isoflop_runs()
    one_budget = slice(0, 9)
    with pytest.raises(UserError, match="needs 2"):
        fit.fit_isoflop(runs["params"][one_budget], runs["tokens"][one_budget], runs["loss"][one_budget])


def test_budgets_group_runs_within_the_width():
    log_c = np.array([18.0, 18.02, 18.04, 18.5, 18.52, 19.0])
    groups = fit._budgets(log_c, width=0.05)
    assert [sorted(g.tolist()) for g in groups] == [[0, 1, 2], [3, 4], [5]]
    # Continuous budgets are cut every `width` decades rather than chained into one group.
    continuous = np.arange(0, 1, 0.01)
    groups = fit._budgets(continuous, width=0.05)
    assert len(groups) > 10
    assert all(np.ptp(continuous[g]) <= 0.05 + 1e-12 for g in groups)


def test_csv_with_defaults_and_bad_rows(tmp_path):
    path = tmp_path / "runs.csv"
    path.write_text("Params,tokens,loss,note\n"
                    "1e8,2e9,3.1,a\n"
                    "2e8,4e9,2.9,b\n"
                    "3e8,,2.8,missing tokens\n"
                    "4e8,8e9,nan,nan loss\n"
                    "-5e8,1e10,2.7,negative\n"
                    "6e8,1.2e10,2.6,c\n")
    with pytest.warns(UserWarning, match="dropped 3 row"):
        table = fit.read_table(path)
    np.testing.assert_array_equal(table["params"], [1e8, 2e8, 6e8])
    np.testing.assert_array_equal(table["loss"], [3.1, 2.9, 2.6])
    np.testing.assert_allclose(table["flops"], 6 * table["params"] * table["tokens"])


def test_jsonl_with_flops_column(tmp_path):
    path = tmp_path / "runs.jsonl"
    lines = [{"params": 1e8, "tokens": 2e9, "loss": 3.1, "flops": 1.3e18, "lr": 3e-4},
             {"params": 2e8, "tokens": 4e9, "loss": 2.9, "flops": 5.0e18}]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing dropped, nothing to warn about
        table = fit.read_table(path)
    np.testing.assert_array_equal(table["flops"], [1.3e18, 5.0e18])
    np.testing.assert_array_equal(table["tokens"], [2e9, 4e9])


@pytest.mark.parametrize("name, text, match", [
    ("runs.csv", "params,loss\n1e8,3.1\n", r"runs\.csv has no column tokens"),
    ("runs.jsonl", '{"params": 1e8, "tokens": 2e9}\n', r"runs\.jsonl has no column loss"),
    ("runs.csv", "params,tokens,loss\n", r"runs\.csv has no rows"),
    ("runs.jsonl", '{"params": 1e8, "tokens": 2e9, "loss": 3\n', r"runs\.jsonl line 1 is not JSON"),
    ("runs.csv", None, r"cannot read table .*runs\.csv"),
])
def test_bad_tables_are_one_line_user_errors(tmp_path, name, text, match):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(UserError, match=match) as info:
        fit.read_table(path)
    assert "\n" not in str(info.value)


def test_main_writes_json_and_pngs(tmp_path, capsys):
    runs = _isoflop_runs()
    table = tmp_path / "sweep.csv"
    rows = zip(runs["params"], runs["tokens"], runs["loss"])
    table.write_text("params,tokens,loss\n" + "".join(f"{n:.17g},{d:.17g},{l:.17g}\n" for n, d, l in rows))
    out, plots = tmp_path / "fit.json", tmp_path / "plots"
    assert fit.main([str(table), "--out", str(out), "--plots", str(plots), "--bootstrap", "8"]) == 0
    result = json.loads(out.read_text())
    for key in ("E", "A", "alpha", "B", "beta"):
        assert isinstance(result[key], float), key
        lo, hi = result[f"{key}_ci"]
        assert lo <= hi, key
    assert abs(result["alpha"] - ALPHA) < 0.06 and abs(result["beta"] - BETA) < 0.06, result
    assert abs(result["isoflop"]["a"] - A_OPT) < 0.03
    assert {"L(N)", "L(D)", "joint", "isoflop"} <= set(result)
    printed = capsys.readouterr().out
    assert "alpha" in printed and "95% interval" in printed
    pngs = sorted(plots.glob("*.png"))
    assert [p.name for p in pngs] == ["compute_optimal.png", "isoflop.png", "loss_vs_compute.png", "loss_vs_params.png"]
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png


def test_main_reports_a_bad_table_in_one_line(tmp_path, capsys):
    table = tmp_path / "runs.csv"
    table.write_text("params,tokens\n1e8,2e9\n")
    assert fit.main([str(table)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no column loss" in err, err


def test_jaxmodels_cli_dispatches_fit(tmp_path, capsys):
    from jaxmodels import cli

    table = tmp_path / "runs.csv"
    table.write_text("params,tokens\n1e8,2e9\n")
    assert cli.main(["fit", str(table)]) == 2  # the same parser and errors as the module
    assert "has no column loss" in capsys.readouterr().err
