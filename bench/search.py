"""Search benchmark: tweakline's search against plain Optuna and random search, on problems where search matters.

Run from the repository root::

    python -m bench.search                 # 5 seeds, every problem, every arm (~25-35 CPU minutes)
    python -m bench.search --quick         # 2 seeds, 16 trials, the cheap problems (a smoke run)

Arms, for each problem and seed (same budget, same seed, same CV folds):

- ``tweakline-tpe``: the scheduler's engine (:class:`tweakline.scheduler.engine.ExperimentRun`,
  multivariate TPE with the constant liar) asking ``parallelism`` trials ahead, exactly as the
  scheduler does, with the runner's trial code (:func:`tweakline.ml.training.run_trial`);
  results come back oldest first. Only the bus is left out.
- ``optuna-tpe``: plain Optuna as its docs show it: ``TPESampler(seed=...)``, ``study.optimize``
  (sequential), an objective calling scikit-learn's ``cross_val_score`` on the same folds.
- ``optuna-tpe@4``: plain Optuna with 4 trials in flight, as parallel workers use it (default
  ``TPESampler(seed)``; Optuna 5's constant liar is on by default), played with ask/tell like the
  tweakline arms.
- ``random``: tweakline with ``algorithm: random``.
- ``tweakline-tpe+asha`` / ``+median`` / ``+hyperband`` / ``+wilcoxon``: as ``tweakline-tpe``
  with the pruner deciding after each fold (the runner stops a pruned trial before its next fold).
- ``tweakline-tpe+asha-rungs``: ASHA on rungs of a training resource (``search.resource``): the
  problem's own (``n_estimators`` for gradient boosting) or ``fraction`` of each training fold.
- ``warm``: the same lineage pushed again: a new seed, seeded with the ``tweakline-tpe`` run's
  trials through the lineage code (:func:`tweakline.scheduler.lineage.select`), re-running its
  best configuration first (the default); ``warm-prior``: the same without that re-run
  (``search.warm_start.rerun: 0``), the earlier trials only guide the sampler.

Reported: best CV score after N trials, trials to reach a target (the median final best of
random search at N trials: what random gets with the whole budget), the sum of trial CPU
seconds, wall time, and for every arm its difference from ``tweakline-tpe`` with Welch's t-test
over the seeds; for the warm arms, the trials they need to reach the cold run's final best. Also a
parallelism sweep (tweakline-tpe at 1, 4 and 16 trials in flight). Prints tables, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from sklearn.model_selection import cross_val_score

from tweakline.ml.datasets import Split, load_dataset, split_dataset
from tweakline.ml.estimators import build_estimator
from tweakline.ml.training import cv_splitter, estimator_seed, run_trial
from tweakline.proto.messages import (
    ExperimentState,
    LineageHistory,
    LineageTrial,
    TrialCompleted,
    TrialRecord,
    TrialStatus,
    trial_id,
)
from tweakline.proto.tweakfile import TweakFile
from tweakline.scheduler.engine import ExperimentRun
from tweakline.scheduler.lineage import context_of, select
from tweakline.search.space import suggest

ALLOWED = ["sklearn."]
SKLEARN_SCORING = {"accuracy": "accuracy", "r2": "r2", "f1_macro": "f1_macro", "roc_auc": "roc_auc"}
DEFAULT_JSON = Path("bench/results/search.json")

log = logging.getLogger("bench.search")


# -- problems ------------------------------------------------------------------------------------


@dataclass
class Problem:
    """A tweak file whose default parameters are clearly beaten, and the budget to search it with."""

    name: str
    tweak: dict[str, Any]
    trials: int
    cheap: bool = True
    note: str = ""
    resource: dict[str, Any] = field(default_factory=lambda: {"name": "fraction", "min": 0.1})
    grown_source: str | None = None  # the dataset of the next push, grown in place (same lineage)

    def grown(self) -> Problem:
        """This problem on the next push's (grown) data: the same lineage, new rows."""
        tweak = json.loads(json.dumps(self.tweak))
        tweak["spec"]["dataset"]["source"] = self.grown_source
        return Problem(f"{self.name}-grown", tweak, self.trials, self.cheap, f"{self.note}, next push with grown data")


def _tweak(
    name: str, dataset: dict[str, Any], estimator: str, space: dict[str, Any], metric: str, fixed: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "tweakline/v1",
        "kind": "Experiment",
        "metadata": {"name": name},
        "spec": {
            "dataset": {"seed": 0, "test_size": 0.25, **dataset},
            "model": {"estimator": estimator, "fixed": fixed or {}},
            "search": {"algorithm": "tpe", "space": space, "warm_start": False},
            "objective": {"metric": metric, "cv": 5},
            "budget": {"max_trials": 40, "parallelism": 4},
        },
    }


def generated_csv(directory: Path, rows: int = 700) -> Path:
    """A hard generated binary classification problem written as a csv (read by the csv: loader).

    The first ``rows`` of the same 1000 generated rows (shuffled): 1000 rows is the same data grown.
    """
    from sklearn.datasets import make_classification

    X, y = make_classification(
        n_samples=1000, n_features=20, n_informative=8, n_redundant=4, flip_y=0.03, class_sep=0.8, random_state=0
    )
    X, y = X[:rows], y[:rows]
    path = directory / f"generated-{rows}.csv"
    header = ",".join(f"x{i}" for i in range(X.shape[1])) + ",label"
    rows = [",".join(f"{v:.6g}" for v in x) + f",c{t}" for x, t in zip(X, y)]
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def problems(data_dir: Path) -> list[Problem]:
    """The benchmark's problems (several estimators and datasets, including regression)."""
    svc_space = {
        "C": {"type": "float", "low": 1e-2, "high": 1e4, "log": True},
        "gamma": {"type": "float", "low": 1e-7, "high": 1e-1, "log": True},
    }
    return [
        Problem(
            "wine-svc",
            _tweak("wine-svc", {"source": "sklearn:wine"}, "sklearn.svm.SVC", svc_space, "accuracy"),
            40,
            note="RBF SVC on unscaled features: defaults score ~0.66",
        ),
        Problem(
            "breast-cancer-svc",
            _tweak(
                "breast-cancer-svc",
                {"source": "sklearn:breast_cancer"},
                "sklearn.svm.SVC",
                {**svc_space, "class_weight": {"type": "categorical", "choices": [None, "balanced"]}},
                "accuracy",
            ),
            40,
            note="RBF SVC on unscaled features: defaults score ~0.91",
        ),
        Problem(
            "diabetes-svr",
            _tweak(
                "diabetes-svr",
                {"source": "sklearn:diabetes"},
                "sklearn.svm.SVR",
                {
                    "C": {"type": "float", "low": 1e-2, "high": 1e4, "log": True},
                    "epsilon": {"type": "float", "low": 1e-2, "high": 1e2, "log": True},
                    "gamma": {"type": "float", "low": 1e-4, "high": 1e2, "log": True},
                },
                "r2",
            ),
            40,
            note="regression; RBF SVR defaults score r2 ~0.15",
        ),
        Problem(
            "generated-gbc",
            _tweak(
                "generated-gbc",
                {"source": f"csv:{generated_csv(data_dir)}", "target": "label"},
                "sklearn.ensemble.GradientBoostingClassifier",
                {
                    "learning_rate": {"type": "float", "low": 1e-3, "high": 1.0, "log": True},
                    "max_depth": {"type": "int", "low": 1, "high": 5},
                    "subsample": {"type": "float", "low": 0.4, "high": 1.0},
                },
                "accuracy",
                fixed={"n_estimators": 100},
            ),
            30,
            cheap=False,
            note="gradient boosting (100 trees) on a generated csv (700 x 20, 8 informative)",
            # the rung arm grows the 100 trees in rungs of 11, 33, 100 instead of fixing them
            resource={"name": "n_estimators", "min": 11, "max": 100},
            grown_source=f"csv:{generated_csv(data_dir, rows=1000)}",
        ),
    ]


# -- one search run ------------------------------------------------------------------------------


@dataclass
class RunResult:
    """One arm on one problem with one seed."""

    problem: str
    arm: str
    seed: int
    parallelism: int
    trials: int
    best: float
    curve: list[float] = field(repr=False)  # best so far after each finished trial
    cpu_s: float = 0.0
    wall_s: float = 0.0
    pruned: int = 0
    failed: int = 0
    warm_reused: int = 0
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)


def spec_of(
    problem: Problem,
    seed: int,
    *,
    algorithm: str = "tpe",
    pruner: str = "none",
    parallelism: int = 4,
    rungs: bool = False,
    rerun: int = 1,
) -> TweakFile:
    raw = json.loads(json.dumps(problem.tweak))
    raw["spec"]["search"].update({"algorithm": algorithm, "seed": seed, "pruner": pruner})
    raw["spec"]["search"]["warm_start"] = {"enabled": False, "rerun": rerun}
    raw["spec"]["budget"].update({"max_trials": problem.trials, "parallelism": parallelism})
    if rungs:
        raw["spec"]["search"]["resource"] = problem.resource
        raw["spec"]["model"]["fixed"].pop(problem.resource["name"], None)
    return TweakFile.model_validate(raw)


def _curve(scores: list[float | None], maximize: bool) -> list[float]:
    best, out = -np.inf if maximize else np.inf, []
    for s in scores:
        if s is not None and np.isfinite(s):
            best = max(best, s) if maximize else min(best, s)
        out.append(float(best))
    return out


def run_tweakline(
    problem: Problem,
    split: Split,
    arm: str,
    seed: int,
    *,
    algorithm: str = "tpe",
    pruner: str = "none",
    parallelism: int = 4,
    warm_from: RunResult | None = None,
    rungs: bool = False,
    rerun: int = 1,
) -> RunResult:
    """Drive the scheduler's engine with the runner's trial code, ``parallelism`` trials in flight."""
    tweak = spec_of(problem, seed, algorithm=algorithm, pruner=pruner, parallelism=parallelism, rungs=rungs, rerun=rerun)
    state = ExperimentState(experiment_id=f"{problem.name}-{arm}-{seed}", tweak=tweak)
    if warm_from is not None:
        context = context_of(tweak.spec)
        history = LineageHistory(
            lineage=problem.name,
            trials=[
                LineageTrial(experiment_id="cold", context=context, record=TrialRecord.model_validate(rec))
                for rec in warm_from.records
            ],
        )
        state.warm_trials, state.warm_start = select(history, problem.name, tweak.spec)
    run = ExperimentRun(state)
    maximize = tweak.spec.objective.maximize
    in_flight: list[tuple[int, dict[str, Any]]] = []
    scores: list[float | None] = []
    cpu = 0.0
    started = time.perf_counter()
    trial_seed = estimator_seed(tweak.spec)
    while not run.finished():
        in_flight += run.next_trials()
        number, params = in_flight.pop(0)
        outcome = run_trial(
            split,
            tweak.spec,
            params,
            ALLOWED,
            seed=trial_seed,
            n_jobs=1,
            on_fold=lambda fold, value, n=number: run.report(n, fold, value),
        )
        cpu += outcome.cpu_s
        run.record(
            TrialCompleted(
                experiment_id=state.experiment_id,
                trial_id=trial_id(state.experiment_id, number),
                number=number,
                status=outcome.status,
                params=params,
                score=outcome.score,
                metrics=outcome.metrics,
                fold_scores=outcome.fold_scores,
                rung_scores=outcome.rung_scores,
                cpu_s=outcome.cpu_s,
                duration_s=outcome.duration_s,
            )
        )
        record = run.state.results[number]
        scores.append(record.score if record.status is TrialStatus.OK else None)
    results = list(run.state.results.values())
    curve = _curve(scores, maximize)
    return RunResult(
        problem=problem.name,
        arm=arm,
        seed=seed,
        parallelism=parallelism,
        trials=len(results),
        best=curve[-1],
        curve=curve,
        cpu_s=cpu,
        wall_s=time.perf_counter() - started,
        pruned=sum(r.status is TrialStatus.PRUNED for r in results),
        failed=sum(r.status is TrialStatus.FAILED for r in results),
        warm_reused=len(state.warm_trials),
        records=[r.model_dump(mode="json") for r in results],
    )


def run_plain_optuna(problem: Problem, split: Split, seed: int, parallelism: int = 1) -> RunResult:
    """Plain Optuna: its TPE sampler and scikit-learn's cross_val_score on the same folds.

    ``parallelism`` 1 is ``study.optimize`` with the default ``TPESampler(seed)``; above 1 it is
    how parallel workers use Optuna (each worker asks as it frees up; the constant liar, on by
    default in Optuna 5, keeps them apart), played deterministically with ask/tell:
    ``parallelism`` trials in flight, sampled when asked, the oldest finishing first, as in the
    tweakline arms.
    """
    tweak = spec_of(problem, seed)
    spec = tweak.spec
    maximize = spec.objective.maximize
    folds = cv_splitter(spec, split.task)
    scoring = SKLEARN_SCORING[spec.objective.metric]
    trial_seed = estimator_seed(spec)
    cpu_total = 0.0
    scores: list[float | None] = []

    def objective(trial: optuna.Trial) -> float:
        nonlocal cpu_total
        params = suggest(trial, spec.search.space)  # with ask-ahead, already sampled at ask time
        estimator = build_estimator(spec.model, params, ALLOWED, 1, seed=trial_seed)
        cpu = time.process_time()
        try:
            value = float(cross_val_score(estimator, split.X_train, split.y_train, cv=folds, scoring=scoring).mean())
        finally:
            cpu_total += time.process_time() - cpu
        scores.append(value if np.isfinite(value) else None)
        return value

    sampler = optuna.samplers.TPESampler(seed=seed)
    study = optuna.create_study(direction="maximize" if maximize else "minimize", sampler=sampler)
    started = time.perf_counter()
    if parallelism == 1:
        study.optimize(objective, n_trials=problem.trials, catch=(Exception,))
    else:
        pending: list[optuna.Trial] = []
        asked = 0
        while pending or asked < problem.trials:
            while len(pending) < parallelism and asked < problem.trials:
                trial = study.ask()
                suggest(trial, spec.search.space)  # sample now, as a worker would, not when it is told
                pending.append(trial)
                asked += 1
            trial = pending.pop(0)
            try:
                study.tell(trial, objective(trial))
            except Exception:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                scores.append(None)
    curve = _curve(scores, maximize)
    arm = "optuna-tpe" if parallelism == 1 else f"optuna-tpe@{parallelism}"
    return RunResult(
        problem=problem.name,
        arm=arm,
        seed=seed,
        parallelism=parallelism,
        trials=len(study.trials),
        best=curve[-1],
        curve=curve,
        cpu_s=cpu_total,
        wall_s=time.perf_counter() - started,
        failed=sum(t.state is optuna.trial.TrialState.FAIL for t in study.trials),
    )


# -- summary -------------------------------------------------------------------------------------


def trials_to(curve: list[float], target: float, maximize: bool) -> int | None:
    """1-based number of trials after which the best so far reached ``target``."""
    for i, value in enumerate(curve):
        if (value >= target - 1e-12) if maximize else (value <= target + 1e-12):
            return i + 1
    return None


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def _counts(values: list[int | None], budget: int) -> str:
    shown = [str(v) if v is not None else f">{budget}" for v in values]
    return " / ".join(shown)


def summarise(runs: list[RunResult], probs: dict[str, Problem]) -> dict[str, Any]:
    """Per problem and arm: best after N, trials to target, CPU and wall seconds; warm-start and parallelism rows."""
    summary: dict[str, Any] = {}
    for name, problem in probs.items():
        mine = [r for r in runs if r.problem == name]
        if not mine:
            continue
        maximize = TweakFile.model_validate(problem.tweak).spec.objective.maximize
        randoms = [r.best for r in mine if r.arm == "random" and r.parallelism == 4]
        target = statistics.median(randoms) if randoms else None
        rows = {}
        for arm in dict.fromkeys(r.arm for r in mine if not r.arm.startswith("tweakline-tpe@")):
            group = [r for r in mine if r.arm == arm]
            row: dict[str, Any] = {
                "best": [r.best for r in group],
                "best_mean": statistics.mean(r.best for r in group),
                "trials_to_target": [trials_to(r.curve, target, maximize) if target is not None else None for r in group],
                "cpu_s": statistics.mean(r.cpu_s for r in group),
                "wall_s": statistics.mean(r.wall_s for r in group),
                "pruned": statistics.mean(r.pruned for r in group),
                "trials": problem.trials,
            }
            if arm.startswith("warm"):
                colds = {r.seed: r for r in mine if r.arm == "tweakline-tpe"}
                row["trials_to_cold_best"] = [
                    trials_to(r.curve, colds[r.seed - 1000].best, maximize) if r.seed - 1000 in colds else None for r in group
                ]
                row["reused"] = [r.warm_reused for r in group]
            rows[arm] = row
        sweep = {}
        for r in mine:
            if r.arm.startswith("tweakline-tpe@"):
                sweep.setdefault(r.parallelism, []).append(r.best)
        reference = rows.get("tweakline-tpe")
        if reference is not None:
            for arm, row in rows.items():
                if arm != "tweakline-tpe" and not arm.startswith("warm") and len(row["best"]) > 1:
                    row["vs_tweakline_tpe"] = compare(reference["best"], row["best"], maximize)
                    if reference["cpu_s"] > 0:
                        row["vs_tweakline_tpe"]["cpu_cut"] = 1 - row["cpu_s"] / reference["cpu_s"]
        summary[name] = {
            "target": target,
            "maximize": maximize,
            "arms": rows,
            "parallelism": {str(p): v for p, v in sorted(sweep.items())},
        }
    return summary


def compare(ours: list[float], theirs: list[float], maximize: bool) -> dict[str, float]:
    """How ``theirs`` differs from ``ours`` (best after N over seeds): mean difference and Welch's t-test.

    ``gain`` > 0 means ``theirs`` is better. "Within noise" in the tables means p >= 0.05: with
    this many seeds, the difference is not distinguishable from seed-to-seed variation.
    """
    from scipy import stats

    sign = 1.0 if maximize else -1.0
    gain = sign * (statistics.mean(theirs) - statistics.mean(ours))
    if statistics.pstdev(ours) == 0 and statistics.pstdev(theirs) == 0:
        p = 1.0 if gain == 0 else 0.0
    else:
        p = float(stats.ttest_ind(theirs, ours, equal_var=False).pvalue)
    return {"gain": gain, "p": p}


def print_tables(summary: dict[str, Any]) -> None:
    for name, s in summary.items():
        target = s["target"]
        shown = "no random arm run" if target is None else f"median final best of random search: {target:.4f}"
        print(f"\n## {name}  (target = {shown})")
        print("| arm | best after N (mean ± sd) | trials to target (per seed) | CPU s (mean) | wall s (mean) | pruned |")
        print("| --- | --- | --- | --- | --- | --- |")
        for arm, row in s["arms"].items():
            print(
                f"| {arm} | {_mean_sd(row['best'])} | {_counts(row['trials_to_target'], row['trials'])} | "
                f"{row['cpu_s']:.1f} | {row['wall_s']:.1f} | {row['pruned']:.1f} |"
            )
        arms = s["arms"]
        for arm, row in arms.items():
            versus = row.get("vs_tweakline_tpe")
            if versus is None:
                continue
            verdict = "within noise" if versus["p"] >= 0.05 else ("better" if versus["gain"] > 0 else "worse")
            text = f"- {arm} vs tweakline-tpe: best after N {versus['gain']:+.4f} (Welch p = {versus['p']:.2f}, {verdict})"
            if "+" in arm and "cpu_cut" in versus:
                cut = 100 * versus["cpu_cut"]
                text += f"; {cut:.0f}% less trial CPU" if cut >= 0 else f"; {-cut:.0f}% more trial CPU"
            print(text)
        for arm in ("warm", "warm-prior"):
            if arm in arms:
                row = arms[arm]
                print(
                    f"- {arm}: reused {row['reused']} earlier trials; trials to reach the cold run's final best: "
                    f"{_counts(row['trials_to_cold_best'], row['trials'])}"
                )
        if s["parallelism"]:
            print(
                "- tweakline-tpe by parallelism (best after N, mean ± sd): "
                + "; ".join(f"p={p}: {_mean_sd(v)}" for p, v in s["parallelism"].items())
            )


def machine() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": load,
        "optuna": optuna.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.search", description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="Seeds per arm (default 5).")
    parser.add_argument("--trials", type=int, default=None, help="Override every problem's trial budget.")
    parser.add_argument("--problems", nargs="*", default=None, help="Problem names (default: all).")
    parser.add_argument("--quick", action="store_true", help="2 seeds, 16 trials, cheap problems only.")
    parser.add_argument("--no-sweep", action="store_true", help="Skip the parallelism sweep.")
    parser.add_argument("--no-warm", action="store_true", help="Skip the warm-start arm.")
    parser.add_argument(
        "--arms", nargs="*", default=None, help="Only these arms (tweakline-tpe always runs: the others are compared with it)."
    )
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"Where to write results (default {DEFAULT_JSON}).")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    seeds = list(range(2 if args.quick else args.seeds))
    with tempfile.TemporaryDirectory() as tmp:
        probs = {p.name: p for p in problems(Path(tmp)) if (not args.quick or p.cheap)}
        if args.problems:
            probs = {n: p for n, p in probs.items() if n in args.problems}
        for p in probs.values():
            if args.trials or args.quick:
                p.trials = args.trials or 16
        runs: list[RunResult] = []
        started = time.perf_counter()
        for problem in list(probs.values()):
            spec = TweakFile.model_validate(problem.tweak).spec
            split = split_dataset(load_dataset(spec.dataset), spec.dataset)
            grown = problem.grown() if problem.grown_source and not args.no_warm else None
            if grown is not None:
                probs[grown.name] = grown
                grown_spec = TweakFile.model_validate(grown.tweak).spec
                grown_split = split_dataset(load_dataset(grown_spec.dataset), grown_spec.dataset)
            arms: list[tuple[str, Callable[[int], RunResult]]] = [
                ("tweakline-tpe", lambda s: run_tweakline(problem, split, "tweakline-tpe", s)),
                ("optuna-tpe", lambda s: run_plain_optuna(problem, split, s)),
                ("optuna-tpe@4", lambda s: run_plain_optuna(problem, split, s, parallelism=4)),
                ("random", lambda s: run_tweakline(problem, split, "random", s, algorithm="random")),
                ("tweakline-tpe+asha", lambda s: run_tweakline(problem, split, "tweakline-tpe+asha", s, pruner="asha")),
                (
                    "tweakline-tpe+asha-rungs",
                    lambda s: run_tweakline(problem, split, "tweakline-tpe+asha-rungs", s, pruner="asha", rungs=True),
                ),
                ("tweakline-tpe+median", lambda s: run_tweakline(problem, split, "tweakline-tpe+median", s, pruner="median")),
                (
                    "tweakline-tpe+hyperband",
                    lambda s: run_tweakline(problem, split, "tweakline-tpe+hyperband", s, pruner="hyperband"),
                ),
                (
                    "tweakline-tpe+wilcoxon",
                    lambda s: run_tweakline(problem, split, "tweakline-tpe+wilcoxon", s, pruner="wilcoxon"),
                ),
            ]
            if args.arms:
                arms = [(name, go) for name, go in arms if name in args.arms or name == "tweakline-tpe"]
            for seed in seeds:
                cold = None
                for arm, go in arms:
                    result = go(seed)
                    runs.append(result)
                    cold = result if arm == "tweakline-tpe" else cold
                    log.info(
                        "%-18s %-22s seed %d: best %.4f cpu %.1fs pruned %d",
                        problem.name,
                        arm,
                        seed,
                        result.best,
                        result.cpu_s,
                        result.pruned,
                    )
                # The next push of the same lineage: another seed, seeded with the cold run's trials.
                # "warm" re-runs the cold run's best configuration first (the default); "warm-prior" only
                # seeds the sampler with the earlier trials (search.warm_start.rerun: 0).
                if not args.no_warm:
                    for arm, rerun in (("warm", 1), ("warm-prior", 0)):
                        warm = run_tweakline(problem, split, arm, seed + 1000, warm_from=cold, rerun=rerun)
                        runs.append(warm)
                        log.info(
                            "%-18s %-22s seed %d: best %.4f (reused %d)", problem.name, arm, seed, warm.best, warm.warm_reused
                        )
                # The next push brings more rows of the same csv (same lineage): cold on the new data,
                # and warm from the trials the first push made on the old data.
                if grown is not None:
                    cold_grown = run_tweakline(grown, grown_split, "tweakline-tpe", seed)
                    runs.append(cold_grown)
                    for arm, rerun in (("warm", 1), ("warm-prior", 0)):
                        warm = run_tweakline(grown, grown_split, arm, seed + 1000, warm_from=cold, rerun=rerun)
                        runs.append(warm)
                        log.info("%-18s %-22s seed %d: best %.4f vs cold %.4f", grown.name, arm, seed, warm.best, cold_grown.best)
                if not args.no_sweep and problem.cheap:
                    for p in (1, 16):
                        r = run_tweakline(problem, split, f"tweakline-tpe@{p}", seed, parallelism=p)
                        runs.append(r)
                    runs.append(RunResult(**{**asdict(cold), "arm": "tweakline-tpe@4"}))
        elapsed = time.perf_counter() - started
    summary = summarise(runs, probs)
    print(f"# Search benchmark: {len(seeds)} seeds, {', '.join(f'{p.name} N={p.trials}' for p in probs.values())}")
    print_tables(summary)
    report = {
        "command": "python -m bench.search " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "elapsed_s": elapsed,
        "seeds": seeds,
        "problems": {n: {"trials": p.trials, "note": p.note} for n, p in probs.items()},
        "summary": summary,
        "runs": [{k: v for k, v in asdict(r).items() if k != "records"} for r in runs],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1, default=str))
    print(f"\nwrote {args.json} ({elapsed:.0f}s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
