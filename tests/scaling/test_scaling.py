"""seqlab.scaling: the frontier, the power-law and Chinchilla fits with their bootstrap
intervals, the held-out check and crossovers, on data drawn from known laws."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from seqlab.errors import ConfigError, DataError, ShapeError
from seqlab.scaling import (
    RunRecord,
    compute_frontier,
    crossover,
    fit_chinchilla,
    fit_frontier_law,
    fit_power_law,
    fit_records,
    held_out_check,
)
from seqlab.scaling.bootstrap import Bootstrap, group_indices, run_bootstrap
from seqlab.scaling.chinchilla import allocation_exponents, allocation_problem
from seqlab.scaling.objective import RefitFailed

CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
LAW = {"E": 1.69, "A": 700.0, "alpha": 0.15}  # L(C) = E + A·C^(−α)
COMPUTE = np.logspace(15, 21, 20)


def chinchilla_runs(rng: np.random.Generator, noise: float = 0.01):
    n, d = (v.ravel() for v in np.meshgrid(np.logspace(7, 10, 8), np.logspace(8, 11, 8)))
    c = CHINCHILLA
    clean = c["E"] + c["A"] / n ** c["alpha"] + c["B"] / d ** c["beta"]
    return n, d, clean * (1 + noise * rng.standard_normal(n.size))


def law(c: np.ndarray, e: float = LAW["E"], a: float = LAW["A"], alpha: float = LAW["alpha"]):
    return e + a * np.asarray(c, dtype=float) ** -alpha


def law_points(rng: np.random.Generator, noise: float = 0.01) -> np.ndarray:
    return law(COMPUTE) * (1 + noise * rng.standard_normal(COMPUTE.size))


def as_json(result) -> dict:
    return json.loads(json.dumps(result.to_dict(), allow_nan=False))


# --- the frontier ---------------------------------------------------------------------------


def test_frontier_is_the_lower_envelope_of_a_hand_built_case():
    curves = {
        "small": [(1, 5.0), (2, 4.0), (4, 3.5), (8, 3.4)],
        "big": [(2, 4.5), (4, 3.0), (8, 2.5), (16, 2.2)],
        "late": [(5, 3.2), (16, 2.2)],  # above the envelope at 5; ties "big" at 16
        "diverged": [(1, 6.0), (3, math.nan)],
    }
    frontier = compute_frontier(curves)
    assert frontier.compute.tolist() == [1, 2, 4, 8, 16]
    assert frontier.loss.tolist() == [5.0, 4.0, 3.0, 2.5, 2.2]
    assert frontier.run == ("small", "small", "big", "big", "big")  # a tie keeps the first
    assert frontier.dropped == 1
    assert frontier.envelope([0.5, 1, 3, 5, 100]).tolist() == [math.inf, 5.0, 4.0, 3.0, 2.2]
    # The envelope is, at each compute present, the least loss at that compute or below.
    points = np.array([p for run in curves.values() for p in run], dtype=float)
    points = points[np.isfinite(points[:, 1])]
    for c in points[:, 0]:
        assert frontier.envelope(c) == points[points[:, 0] <= c, 1].min()
    assert as_json(frontier)["run"][0] == "small"
    assert compute_frontier([[(1, 2.0)], [(1, 1.0)]]).run == (1,)  # a sequence: run indices


def test_frontier_refuses_bad_curves():
    with pytest.raises(ShapeError):
        compute_frontier({"a": [1.0, 2.0, 3.0]})
    with pytest.raises(DataError):
        compute_frontier({"a": [(0.0, 2.0)]})
    with pytest.raises(DataError):
        compute_frontier({"a": [(1.0, math.nan)]})


# --- L(C) = E + A·C^(−α) ------------------------------------------------------------------


def test_power_law_recovers_its_constants_with_covering_intervals():
    fit = fit_power_law(COMPUTE, law_points(np.random.default_rng(0)), n_boot=40, seed=1)
    assert abs(fit.alpha.value - LAW["alpha"]) < 0.03
    for name, truth in LAW.items():
        ci = getattr(fit, name).ci
        assert ci.low < getattr(fit, name).value < ci.high
        assert ci.covers(truth), (name, ci)
    assert fit.bootstrap.n_ok + fit.bootstrap.n_failed == 40
    assert 0.002 < fit.rms_log_residual < 0.03  # the 1% noise
    data = as_json(fit)
    assert set(data) >= {"E", "A", "alpha", "rms_log_residual", "bootstrap"}
    assert data["alpha"]["ci"] == [fit.alpha.ci.low, fit.alpha.ci.high]


@pytest.mark.slow
def test_power_law_intervals_cover_the_truth_in_most_of_50_experiments():
    covered, close = dict.fromkeys(LAW, 0), 0
    for rep in range(50):
        y = law_points(np.random.default_rng(100 + rep))
        fit = fit_power_law(COMPUTE, y, n_starts=4, n_boot=10, seed=rep)
        close += abs(fit.alpha.value - LAW["alpha"]) < 0.03
        for name, truth in LAW.items():
            covered[name] += getattr(fit, name).ci.covers(truth)
    assert close >= 48, close
    assert min(covered.values()) >= 30, covered  # 10 refits: nominal 95% is not reached


def test_power_law_fits_error_against_state_size_with_no_floor():
    size = np.logspace(2, 6, 12)
    fit = fit_power_law(size, 3.0 * size**-0.5, criterion="squares", n_boot=0)
    assert fit.E.value < 1e-3 and fit.E.ci is None
    assert fit.alpha.value == pytest.approx(0.5, abs=0.01)
    assert fit.A.value == pytest.approx(3.0, rel=0.05)


def test_power_law_refuses_bad_inputs():
    with pytest.raises(ShapeError):
        fit_power_law([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(DataError):
        fit_power_law([1.0, 2.0, -3.0], [1.0, 2.0, 3.0])
    with pytest.raises(DataError):
        fit_power_law([1.0, 1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ConfigError):
        fit_power_law(COMPUTE, law(COMPUTE), criterion="l1", n_boot=0)


def test_frontier_law_fits_the_frontier_and_bootstraps_runs():
    # Each run ends on the law and starts where the previous one ended; before its end it is
    # worse by a factor that grows with the compute it has yet to spend, so the frontier's
    # corners are the runs' last points.
    ends = np.logspace(15, 21, 13)
    rng = np.random.default_rng(3)
    curves = {}
    for i, end in enumerate(ends):
        c = end * (np.logspace(-0.5, 0, 6) if i else np.ones(1))
        curves[f"run{i}"] = np.stack([c, law(c) * (1 + 3 * np.log10(end / c))], axis=1)
        curves[f"run{i}"][-1, 1] *= 1 + 0.005 * rng.standard_normal()
    fit = fit_frontier_law(curves, n_boot=20, seed=0)
    assert fit.frontier.compute.tolist() == ends.tolist()
    direct = fit_power_law(fit.frontier.compute, fit.frontier.loss, n_boot=0)
    assert fit.alpha.value == pytest.approx(direct.alpha.value, rel=1e-6)
    assert abs(fit.alpha.value - LAW["alpha"]) < 0.03
    assert fit.bootstrap.n_ok + fit.bootstrap.n_failed == 20 and fit.alpha.ci is not None
    points = fit_frontier_law(curves, resample="points", n_boot=10)
    assert points.alpha.value == fit.alpha.value and points.bootstrap.n_boot == 10
    with pytest.raises(ConfigError):
        fit_frontier_law(curves, resample="seeds")


# --- L(N, D) = E + A/N^α + B/D^β ----------------------------------------------------------


def test_chinchilla_recovers_the_published_constants_and_the_allocation():
    n, d, loss = chinchilla_runs(np.random.default_rng(0))
    fit = fit_chinchilla(n, d, loss, n_boot=30, seed=0)
    assert abs(fit.alpha.value - CHINCHILLA["alpha"]) < 0.03
    assert abs(fit.beta.value - CHINCHILLA["beta"]) < 0.03
    for name in ("alpha", "beta", "E"):
        assert getattr(fit, name).ci.covers(CHINCHILLA[name]), name
    alloc = fit.allocation
    total = fit.alpha.value + fit.beta.value
    assert alloc.a.value == pytest.approx(fit.beta.value / total)
    assert alloc.b.value == pytest.approx(fit.alpha.value / total)
    assert alloc.a.value + alloc.b.value == pytest.approx(1.0)
    assert alloc.a.ci.covers(0.28 / 0.62)  # the truth's a = β/(α+β)
    c = np.array([1e20, 1e23])
    n_opt, d_opt = alloc.params(c), alloc.tokens(c)
    assert np.allclose(6 * n_opt * d_opt, c)
    # The closed form minimises L along C = 6·N·D.
    for factor in (0.8, 1.25):
        assert np.all(fit.predict(n_opt, d_opt) < fit.predict(n_opt * factor, d_opt / factor))
    assert np.allclose(fit.loss_at_compute(c), fit.predict(n_opt, d_opt))
    data = as_json(fit)
    assert data["allocation"]["a"]["value"] == pytest.approx(alloc.a.value)
    assert data["bootstrap"]["n_boot"] == 30


@pytest.mark.slow
def test_chinchilla_intervals_cover_the_truth_in_most_of_50_experiments():
    covered, close = {"alpha": 0, "beta": 0}, 0
    for rep in range(50):
        n, d, loss = chinchilla_runs(np.random.default_rng(100 + rep))
        fit = fit_chinchilla(n, d, loss, n_starts=4, n_boot=10, seed=rep)
        close += abs(fit.alpha.value - 0.34) < 0.03 and abs(fit.beta.value - 0.28) < 0.03
        for name in covered:
            covered[name] += getattr(fit, name).ci.covers(CHINCHILLA[name])
    assert close >= 45, close
    assert min(covered.values()) >= 30, covered  # 10 refits: nominal 95% is not reached


def test_allocation_needs_positive_exponents():
    with np.errstate(all="raise"):
        assert all(math.isnan(v) for v in allocation_exponents(400.0, 400.0, 0.3, 0.0))
        exps = allocation_exponents(400.0, 400.0, np.array([0.3, 0.0]), np.array([0.3, 0.3]))
    assert exps[0][0] == pytest.approx(0.5) and all(math.isnan(v[1]) for v in exps)
    assert allocation_problem(0.3, 0.3) is None and "β = 0" in allocation_problem(0.3, 0.0)


def test_chinchilla_refuses_bad_inputs():
    n, d, loss = chinchilla_runs(np.random.default_rng(0))
    with pytest.raises(ShapeError):
        fit_chinchilla(n, d[:-1], loss)
    with pytest.raises(DataError):
        fit_chinchilla(n, d, -loss)
    with pytest.raises(DataError):
        fit_chinchilla(n[:5], d[:5], loss[:5])


# --- the bootstrap ----------------------------------------------------------------------------


def test_bootstrap_draws_groups_whole_is_seeded_and_counts_failures():
    groups = group_indices(["s0", "s0", "s1", "s1", "s2", "s2"], 6)
    seen = []

    def refit(indices: np.ndarray) -> np.ndarray:
        seen.append(indices)
        if len(set(indices.tolist())) < 4:  # a resample with fewer than 2 distinct groups
            raise RefitFailed("too few groups")
        return np.array([indices.mean()])

    boot = run_bootstrap(refit, groups, ("mean",), n_boot=60, seed=5)
    for indices in seen:
        assert len(indices) == 6
        pairs = indices.reshape(3, 2)
        assert np.all(pairs[:, 0] + 1 == pairs[:, 1]) and np.all(pairs[:, 0] % 2 == 0)
    assert boot.n_failed > 0 and boot.n_ok + boot.n_failed == 60
    assert boot.to_dict()["failures"] == {"RefitFailed: too few groups": boot.n_failed}
    again = run_bootstrap(refit, groups, ("mean",), n_boot=60, seed=5)
    assert np.array_equal(boot.samples, again.samples)
    with pytest.raises(ShapeError):
        group_indices(["a"], 2)
    assert issubclass(RefitFailed, DataError)  # reported by every caller of SeqlabError


# --- the held-out check -----------------------------------------------------------------------


def test_held_out_check_predicts_a_clean_law():
    fit = fit_power_law(COMPUTE, law_points(np.random.default_rng(1), 0.005), n_boot=0)
    check = held_out_check(fit)
    assert check.n_fit == 16 and check.scale.tolist() == COMPUTE[-4:].tolist()
    assert check.predicts and check.mean_relative_error < 0.02
    assert as_json(check)["n_held_out"] == 4


def test_held_out_check_refits_without_the_top_points_that_break_the_law():
    y = law_points(np.random.default_rng(1), 0.005)
    y[-4:] *= 1.25  # the largest runs fall off the law
    fit = fit_power_law(COMPUTE, y, n_boot=0)
    check = held_out_check(fit, holdout=4)
    assert not check.predicts
    # The refit never saw the top points: it predicts them on the law, 1/1.25 of them.
    assert check.mean_relative_error == pytest.approx(0.2, abs=0.03)
    alone = fit_power_law(COMPUTE[:-4], y[:-4], n_boot=0)
    assert np.allclose(check.predicted, alone.predict(COMPUTE[-4:]), rtol=1e-6)
    assert held_out_check(fit, holdout=0.05).n_fit == 19  # 5% of 20: one point
    with pytest.raises(ConfigError):
        held_out_check(fit, holdout=20)


def test_held_out_check_of_chinchilla_holds_out_the_largest_compute():
    n, d, loss = chinchilla_runs(np.random.default_rng(2), 0.005)
    check = held_out_check(fit_chinchilla(n, d, loss, n_boot=0))
    compute = 6 * n * d
    assert check.n_fit == int((compute < check.scale.min()).sum())
    assert check.scale.min() >= np.quantile(compute, 0.75)
    assert check.predicts and check.max_relative_error < 0.05


def frontier_runs(penalty: float = 0.02) -> dict[str, np.ndarray]:
    """5 runs ending on LAW at 1e15..1e21; each run's earlier points are worse by a factor
    growing with the compute still to spend, slightly enough that they are corners too."""
    runs = {}
    for i, end in enumerate(np.logspace(15, 21, 5)):
        c = end * np.logspace(-1, 0, 4)
        runs[f"run{i}"] = np.stack([c, law(c) * (1 + penalty * np.log10(end / c))], axis=1)
    return runs


def test_frontier_held_out_check_holds_out_whole_runs_by_total_compute():
    runs = frontier_runs()
    fit = fit_frontier_law(runs, n_boot=0)
    assert fit.frontier.run.count("run4") > 1  # the largest run reaches several corners
    check = held_out_check(fit, holdout=1)
    assert check.n_fit == 4
    held = np.array([r == "run4" for r in fit.frontier.run])
    assert check.scale.tolist() == fit.frontier.compute[held].tolist()
    # The refit never saw run4: not its last points, nor its earlier ones.
    alone = fit_frontier_law({k: v for k, v in runs.items() if k != "run4"}, n_boot=0)
    assert np.allclose(check.predicted, alone.predict(check.scale), rtol=1e-9)
    assert check.predicts
    # Runs held out by the compute they trained with, not by where their curve ends.
    late = fit_frontier_law(runs, compute=[5e21, 1, 2, 3, 4], n_boot=0)
    assert held_out_check(late, holdout=1).scale.max() < 1e16
    worse = {**runs, "worse": [(2e21, 100.0)]}  # the largest run, beaten at every compute
    with pytest.raises(DataError, match="no corner"):
        held_out_check(fit_frontier_law(worse, n_boot=0), holdout=1)


# --- crossovers -------------------------------------------------------------------------------


class Curve:
    """A known L(C) with no bootstrap (what `crossover` needs of a fit)."""

    bootstrap = None

    def __init__(self, fn):
        self.fn = fn

    def loss_at_compute(self, c, params=None):
        return self.fn(np.asarray(c, dtype=float))


def test_crossover_of_two_known_laws_and_none_where_they_do_not_cross():
    # Equal E: A_a·C^(−α_a) = A_b·C^(−α_b) at C = (A_b/A_a)^(1/(α_b−α_a)) = 1e10.
    a = Curve(lambda c: law(c, 1.7, 10.0, 0.1))
    b = Curve(lambda c: law(c, 1.7, 1000.0, 0.3))
    found = crossover(a, b, 1e6, 1e9, names=("attention", "mamba"))  # searched up to 1e11
    (crossing,) = found.crossings
    assert crossing.compute.value == pytest.approx(1e10, rel=1e-6)
    assert crossing.compute.ci is None
    assert found.lower_at_start == "attention" and crossing.lower_above == "mamba"
    assert found.c_high == pytest.approx(1e11)
    none = crossover(a, b, 1e6, 1e9, extrapolate=1.0)
    assert none.crossings == () and none.summary().startswith("no crossover within [1e+06, 1e+09]")
    assert as_json(none)["crossings"] == []


def test_crossover_reports_every_sign_change():
    wavy = Curve(lambda c: 2.0 + 0.1 * np.sin(np.pi * np.log10(c)))  # = 2 at every power of 10
    flat = Curve(lambda c: np.full_like(c, 2.0))
    found = crossover(wavy, flat, 10**0.5, 10**3.5, extrapolate=1.0)
    assert [round(math.log10(x.compute.value), 6) for x in found.crossings] == [1.0, 2.0, 3.0]
    assert [x.lower_above for x in found.crossings] == ["a", "b", "a"]


class BootCurve:
    """L(C) = E + A·C^(−α) with bootstrap rows (E, A, α)."""

    def __init__(self, params, samples):
        self.params = np.asarray(params, dtype=float)
        samples = np.asarray(samples, dtype=float)
        self.bootstrap = Bootstrap(("E", "A", "alpha"), samples, len(samples), (), 0)

    def loss_at_compute(self, c, params=None):
        return law(c, *(self.params if params is None else params))


def test_crossover_interval_counts_pairs_that_do_not_cross_as_beyond_the_range():
    # A_a·C^(−0.1) = A_b·C^(−α_b) at C = 100^(1/(α_b − 0.1)): 1e10 for α_b = 0.3, beyond
    # the searched 1e11 for α_b < 0.2818 (6 of the 20 refits).
    alphas = np.linspace(0.26, 0.34, 20)
    a = BootCurve((1.7, 10.0, 0.1), np.tile([1.7, 10.0, 0.1], (20, 1)))
    b = BootCurve((1.7, 1000.0, 0.3), [[1.7, 1000.0, x] for x in alphas])
    found = crossover(a, b, 1e6, 1e9)
    (crossing,) = found.crossings
    assert crossing.compute.value == pytest.approx(1e10, rel=1e-6)
    assert found.bootstrap_pairs == 20 and found.pairs_crossing == 14
    ci = crossing.compute.ci
    assert ci.low == pytest.approx(100 ** (1 / 0.24), rel=0.2) and ci.high == math.inf
    assert "> 1e+11" in found.summary() and "14 of 20 bootstrap pairs cross" in found.summary()
    assert as_json(found)["crossings"][0]["compute"]["ci"][1] is None


def test_crossover_of_bootstrapped_fits_has_an_interval():
    rng = np.random.default_rng(4)
    c = np.logspace(6, 9, 12)
    noisy = [law(c, 1.7, 10.0, 0.1), law(c, 1.7, 1000.0, 0.3)]
    fits = [fit_power_law(c, y * (1 + 0.002 * rng.standard_normal(12)), n_boot=20) for y in noisy]
    found = crossover(*fits, c_min=1e6, c_max=1e9)
    (crossing,) = found.crossings
    assert 1e9 < crossing.compute.value < 1e11
    assert found.bootstrap_pairs == 20 and found.pairs_crossing > 10
    ci = crossing.compute.ci
    assert ci.low <= crossing.compute.value <= ci.high
    assert as_json(found)["crossings"][0]["compute"]["ci"] == [ci.low, ci.high]


# --- run records ------------------------------------------------------------------------------


def test_fit_records_fits_each_backbone_and_their_crossover():
    rng = np.random.default_rng(6)
    records = []
    for backbone, shift in (("attention", 1.0), ("mamba", 1.03)):
        n, d, loss = chinchilla_runs(rng, 0.003)
        for i in range(0, len(n), 3):  # 22 runs, two seeds of the first configuration
            for seed in (0, 1) if i == 0 else (0,):
                record = {"backbone": backbone, "params": n[i], "tokens": d[i], "seed": seed}
                records.append(RunRecord.from_dict({**record, "loss": loss[i] * shift}))
    report = fit_records(records, n_boot=5, seed=0)
    assert list(report.backbones) == ["attention", "mamba"]
    attention = report.backbones["attention"]
    assert attention.runs == 23 and attention.notes == ()
    assert abs(attention.chinchilla.alpha.value - CHINCHILLA["alpha"]) < 0.05
    assert attention.chinchilla.bootstrap.n_boot == 5 and attention.compute_held_out is not None
    (pair,) = report.crossovers
    assert pair.names == ("attention", "mamba")
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert data["backbones"]["mamba"]["chinchilla"]["alpha"]["ci"] is not None
    with pytest.raises(DataError):
        RunRecord.from_dict({"backbone": "x", "params": 1, "tokens": 1, "loss": 1, "flops": 2})
    few = fit_records([RunRecord("tiny", 1e7, 1e8, 3.0), RunRecord("tiny", 1e8, 1e9, 2.5)])
    assert few.backbones["tiny"].chinchilla is None and len(few.backbones["tiny"].notes) == 2


def test_fit_records_finds_where_two_backbones_cross():
    # L_a = law(C; 10, 0.1) and L_b = law(C; 1000, 0.3) cross at C = 1e10, searched up to
    # 100 × 1e9; every run is one final point.
    rng = np.random.default_rng(7)
    c = np.logspace(6, 9, 12)
    records = [
        RunRecord(name, ci / 6e3, 1e3, loss * (1 + 0.002 * rng.standard_normal()), compute=ci)
        for name, (a, alpha) in (("a", (10.0, 0.1)), ("b", (1000.0, 0.3)))
        for ci, loss in zip(c, law(c, 1.7, a, alpha), strict=True)
    ]
    report = fit_records(records, n_boot=10, seed=0)
    (pair,) = report.crossovers
    (crossing,) = pair.crossings
    assert abs(math.log10(crossing.compute.value) - 10) < 0.3
    assert pair.lower_at_start == "a" and crossing.lower_above == "b"
    seeds = [report.backbones[n].compute_law.bootstrap.seed for n in ("a", "b")]
    assert seeds[0] != seeds[1]  # independent refits per backbone, stable per name
    assert seeds == [
        fit_records(records, n_boot=1).backbones[n].compute_law.bootstrap.seed for n in ("a", "b")
    ]


def test_fit_records_averages_seeds_before_the_frontier():
    records = []
    for i, c in enumerate(np.logspace(15, 18, 4)):
        for seed, noise in ((0, 0.95), (1, 1.05)):
            curve = tuple((x, float(law(x)) * noise) for x in c * np.array([0.1, 1.0]))
            records.append(RunRecord("a", 1e6 * (i + 1), 1e9, curve[-1][1], c, seed, curve))
    law_fit = fit_records(records, n_boot=0).backbones["a"].compute_law
    assert np.allclose(law_fit.frontier.loss, law(law_fit.frontier.compute))


def test_fit_records_at_one_compute_budget_searches_crossovers_along_the_curves():
    # every run trains with 1e9 FLOPs (one isoflop budget): the curves still span compute
    records = [
        RunRecord(
            name, n, 1e9 / (6 * n), law(1e9, a=a), 1e9, 0, tuple(zip(c, law(c, a=a), strict=True))
        )
        for name, a in (("a", 700.0), ("b", 800.0))
        for n, c in ((1e5, np.logspace(6, 9, 4)), (2e5, np.logspace(6.5, 9, 3)))
    ]
    report = fit_records(records, n_boot=0)
    (pair,) = report.crossovers
    assert pair.c_low == pytest.approx(1e6) and pair.crossings == ()
