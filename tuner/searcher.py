"""OptunaSearch that tells Optuna the truth about trials ASHA stopped.

Ray 2.60 hands a scheduler-stopped trial to `on_trial_complete(id, last_result, error=False)` exactly like
a finished one, and the stock OptunaSearch tells it COMPLETE with its early-rung value. TPE then treats a
1-epoch score as a final score and compares it with 10-epoch ones. Here a trial that ends before
`max_t` (or that says it diverged) is told PRUNED at the step it reached; TPE still uses PRUNED trials
(ranked by how far they got), while importance and GP samplers rightly skip them. A trial that finished is
told its best epoch's score (best_<objective>), not its last epoch's as Ray's OptunaSearch does: the trial
promote and the summary rank first is then Optuna's best trial too.

A trial retried from a checkpoint older than its last report (a worker killed between its report and
Ray's save; a resumed sweep) reports those epochs again: Optuna keeps the first value, and here says
nothing instead of warning "already reported" once per repeated epoch.

A driver killed after it told Optuna a trial ended but before Ray saved this searcher's state leaves the
study with that trial finished while the restored searcher still has it running: `--resume` hands Ray's
rerun of it here again. Optuna keeps what it was told first; here that is not an error (it made the trial
fail three times, "errored" though it had completed).

An errored trial was told FAIL, and Optuna cannot reopen a finished trial; when `--resume` runs it again to
its end (resume_errored), its result goes into the study as a new finished trial with the same parameters
(user attribute `lunartune_retry_of`: the failed trial's number), so TPE learns from the retry. Ray's
ConcurrencyLimiter drops that completion (the trial is no longer live to it) and does not count the retry
against `max_concurrent`: RetryPassingLimiter does both.
"""
from __future__ import annotations

import math

from optuna.trial import TrialState, create_trial
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from tuner.objective import best_name

DIVERGED = "diverged"  # result flag a trainable sets when its loss went non-finite (it then stops itself)
STATUS_ATTR = "lunartune_status"  # Optuna user attribute: completed | pruned | diverged | errored | unfinished
RETRY_ATTR = "lunartune_retry_of"  # Optuna user attribute: number of the FAILed trial this one reruns
RAY_TRIAL_ATTR = "ray_trial_id"  # Optuna user attribute: the Ray trial (its MLflow run has the same tag)
MLFLOW_RUN_ATTR = "mlflow_run_id"  # Optuna user attribute: the trial's MLflow child run, once it reported one
RUN_ID = "mlflow_run_id"  # result key: the trial's MLflow child run (tuner.trainable reports it)


class PruningAwareOptunaSearch(OptunaSearch):
    """OptunaSearch + PRUNED for trials that ended before `max_t` of `time_attr`, or diverged."""

    def __init__(self, *args, max_t: int, time_attr: str = "training_iteration", **kwargs):
        super().__init__(*args, **kwargs)
        self._max_t = max_t
        self._time_attr = time_attr

    def suggest(self, trial_id: str):
        config = super().suggest(trial_id)
        if trial_id in self._ot_trials:  # Optuna's trial -> Ray's trial -> MLflow's run (tagged ray_trial_id)
            self._ot_trials[trial_id].set_user_attr(RAY_TRIAL_ATTR, trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict):
        ot_trial = self._ot_trials.get(trial_id)
        if self.is_failed_retry(trial_id):
            value, values = result.get(self.metric), self._retried().setdefault(trial_id, {})
            if values is not None and value is not None and math.isfinite(value):  # a step's first report stays
                values.setdefault(int(result[self._time_attr]), value)
            return
        if ot_trial is not None and trial_id not in self._completed_trials:
            stored, step = _stored(ot_trial), int(result[self._time_attr])
            if not stored.state.is_finished() and step not in stored.intermediate_values:
                # keyed by time_attr (the epoch), as ASHA and _tell_pruned count, not by Ray's training_iteration:
                # that restarts from Ray's checkpoint, which can be older than the one the trial resumed from
                ot_trial.report(result[self.metric], step)
            return
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if self.is_failed_retry(trial_id):
            if result and not error and self._retried().get(trial_id, {}) is not None:
                self._add_retry(trial_id, result)
            return
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and trial_id not in self._completed_trials and _stored(ot_trial).state.is_finished():
            self._completed_trials.add(trial_id)  # an earlier driver told Optuna already: that stays
            return
        stopped_early = bool(result) and (result.get(DIVERGED) or result.get(self._time_attr, self._max_t) < self._max_t)
        if error or not stopped_early or trial_id in self._completed_trials:
            if error and trial_id in self._ot_trials and trial_id not in self._completed_trials:
                self._ot_trials[trial_id].set_user_attr(STATUS_ATTR, "errored")  # as its MLflow run's status tag
            if result and not error and trial_id in self._ot_trials and trial_id not in self._completed_trials:
                self._ot_trials[trial_id].set_user_attr(STATUS_ATTR, "completed")
                _note_run(self._ot_trials[trial_id], result)
                self._report_last_step(self._ot_trials[trial_id], result)
                result = {**result, self.metric: self._best_value(result)}  # Ray's would tell the last epoch's
            return super().on_trial_complete(trial_id, result, error)
        self._tell_pruned(trial_id, result)

    def _report_last_step(self, ot_trial, result: dict) -> None:
        """The final result's step, which Ray hands only to on_trial_complete when the scheduler stops the
        trial on it (ASHA at max_t or at a rung): without it a completed trial's curve lacks its last epoch
        (a 1-epoch sweep had no intermediate values at all), and a pruned one could not be ranked by TPE."""
        step, value = int(result[self._time_attr]), result.get(self.metric)
        if value is not None and math.isfinite(value) and step not in _stored(ot_trial).intermediate_values:
            ot_trial.report(value, step)

    def _best_value(self, result: dict):
        """A finished trial's value for Optuna: its best epoch's score, as promote and the summary rank it
        (tuner.objective), not its last epoch's; the trial reports it each epoch as best_<objective>."""
        return result.get(best_name(self.metric), result.get(self.metric))

    def _tell_pruned(self, trial_id: str, result: dict) -> None:
        ot_trial = self._ot_trials[trial_id]
        self._report_last_step(ot_trial, result)
        ot_trial.set_user_attr(STATUS_ATTR, DIVERGED if result.get(DIVERGED) else "pruned")
        _note_run(ot_trial, result)
        self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)

    def is_failed_retry(self, trial_id: str) -> bool:
        """Is this a trial Optuna was told FAIL (it errored) that Ray runs again?"""
        ot_trial = self._ot_trials.get(trial_id)
        return trial_id in self._completed_trials and ot_trial is not None and \
            _stored(ot_trial).state == TrialState.FAIL

    def _retried(self) -> dict:
        """trial id -> {step: value} reported by a retry of a FAILed trial, or None once the retry is in the
        study (saved with the searcher)."""
        if not hasattr(self, "_retry_values"):  # a searcher restored from before this attribute existed
            self._retry_values = {}
        return self._retry_values

    def _add_retry(self, trial_id: str, result: dict) -> None:
        failed = _stored(self._ot_trials[trial_id])
        # the epochs before the failure (the retry resumed after them) and the retry's; a step's first report stays
        values = {**(self._retried().get(trial_id) or {}), **failed.intermediate_values}
        self._retried()[trial_id] = None  # in the study from now on
        step, value = int(result[self._time_attr]), result.get(self.metric)
        if value is not None and math.isfinite(value):
            values.setdefault(step, value)
        stopped_early = bool(result.get(DIVERGED)) or step < self._max_t
        status = DIVERGED if result.get(DIVERGED) else "pruned" if stopped_early else "completed"
        self._ot_study.add_trial(create_trial(
            params=failed.params, distributions=failed.distributions, intermediate_values=values,
            state=TrialState.PRUNED if stopped_early else TrialState.COMPLETE,
            value=None if stopped_early else self._best_value(result),
            user_attrs={STATUS_ATTR: status, RETRY_ATTR: failed.number, RAY_TRIAL_ATTR: trial_id,
                        **({MLFLOW_RUN_ATTR: result[RUN_ID]} if result.get(RUN_ID) else {})}))


class RetryPassingLimiter(ConcurrencyLimiter):
    """ConcurrencyLimiter that counts the errored trials `--resume` runs again, and hands the searcher their
    completions.

    Ray reruns every errored trial (resume_errored) without asking the searcher, and the stock limiter no
    longer counts it live: up to `max_concurrent` new trials would start beside the retries, and the
    retries' completions would be dropped, so Optuna never heard. Here the limiter keeps the trials that
    ended in error in its own state, which Ray saves in the same snapshot as the trials' statuses: after a
    restore, exactly those are rerun. They are counted live at the first suggestion (except any that ended
    already) and leave the count when they end. Completions of other trials it does not count as live (a
    finished trial Ray runs on after a restore) stay dropped, as before."""

    def set_state(self, state: dict):
        super().set_state(state)
        self._rerun = set(getattr(self, "_errored", ()))  # what Ray reruns now, not yet counted

    def suggest(self, trial_id: str):
        for retry in getattr(self, "_rerun", set()) - self.live_trials:
            self.live_trials.add(retry)
            self.num_unfinished_live_trials += 1
        self._rerun = set()
        return super().suggest(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        errored = getattr(self, "_errored", set())  # a limiter pickled before this attribute existed
        self._errored = (errored | {trial_id}) if error else (errored - {trial_id})
        self._rerun = getattr(self, "_rerun", set()) - {trial_id}  # ended before it was counted
        if trial_id not in self.live_trials and self.searcher.is_failed_retry(trial_id):
            return self.searcher.on_trial_complete(trial_id, result=result, error=error)
        return super().on_trial_complete(trial_id, result=result, error=error)


def _note_run(ot_trial, result: dict) -> None:
    """The MLflow run the trial logged to (before Optuna is told: a finished trial takes no attributes)."""
    if result.get(RUN_ID):
        ot_trial.set_user_attr(MLFLOW_RUN_ATTR, result[RUN_ID])


def _stored(ot_trial):
    """The trial as the study's storage holds it: state and reported steps, also an earlier driver's."""
    return ot_trial.storage.get_trial(ot_trial._trial_id)
