"""ASHA whose rungs survive `--resume`.

Ray saves a sweep's searcher and stopper with its state, not its scheduler's: a resumed sweep's ASHA started
with empty rungs, so it compared the trials still to run with none of the finished ones and let trials an
uninterrupted sweep would have stopped run to the end. This one writes its state (rungs, counters) to a file
after every change and reads it back the first time Ray uses it after a restore.
"""
from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

from ray.tune.schedulers import ASHAScheduler

_RUNTIME = ("_state_file", "_state_read")  # where the state goes, and whether it was read: not the state itself


class ResumableASHA(ASHAScheduler):
    def __init__(self, state_file: str | Path, **asha_args):
        super().__init__(**asha_args)
        self._state_file, self._state_read = str(state_file), True  # a new sweep: nothing to read back

    def __getstate__(self) -> dict:  # as Ray pickles it with the sweep: a restored copy reads the file first
        return {**self.__dict__, "_state_read": False}

    def on_trial_add(self, tune_controller, trial) -> None:
        self._read_state()
        super().on_trial_add(tune_controller, trial)
        self._write_state()

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        self._read_state()
        action = super().on_trial_result(tune_controller, trial, result)
        self._write_state()
        return action

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._read_state()
        super().on_trial_complete(tune_controller, trial, result)
        self._write_state()

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._read_state()
        self._trial_info.pop(trial.trial_id, None)  # ASHA's own `del` fails on one it never saw
        self._write_state()

    def _read_state(self) -> None:
        if self._state_read or self._state_file is None:
            return
        self._state_read = True
        try:
            with open(self._state_file, "rb") as f:
                saved = pickle.load(f)  # written by _write_state below, in the sweep's own run dir
        except FileNotFoundError:  # interrupted before any trial was added
            return
        self.__dict__.update(saved)

    def _write_state(self) -> None:
        if self._state_file is None:  # could not be written once: not tried at every result
            return
        state = {k: v for k, v in self.__dict__.items() if k not in _RUNTIME}
        partial = f"{self._state_file}.partial"
        try:
            Path(self._state_file).parent.mkdir(parents=True, exist_ok=True)
            with open(partial, "wb") as f:
                pickle.dump(state, f)
            os.replace(partial, self._state_file)
        except OSError as err:  # a full disk must not end the sweep: only a resumed ASHA would start empty
            print(f"lunartune tune: warning: cannot save ASHA's state to {self._state_file} ({err}); if this "
                  f"sweep is resumed, its ASHA starts with empty rungs", file=sys.stderr)
            self._state_file = None
