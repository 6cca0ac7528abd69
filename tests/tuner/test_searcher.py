"""PRUNED-aware OptunaSearch: ASHA-stopped and diverged trials reach Optuna as PRUNED, not COMPLETE."""
from __future__ import annotations

import warnings

import optuna
import pytest
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from tuner.searcher import DIVERGED, RETRY_ATTR, STATUS_ATTR, PruningAwareOptunaSearch, RetryPassingLimiter

optuna.logging.set_verbosity(optuna.logging.WARNING)
MAX_T = 4


def _space(trial):
    trial.suggest_float("x", 0.0, 1.0)


def _searcher(cls, **kw):
    return cls(space=_space, metric="score", mode="max", seed=0, **kw)


def _run(searcher, trial_id: str, steps: int, **last) -> None:
    searcher.suggest(trial_id)
    result = {}
    for step in range(1, steps + 1):
        result = {"score": 0.1 * step, "training_iteration": step}
        searcher.on_trial_result(trial_id, result)
    searcher.on_trial_complete(trial_id, {**result, **last})


def _states(searcher) -> list:
    return [t.state for t in searcher._ot_study.get_trials()]


def test_stock_optuna_search_tells_an_early_stop_complete():
    """The bug the subclass exists for: if this starts failing, Ray fixed it and the subclass can go."""
    stock = _searcher(OptunaSearch)
    _run(stock, "a", steps=1)
    assert _states(stock) == [TrialState.COMPLETE]


def test_early_stop_is_pruned_and_full_run_is_complete():
    searcher = _searcher(PruningAwareOptunaSearch, max_t=MAX_T)
    _run(searcher, "early", steps=1)
    _run(searcher, "full", steps=MAX_T)
    early, full = searcher._ot_study.get_trials()
    assert early.state == TrialState.PRUNED and early.intermediate_values == {1: pytest.approx(0.1)}
    assert early.user_attrs[STATUS_ATTR] == "pruned"
    assert full.state == TrialState.COMPLETE and full.value == pytest.approx(0.4)
    assert full.user_attrs[STATUS_ATTR] == "completed"


def test_a_finished_trial_is_told_its_best_epochs_score_not_its_last():
    """Promote, the summary and the kept checkpoints rank a trial by its best epoch (tuner.objective); the
    trial reports that as best_<objective>. Ray's OptunaSearch told the last epoch's score."""
    searcher = _searcher(PruningAwareOptunaSearch, max_t=2)
    searcher.suggest("peaked")
    searcher.on_trial_result("peaked", {"score": 0.40, "best_score": 0.40, "training_iteration": 1})
    searcher.on_trial_complete("peaked", {"score": 0.34, "best_score": 0.40, "training_iteration": 2})
    (trial,) = searcher._ot_study.get_trials()
    assert (trial.state, trial.value) == (TrialState.COMPLETE, pytest.approx(0.40))
    assert trial.intermediate_values == pytest.approx({1: 0.40, 2: 0.34})  # the curve as it was
    stock = _searcher(OptunaSearch)
    stock.suggest("peaked")
    stock.on_trial_complete("peaked", {"score": 0.34, "best_score": 0.40, "training_iteration": 2})
    assert stock._ot_study.get_trials()[0].value == pytest.approx(0.34)  # what the subclass corrects


def test_diverged_trial_is_pruned_with_its_status_and_errors_fail():
    searcher = _searcher(PruningAwareOptunaSearch, max_t=MAX_T)
    _run(searcher, "nan", steps=2, **{DIVERGED: True})
    searcher.suggest("crash")
    searcher.on_trial_complete("crash", None, error=True)
    nan, crash = searcher._ot_study.get_trials()
    assert (nan.state, nan.user_attrs[STATUS_ATTR]) == (TrialState.PRUNED, DIVERGED)
    assert crash.state == TrialState.FAIL


def test_pruned_trial_without_intermediate_report_still_gets_its_value():
    searcher = _searcher(PruningAwareOptunaSearch, max_t=MAX_T)
    searcher.suggest("t")
    searcher.on_trial_complete("t", {"score": 0.25, "training_iteration": 2})
    (trial,) = searcher._ot_study.get_trials()
    assert trial.state == TrialState.PRUNED and trial.intermediate_values == {2: 0.25}


def test_asha_stops_reach_optuna_as_pruned_in_a_real_ray_sweep(local_ray, tmp_path):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter

    def trainable(config):
        for epoch in range(1, MAX_T + 1):
            tune.report({"score": config["x"] * epoch})

    searcher = _searcher(PruningAwareOptunaSearch, max_t=MAX_T)
    tuner = tune.Tuner(trainable, tune_config=tune.TuneConfig(
        search_alg=ConcurrencyLimiter(searcher, max_concurrent=2), num_samples=6,
        scheduler=ASHAScheduler(metric="score", mode="max", max_t=MAX_T, grace_period=1, reduction_factor=2)),
        run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0))
    results = tuner.fit()
    trials = searcher._ot_study.get_trials()
    stopped = [r for r in results if r.metrics["training_iteration"] < MAX_T]
    assert len(trials) == 6 and stopped, "ASHA should stop some of 6 trials"
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert len(pruned) == len(stopped)
    assert all(max(t.intermediate_values) < MAX_T for t in pruned)
    assert all(t.state == TrialState.COMPLETE for t in trials if t not in pruned)


def test_an_epoch_reported_again_keeps_its_first_value_without_a_warning():
    """A trial retried from an older checkpoint reports epoch 2 again: the first value stays, no warning."""
    searcher = _searcher(PruningAwareOptunaSearch, max_t=MAX_T)
    searcher.suggest("retried")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Optuna's "already reported" would raise here
        for step, score in ((1, 0.1), (2, 0.2), (2, 0.25), (3, 0.3), (4, 0.4)):
            searcher.on_trial_result("retried", {"score": score, "training_iteration": step})
    searcher.on_trial_complete("retried", {"score": 0.4, "training_iteration": MAX_T})
    (trial,) = searcher._ot_study.get_trials()
    assert trial.intermediate_values == pytest.approx({1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4})
    assert trial.state == TrialState.COMPLETE


def test_the_last_epoch_handed_only_to_on_trial_complete_is_in_the_curve():
    """When ASHA stops a trial on a result (at max_t too), Ray hands that result to on_trial_complete only."""
    searcher = _searcher(PruningAwareOptunaSearch, max_t=1)
    searcher.suggest("one-epoch")
    searcher.on_trial_complete("one-epoch", {"score": 0.3, "training_iteration": 1})
    (trial,) = searcher._ot_study.get_trials()
    assert (trial.state, trial.value, trial.intermediate_values) == (TrialState.COMPLETE, 0.3, {1: 0.3})


def test_steps_are_epochs_even_when_rays_iteration_count_lags_after_a_restore():
    """A node died between a report and Ray's save: the trial resumes from its newer checkpoint (epoch 3), but
    Ray counts training_iteration on from its own older one (2). Optuna gets each epoch at its epoch."""
    searcher = _searcher(PruningAwareOptunaSearch, max_t=MAX_T, time_attr="epoch")
    searcher.suggest("t")
    for epoch, iteration in ((1, 1), (2, 2), (3, 3), (4, 3)):  # after the restore, epoch 4 is iteration 3
        searcher.on_trial_result("t", {"score": 0.1 * epoch, "epoch": epoch, "training_iteration": iteration})
    searcher.on_trial_complete("t", {"score": 0.4, "epoch": 4, "training_iteration": 3})
    (trial,) = searcher._ot_study.get_trials()
    assert trial.intermediate_values == pytest.approx({1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4})
    assert trial.state == TrialState.COMPLETE


@pytest.mark.parametrize("steps", [MAX_T, 2], ids=["completed", "pruned"])
def test_a_trial_an_earlier_driver_finished_is_handed_over_again_after_a_restore(tmp_path, steps):
    """The driver was killed after telling Optuna, before Ray saved the searcher: the restored searcher still
    has the trial running while the study has it finished. Ray reruns it; that must not make it fail."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    killed = _searcher(PruningAwareOptunaSearch, max_t=MAX_T, storage=storage, study_name="s")
    killed.suggest("t")
    for step in range(1, steps + 1):
        killed.on_trial_result("t", {"score": 0.1 * step, "training_iteration": step})
    killed.save(str(tmp_path / "searcher.pkl"))  # Ray's last save of the searcher before the kill
    killed.on_trial_complete("t", {"score": 0.1 * steps, "training_iteration": steps})
    told = optuna.load_study(study_name="s", storage=storage).trials[0]

    resumed = _searcher(PruningAwareOptunaSearch, max_t=MAX_T, storage=storage, study_name="s")
    resumed.restore(str(tmp_path / "searcher.pkl"))
    for step in range(1, MAX_T + 1):  # Ray's rerun reports from the checkpoint on, maybe past where it stopped
        resumed.on_trial_result("t", {"score": 0.5, "training_iteration": step})
    resumed.on_trial_complete("t", {"score": 0.5, "training_iteration": MAX_T})
    (trial,) = optuna.load_study(study_name="s", storage=storage).trials
    assert (trial.state, trial.value, trial.intermediate_values, trial.user_attrs) == \
        (told.state, told.value, told.intermediate_values, told.user_attrs)
    assert trial.state == (TrialState.COMPLETE if steps == MAX_T else TrialState.PRUNED)


@pytest.mark.parametrize("steps", [MAX_T, 2], ids=["completed", "pruned"])
def test_an_errored_trial_run_again_by_resume_enters_the_study_as_a_new_trial(tmp_path, steps):
    """Told FAIL when it errored; `--resume` (resume_errored) runs it again from the restored searcher.
    Optuna cannot reopen it, so the retry's result is added as a finished trial with the same parameters."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")

    def limited():  # as the sweep wires it: the stock ConcurrencyLimiter would drop the retry's completion
        return RetryPassingLimiter(_searcher(PruningAwareOptunaSearch, max_t=MAX_T, storage=storage,
                                             study_name="s"), max_concurrent=2)
    first = limited()
    first.suggest("t")
    first.on_trial_result("t", {"score": 0.1, "training_iteration": 1})
    first.on_trial_complete("t", None, error=True)
    first.save(str(tmp_path / "searcher.pkl"))

    resumed = limited()
    resumed.restore(str(tmp_path / "searcher.pkl"))
    resumed.set_state(first.get_state())  # Ray restores the limiter's own state (no live trials) too
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for step in range(2, steps + 1):  # from its checkpoint of step 1
            resumed.on_trial_result("t", {"score": 0.2 * step, "training_iteration": step})
    # its best epoch is the one before its last (as the trial reports it): that is the value Optuna gets
    resumed.on_trial_complete("t", {"score": 0.2 * steps, "best_score": 0.85, "training_iteration": steps})
    failed, retry = optuna.load_study(study_name="s", storage=storage).trials
    assert failed.state == TrialState.FAIL and retry.params == failed.params
    assert failed.user_attrs[STATUS_ATTR] == "errored"
    assert retry.user_attrs[RETRY_ATTR] == failed.number
    assert retry.user_attrs["ray_trial_id"] == failed.user_attrs["ray_trial_id"] == "t"  # one Ray trial, one MLflow run
    # the whole learning curve: the step reported before the failure, then the retry's
    assert retry.intermediate_values == pytest.approx({1: 0.1, **{s: 0.2 * s for s in range(2, steps + 1)}})
    if steps == MAX_T:
        assert (retry.state, retry.value, retry.user_attrs[STATUS_ATTR]) == (TrialState.COMPLETE, 0.85, "completed")
    else:
        assert (retry.state, retry.user_attrs[STATUS_ATTR]) == (TrialState.PRUNED, "pruned")
    resumed.on_trial_complete("t", {"score": 0.9, "training_iteration": MAX_T})  # Ray tells it once; never twice
    assert len(optuna.load_study(study_name="s", storage=storage).trials) == 2


def _errored_then_saved(folder):
    """A `--concurrency 1` sweep whose trial "a" errored and "b" completed, saved as Ray saves it; returns
    a function that builds the searcher `--resume` restores (in Ray's order: the limiter's own state, then
    the searcher's) and the study's storage."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{folder / 'optuna.db'}")

    def limited():
        return RetryPassingLimiter(_searcher(PruningAwareOptunaSearch, max_t=MAX_T, storage=storage,
                                             study_name="s"), max_concurrent=1)
    first = limited()
    assert first.suggest("a") is not None
    first.on_trial_complete("a", None, error=True)
    assert first.suggest("b") is not None
    first.on_trial_complete("b", {"score": 0.5, "training_iteration": MAX_T})
    first.save(str(folder / "searcher.pkl"))
    saved = first.get_state()

    def restored():
        limiter = limited()
        limiter.set_state(saved)
        limiter.restore(str(folder / "searcher.pkl"))
        return limiter
    return restored, storage


def test_an_errored_trial_resume_reruns_counts_against_the_concurrency_limit(tmp_path):
    """Ray reruns an errored trial on `--resume` without asking the searcher: the limiter must count it, or
    `--concurrency 1` would run a new trial beside the retry."""
    restored, storage = _errored_then_saved(tmp_path)
    resumed = restored()  # Ray reruns "a" and asks for a new trial: none while "a" runs
    assert resumed.suggest("c") is None and resumed.live_trials == {"a"}
    resumed.on_trial_complete("a", {"score": 0.7, "training_iteration": MAX_T})
    assert resumed.suggest("c") is not None and resumed.live_trials == {"c"}
    assert [t.state for t in optuna.load_study(study_name="s", storage=storage).trials] == \
        [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE, TrialState.RUNNING]  # a, b, a's retry, c


def test_a_retry_that_ended_before_the_first_suggestion_does_not_hold_a_slot(tmp_path):
    """Counted after it ended (here: it errored again at once), the retry would hold the only slot forever
    and the sweep would hang waiting for a suggestion."""
    restored, _ = _errored_then_saved(tmp_path)
    resumed = restored()
    resumed.on_trial_complete("a", None, error=True)
    assert resumed.suggest("c") is not None and resumed.live_trials == {"c"}
