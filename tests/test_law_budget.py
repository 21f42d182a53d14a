"""The law across training budgets (issue 30): trials' budgets (recorded, or derived for older exports), the budget
term g and the test of whether b depends on the budget, recovered from per-example results read through a real
export; ``recommend --steps``; leave-one-budget-out; a law.json without a budget term behaving as before."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from hostile import cli
from paths import DATA, REPO
from rmask_tune.law import fit_shared, load_law
from rmask_tune.law_record import LawPoint
from rmask_tune.runstore.export import encode_export
from rmask_tune.runstore.reader import budget_steps, check_one_sweep, load_trials, resolve_source, trial_of
from rmask_tune.runstore.record import RunRecord
from rmask_tune.errors import RmaskError
from rmask_tune.tasks.results import ExampleLog
from rmask_tune.validation import BUDGET_IGNORED, BUDGET_TERM, NO_BUDGET_TERM

DEV, TEST, SEEDS = 200, 200, (0, 1)
FROZEN, PEAK = 0.6, 0.85
# (epochs, train_examples) of each budget at batch 8: 64, 200 and 625 optimizer steps.
BUDGETS = {64: (2, 256), 200: (5, 320), 625: (5, 1000)}
OFFSETS = {"SST-2": 0.0, "RTE": 0.4}
RATIOS = (1e-2, 1e-3, 1e-4)
A, B, G = -3.2, -0.8, -0.5


def truth(task: str, ratio: float, steps: int, b_change: float = 0.0) -> float:
    """log10 lr* of the synthetic law: b may move by ``b_change`` per decade of steps (about log10 of 200)."""
    s = math.log10(steps) - math.log10(200)
    return A + OFFSETS[task] + (B + b_change * s) * (math.log10(ratio) + 3) + G * s


def _record(n: str, params: dict, log: ExampleLog, recorded_steps: int | None) -> RunRecord:
    dev = [log.scores(e)["accuracy"] for e in log.evaluations if e.split == "dev"]
    if recorded_steps is not None:
        params = {**params, "budget_steps": recorded_steps}
    return RunRecord(
        run_id=f"r{n}", run_status="FINISHED", start_time=1000, end_time=2000,
        params={k: str(v) for k, v in params.items()},
        metrics={"best_dev_metric": max(dev), "test_metric": log.scores(log.find("test"))["accuracy"],
                 "epochs_completed": float(len(dev)), "wall_time_s": 1.0},
        tags={"rmask.status": "finished", "rmask.trial_id": f"t{n}"},
        history={"dev_metric": [(e, v) for e, v in enumerate(dev, 1)]},
        examples=log.to_dict(),
    )


def budget_export(path, b_change: float = 0.0, budgets=BUDGETS, tasks=tuple(OFFSETS)) -> None:
    """A sweep export of model ``m`` on ``tasks`` (both by default) at ``budgets``: the frozen model and Random Masking at three ratios,
    seven half-decade LRs around each cell's true optimum, two seeds, per-example dev and test results (an example
    is right when its fixed difficulty lies under the accuracy at that LR, so results are paired across LRs).
    The 625-step trials record their budget; the others carry only the config it is derived from."""
    records = []
    for steps, (epochs, train) in budgets.items():
        n = 0
        for t, task in enumerate(OFFSETS):
            if task not in tasks:
                continue
            for seed in SEEDS:
                difficulty = np.random.default_rng(100 + seed + 10 * t + steps).random(DEV)
                cells = [(None, None)] + [(r, round(2 * truth(task, r, steps, b_change)) / 2 + k / 2)
                                          for r in RATIOS for k in range(-3, 4)]
                for ratio, log_lr in cells:
                    level = FROZEN if ratio is None else max(
                        FROZEN, PEAK - 0.1 * (log_lr - truth(task, ratio, steps, b_change)) ** 2)
                    rng = np.random.default_rng([steps, n])
                    log = ExampleLog(task, "accuracy", "accuracy")
                    for epoch in range(1, epochs + 1):
                        noisy = difficulty < level + rng.normal(0, 0.005)
                        log.add("dev", epoch, [f"dev-{i}" for i in range(DEV)], {"correct": noisy.astype(int).tolist()})
                    log.add("test", epochs, [f"test-{i}" for i in range(TEST)],
                            {"correct": (rng.random(TEST) < level).astype(int).tolist()})
                    params = {"model": "m", "task": task, "method": "random_masking" if ratio else "none",
                              "ratio": ratio or "none", "lr": "none" if ratio is None else f"{10 ** log_lr:.6g}",
                              "seed": seed, "epochs": epochs, "train_examples": train, "dev_examples": DEV,
                              "test_examples": TEST, "batch_size": 8, "grad_accum": 1, "max_steps": "none",
                              "metric": "accuracy", "trainable_params": round((ratio or 0) * 1e6),
                              "total_params": 1_000_000}
                    records.append(_record(f"{steps}-{n}", params, log, steps if steps == 625 else None))
                    n += 1
    path.write_bytes(encode_export("budgets", "sqlite:///nowhere.db", records, 0))


@pytest.fixture(scope="module")
def budget_report(tmp_path_factory):
    """The CLI's report of the three-budget export: its folder."""
    folder = tmp_path_factory.mktemp("budgets")
    budget_export(folder / "export.json.gz")
    done = cli(["report", folder / "export.json.gz", "--out", folder / "report", "--bootstrap", "100"])
    assert done.code == 0, done.err
    return folder / "report"


def test_budgets_are_recorded_or_derived_and_old_exports_still_load():
    # Derived as the trainer counts them: epochs x ceil(ceil(train / batch) / grad_accum), or max_steps.
    assert budget_steps({"epochs": "2", "train_examples": "256", "batch_size": "8"}) == 64
    assert budget_steps({"epochs": "5", "train_examples": "1000", "batch_size": "8", "grad_accum": "3"}) == 5 * 42
    assert budget_steps({"epochs": "5", "train_examples": "1000", "batch_size": "8", "max_steps": "300"}) == 300
    assert budget_steps({"epochs": "2", "train_examples": "256", "batch_size": "8", "budget_steps": "62"}) == 62
    assert budget_steps({"epochs": "2", "train_examples": "256"}) is None  # no batch size: unknown
    # Every committed export predates the recorded budget: each still loads, at the steps its config gives
    # (256 train x 2 epochs at batch 8; MiniLM's CB: 150 x 2).
    for name, steps in (("smollm2-135m", 64), ("law-across-tasks", 64), ("minilm-l6-cb-law", 38)):
        trials, _ = load_trials(resolve_source(str(REPO / "reports" / name / "sweep-export.json.gz")))
        assert trials and {t.steps for t in trials} == {steps}, name


@pytest.mark.slow
def test_a_trial_records_its_budget_in_the_store(tmp_path):
    """The trainer's per-epoch record carries the planned steps; the sweep's tracker logs them as a param."""
    from rmask_tune.sweep.tracking import SweepTracker
    from rmask_tune.trainer import run_trial

    small = dict(data_dir=str(DATA), epochs=2, batch_size=4, train_examples=8, dev_examples=4, test_examples=4,
                 quiet=True)
    result = run_trial(dict(model="tiny-llama", task="SST-2", ratio=1e-3, lr=1e-2, **small))
    assert [r["budget_steps"] for r in result["epochs"]] == [4, 4] == [result["optimizer_steps"]] * 2
    tracker = SweepTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "b", "b", "sweep-1", tmp_path / "artifacts")
    tracker.open({})
    tracker.trial_run("t0", "t0", {"model": "tiny-llama", "task": "SST-2", "epochs": 2, "train_examples": 1000,
                                   "batch_size": 4})
    for record in result["epochs"]:
        tracker.log_epoch("t0", record)
    tracker.finish_trial("t0", "finished", {"epoch": 2, "best_dev_metric": 0.5})
    trials, _ = load_trials(resolve_source(str(tmp_path)))
    assert [t.steps for t in trials] == [4]  # recorded (on the real split), not derived from train_examples 1000


def test_the_mixed_store_refusal_keeps_to_one_budget():
    def trial(dev: int, epochs: int, n: int):
        params = {"model": "m", "task": "SST-2", "method": "random_masking", "ratio": "0.01", "lr": "0.1",
                  "seed": str(n), "epochs": str(epochs), "train_examples": "256", "batch_size": "8",
                  "dev_examples": str(dev)}
        return trial_of(RunRecord(f"r{n}", "FINISHED", n, n, params, {}, {}, {}))

    check_one_sweep([trial(200, 2, 0), trial(500, 5, 1)], "e")  # two budgets: one law, two cells
    with pytest.raises(RmaskError, match=r"mixes sweeps: its m SST-2 trials ran with dev_examples 200 \(1 trial\(s\)\) "
                                         r"and 500 \(1 trial\(s\)\), all at a budget of 64 steps"):
        check_one_sweep([trial(200, 2, 0), trial(500, 2, 1)], "e")


def test_the_budget_law_recovers_g_and_b_from_per_example_results(budget_report):
    law = load_law(budget_report / "law.json")
    shared = law.shared
    assert {p.steps for p in law.points} == set(BUDGETS) and len(law.points) == 18
    assert shared.steps_range == (64, 625) and law.budget() == 625  # six optima at each budget; ties: the larger
    assert shared.g_ci[0] < G < shared.g_ci[1] and shared.g_ci[1] < -0.2  # g found, and not zero
    assert shared.b_ci[0] < B < shared.b_ci[1]
    assert shared.b_change_ci[0] < 0 < shared.b_change_ci[1]  # b does not depend on the budget here
    # The offsets are at the centre s0 of the budgets (log10 steps); the pairs' difference is the true one.
    rte, sst = (shared.offsets[shared.pairs.index(f"m/{t}")] for t in ("RTE", "SST-2"))
    assert rte - sst == pytest.approx(0.4, abs=0.1)
    report = (budget_report / "README.md").read_text()
    assert "| Model | Task | Ratio | 64 steps | 200 steps | 625 steps |" in report
    assert "Budget term: + g · (log10 steps" in report and "no evidence that b changes with the budget" in report
    assert "Random Masking 1% · 625 steps" in report  # the results table names each row's budget


def test_budgets_from_separate_sweeps_join_in_one_report(budget_report, tmp_path):
    """The sittings of item 2: each budget's sweep exported on its own, reported together with --also."""
    budget_export(tmp_path / "64.json.gz", budgets={64: BUDGETS[64]})
    budget_export(tmp_path / "longer.json.gz", budgets={k: BUDGETS[k] for k in (200, 625)})
    done = cli(["report", tmp_path / "64.json.gz", "--also", tmp_path / "longer.json.gz", "--out", tmp_path / "r",
                "--bootstrap", "100"])
    assert done.code == 0, done.err
    assert "budget term: lr* ∝ steps^" in done.out and "leave-one-budget-out" in done.out
    joined, whole = (load_law(folder / "law.json").shared for folder in (tmp_path / "r", budget_report))
    assert [joined.g, joined.b, *joined.offsets] == pytest.approx([whole.g, whole.b, *whole.offsets])
    # The compute section counts each budget on its own row (what the search spent at each budget).
    readme = (tmp_path / "r" / "README.md").read_text()
    assert "| Model | Method | Budget | Trials | Trial-epochs | Device hours |" in readme
    for steps in BUDGETS:  # 2 tasks x 2 seeds x (3 ratios x 7 LRs) Random Masking trials per budget
        assert f"| m | Random Masking | {steps} steps | 84 |" in readme


def test_a_budget_swept_on_fewer_tasks_is_not_reported_as_missing_them(tmp_path):
    """Item 2's sittings: the longer budgets run SST-2 only, beside a 64-step sweep of two tasks. The rows at 200
    steps lack RTE by design, which the report's missing list must not flag (it did: every row, every budget)."""
    budget_export(tmp_path / "64.json.gz", budgets={64: BUDGETS[64]})
    budget_export(tmp_path / "200.json.gz", budgets={200: BUDGETS[200]}, tasks=("SST-2",))
    done = cli(["report", tmp_path / "64.json.gz", "--also", tmp_path / "200.json.gz", "--out", tmp_path / "r",
                "--bootstrap", "20"])
    assert done.code == 0, done.err
    readme = (tmp_path / "r" / "README.md").read_text()
    notes = readme.split("## What is missing or partial")[1].split("## 1.")[0]
    assert "| m | Random Masking 0.1% · 200 steps |" in readme and "| m | Frozen · 200 steps |" in readme
    assert "no trial" not in notes, notes


def test_a_b_that_moves_with_the_budget_is_detected(tmp_path):
    budget_export(tmp_path / "export.json.gz", b_change=0.4)
    done = cli(["report", tmp_path / "export.json.gz", "--out", tmp_path / "report", "--bootstrap", "100"])
    assert done.code == 0, done.err
    shared = load_law(tmp_path / "report" / "law.json").shared
    assert 0 < shared.b_change_ci[0] and shared.b_change_ci[0] < 0.4 < shared.b_change_ci[1]
    assert "the interval excludes 0, b changes with the budget" in (tmp_path / "report" / "README.md").read_text()


def test_leave_one_budget_out_never_sees_the_held_out_budget(budget_report):
    law = load_law(budget_report / "law.json")
    rows = law.validation.leave_one_budget_out
    points = law.points
    assert {r.steps for r in rows} == set(BUDGETS) and all(r.source == BUDGET_TERM for r in rows)
    for row in rows:
        rest = fit_shared([p for p in points if p.steps != row.steps])  # the law without that budget
        pair = rest.pairs.index(f"m/{row.task}")
        expected = rest.centre(rest.offsets[pair], row.ratio, row.steps)
        assert math.log10(row.predicted_lr) == pytest.approx(expected)
        assert expected != pytest.approx(law.shared.centre(law.shared.offsets[pair], row.ratio, row.steps))
    summary = law.validation.summary["leave_one_budget_out"]
    assert summary.cells == len(rows) == 18 and summary.mean_error_steps < 1.5
    # Two budgets leave one to fit on: no budget term; the other budget's law as it is, labelled so.
    two = [p for p in points if p.steps != 200]
    from rmask_tune.validation import leave_one_budget_out

    curves = {(r.model, r.task, r.ratio, r.steps): ([r.best_grid_lr / 10, r.best_grid_lr], [0.5, 0.6])
              for r in rows if r.steps != 200}
    assert {r.source for r in leave_one_budget_out(two, curves)} == {NO_BUDGET_TERM}
    text = (budget_report / "README.md").read_text()
    assert "Leave-one-budget-out: every optimum at one training budget is hidden" in text
    assert "the held-out budget's optima are out of the fit" in text


def test_the_budget_term_is_scored_against_ignoring_the_budget(budget_report):
    """The baseline leave-one-budget-out has to beat: the other budgets' optima in one law without a budget term.
    With g = -0.5 it misplaces the outer budgets by about 0.3 decades; it never sees the held-out budget either."""
    law = load_law(budget_report / "law.json")
    ignored = law.validation.leave_one_budget_out_budget_ignored
    assert {r.source for r in ignored} == {BUDGET_IGNORED} and len(ignored) == 18
    for row in ignored:
        rest = fit_shared([replace(p, steps=None) for p in law.points if p.steps != row.steps])
        assert rest.g is None
        offset = rest.offsets[rest.pairs.index(f"m/{row.task}")]
        assert math.log10(row.predicted_lr) == pytest.approx(rest.centre(offset, row.ratio))
    summary = law.validation.summary

    def error(rows, steps):
        return sum(r.error_steps for r in rows if r.steps == steps) / 6

    for steps in (64, 625):  # the outer budgets, which the others' pooled optima miss by the budget term
        assert error(law.validation.leave_one_budget_out, steps) + 0.3 < error(ignored, steps)
    assert summary["leave_one_budget_out"].mean_regret < summary["leave_one_budget_out_budget_ignored"].mean_regret
    text = (budget_report / "README.md").read_text()
    assert "Leave-one-budget-out against a law that ignores the budget" in text
    assert "| Held-out budget | With the budget term | Budget ignored |" in text and "| 625 steps | " in text
    # with two budgets the baseline is leave-one-budget-out's own prediction: not repeated
    from rmask_tune.validation import leave_one_budget_out

    curves = {(r.model, r.task, r.ratio, r.steps): ([r.best_grid_lr / 10, r.best_grid_lr], [0.5, 0.6]) for r in ignored}
    assert leave_one_budget_out([p for p in law.points if p.steps != 200], curves, budget_term=False) == []


def test_recommend_steps_inside_and_outside_the_fitted_budgets(budget_report):
    law_json = budget_report / "law.json"
    shared = load_law(law_json).shared

    def ask(*extra):
        return cli(["recommend", "--law", law_json, "--model", "m", "--task", "SST-2", "--ratio", "1e-3", *extra])

    inside = ask("--steps", "300", "--json")
    assert inside.code == 0 and inside.err == "", inside.err
    answer = json.loads(inside.out)
    i = shared.pairs.index("m/SST-2")
    assert math.log10(answer["lr"]) == pytest.approx(shared.centre(shared.offsets[i], 1e-3, 300))
    assert answer["budget"]["steps"] == 300 and not answer["budget"]["steps_extrapolated"]
    short, long = (json.loads(ask("--steps", s, "--json").out)["lr"] for s in ("64", "625"))
    assert long < answer["lr"] < short  # g < 0: the longer the run, the smaller the optimal LR
    outside = ask("--steps", "5000")
    assert outside.code == 0
    assert "warning: 5000 steps is outside the fitted budgets 64 – 625 steps" in outside.err
    assert "for 5000 optimizer steps (--steps)" in outside.out
    default = ask()
    assert default.code == 0 and "for 625 optimizer steps (the law's own budget)" in default.out
    for bad in ("0", "-10"):
        refused = ask("--steps", bad)
        assert refused.one_line_error and "--steps must be a positive number of optimizer steps" in refused.err


def test_a_budget_term_without_its_budgets_is_refused(budget_report, tmp_path):
    law = json.loads((budget_report / "law.json").read_text())
    del law["shared"]["steps_range"]
    (tmp_path / "law.json").write_text(json.dumps(law))
    done = cli(["recommend", "--law", tmp_path / "law.json", "--model", "m", "--task", "SST-2", "--ratio", "1e-3"])
    assert done.one_line_error and "shared: g, s0 and steps_range come together" in done.err


def _without_budgets(value):
    """A law.json's content as written before budgets were recorded: no ``steps`` anywhere."""
    if isinstance(value, dict):
        return {k: _without_budgets(v) for k, v in value.items() if k not in ("steps", "steps_range")}
    if isinstance(value, list):
        return [_without_budgets(v) for v in value]
    return value


def test_a_law_without_budget_term_recommends_as_before(tmp_path):
    committed = REPO / "reports" / "law-across-tasks" / "law.json"
    old = tmp_path / "old" / "law.json"  # the committed law as it was written before budgets were recorded
    old.parent.mkdir()
    old.write_text(json.dumps(_without_budgets(json.loads(committed.read_text()))))
    law = load_law(old)
    shared = law.shared
    assert shared.g is None and law.budget() is None
    # Before budgets: the pair's own offset, b, and the t-quantile interval, as the committed file gives them.
    before = json.loads(committed.read_text())["shared"]
    i = before["pairs"].index("smollm2-135m/SST-2")
    centre = before["offsets"][i] + before["b"] * (math.log10(1e-4) - before["x0"])
    plain = cli(["recommend", "--law", old, "--model", "smollm2-135m", "--task", "SST-2", "--ratio", "1e-4",
                 "--json"])
    assert plain.code == 0 and plain.err == ""
    answer = json.loads(plain.out)
    assert math.log10(answer["lr"]) == pytest.approx(centre) and "budget" not in answer
    steps = cli(["recommend", "--law", old, "--model", "smollm2-135m", "--task", "SST-2", "--ratio", "1e-4",
                 "--steps", "625", "--json"])
    assert steps.code == 0 and json.loads(steps.out)["lr"] == answer["lr"]
    assert "the law has no budget term" in steps.err and "not for --steps 625" in steps.err
    # The committed law records its one budget (64 steps): no budget term, the same LR, and its own budget asks
    # for no warning.
    assert load_law(committed).budget() == 64 and load_law(committed).shared.g is None
    ask = ["recommend", "--law", committed, "--model", "smollm2-135m", "--task", "SST-2", "--ratio", "1e-4"]
    own = cli(ask + ["--steps", "64", "--json"])
    assert own.code == 0 and own.err == "" and json.loads(own.out)["lr"] == answer["lr"]
    assert "the LR is for its own budget of 64 steps, not for --steps 625" in cli(ask + ["--steps", "625"]).err


def test_pairs_each_at_their_own_budget_leave_the_budget_term_out():
    # g is told apart from the offsets only by a pair measured at two budgets; without one the fit keeps b alone.
    points = [LawPoint(model="m", task=task, ratio=r, steps=steps, se=0.05, log10_lr=truth(task, r, steps))
              for task, steps in (("SST-2", 64), ("RTE", 625)) for r in RATIOS]
    fit = fit_shared(points)
    assert fit.g is None and fit.b_change is None and fit.b == pytest.approx(B, abs=1e-6)
    assert fit.steps_range == (64, 625)
    both = fit_shared(points + [replace(points[0], steps=625, log10_lr=truth("SST-2", RATIOS[0], 625))])
    assert both.g == pytest.approx(G, abs=1e-6)


def _budget_sweep(tmp_path, epochs: int, train: int):
    from rmask_tune.sweep.validate import load_space

    path = tmp_path / f"budget-{epochs}x{train}.yaml"
    path.write_text(f"""\
name: budget-{epochs}x{train}
models: [tiny-llama]
tasks: [SST-2]
methods:
  random_masking: {{ratios: ["0.1%"], lr: {{min: 1e-4, max: 1e-1, per_decade: 2}}}}
training: {{epochs: {epochs}, batch_size: 8}}
data: {{data_dir: {DATA}, train_examples: {train}, dev_examples: 8, test_examples: 8}}
storage_path: {tmp_path / 'runs'}
""")
    return load_space(path)


def test_lr_from_centres_on_the_sweeps_budget_and_says_when_it_extrapolates(budget_report, tmp_path, capsys):
    from rmask_tune.law import narrow_grid
    from rmask_tune.sweep.resolve import SweepOptions, resolve_space

    law_json = str(budget_report / "law.json")
    law = load_law(law_json)
    for (epochs, train), steps, outside in (((5, 320), 200, False), ((2, 8000), 2000, True)):
        space = resolve_space(_budget_sweep(tmp_path, epochs, train), SweepOptions(lr_from=law_json))
        assert space.budget("SST-2", "random_masking") == steps
        (cell,) = space.cells()
        assert list(cell.lrs) == narrow_grid(law, 1e-3, steps=steps)  # tiny-llama is new to the law: pooled
        assert list(cell.lrs) != narrow_grid(law, 1e-3)  # the law's own budget (625 steps) is not this sweep's
        err = capsys.readouterr().err
        assert ("outside the budgets the law was fitted on (64 to 625 steps)" in err) is outside


def test_a_prior_without_budget_term_says_for_which_budget_it_speaks(tmp_path, capsys):
    from rmask_tune.sweep.resolve import SweepOptions, resolve_space

    committed = REPO / "reports" / "law-across-tasks" / "law.json"
    old = tmp_path / "old-law.json"
    old.write_text(json.dumps(_without_budgets(json.loads(committed.read_text()))))
    for law, said in ((committed, "its learning rates are for 64 steps, and this sweep trains 200 steps; the search "
                                  "starts from those optima and fits the budget exponent once it locates one"),
                      (old, "cannot learn a budget exponent (refit the law with `rmask-tune report`")):
        resolve_space(_budget_sweep(tmp_path, 5, 320), SweepOptions(prior=str(law)))
        assert said in capsys.readouterr().err
    resolve_space(_budget_sweep(tmp_path, 2, 256), SweepOptions(prior=str(committed)))  # its own budget: silent
    assert capsys.readouterr().err == ""
