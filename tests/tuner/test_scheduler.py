"""ResumableASHA: its rungs survive a pickle round trip as Ray's restore makes one, and a state file it cannot
write is a warning, never the end of the sweep."""
from __future__ import annotations

import pickle

from ray.tune.experiment import Trial

from tuner.scheduler import ResumableASHA


def _asha(state_file) -> ResumableASHA:
    return ResumableASHA(state_file, time_attr="epoch", metric="val_miou", mode="max", max_t=4, grace_period=1,
                         reduction_factor=2)


def _run(asha: ResumableASHA, scores: dict[str, float]) -> None:
    for name, score in scores.items():
        trial = Trial("__fake", config={}, stub=True, trial_id=name)
        asha.on_trial_add(None, trial)
        asha.on_trial_complete(None, trial, {"epoch": 1, "val_miou": score})


def _rung_one(asha: ResumableASHA) -> dict:
    (bracket,) = asha._brackets
    return next(recorded for milestone, recorded in bracket._rungs if milestone == 1)


def test_a_restored_copy_goes_on_with_the_rungs_filled_since_ray_pickled_it(tmp_path):
    asha = _asha(tmp_path / "e.asha.pkl")
    pickled_at_start = pickle.dumps(asha)  # Ray pickles the scheduler with the sweep once, when it starts
    _run(asha, {"a": 0.3, "b": 0.5})
    restored = pickle.loads(pickled_at_start)
    _run(restored, {"c": 0.4})  # its first use reads the file back
    assert _rung_one(restored) == {"a": 0.3, "b": 0.5, "c": 0.4}
    fresh = _asha(tmp_path / "e.asha.pkl")  # a new sweep: does not read an earlier one's state
    _run(fresh, {"d": 0.1})
    assert _rung_one(fresh) == {"d": 0.1}


def test_a_state_file_that_cannot_be_written_is_a_warning(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    asha = _asha(tmp_path / "afile" / "e.asha.pkl")  # under a file: no folder can be made there
    _run(asha, {"a": 0.3, "b": 0.5})
    err = capsys.readouterr().err
    assert err.count("cannot save ASHA's state") == 1 and "its ASHA starts with empty rungs" in err
    assert _rung_one(asha) == {"a": 0.3, "b": 0.5}  # scheduling went on
