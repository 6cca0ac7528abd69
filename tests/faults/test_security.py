"""Untrusted files never run code; servers bind loopback; secrets in the environment never reach MLflow."""
from __future__ import annotations

import os

import pytest
import torch

from models.checkpoint import CheckpointError, load_checkpoint
from tuner import tracking
from tuner.space import SpaceError, load_space


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    torch.save({"format": "lunartune-checkpoint", "state_dict": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match=f"{path}: not a readable checkpoint") as refused:
        load_checkpoint(path)
    assert not marker.exists()
    # one line, and no advice to load it unsafely (torch's own text suggests weights_only=False)
    assert "\n" not in str(refused.value) and "weights_only" not in str(refused.value)


def test_a_space_yaml_with_python_tags_is_refused(tmp_path):
    marker, path = tmp_path / "pwned", tmp_path / "evil.yaml"
    path.write_text(f"params: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(SpaceError, match="not valid YAML"):
        load_space(path)
    assert not marker.exists()


def test_servers_the_project_starts_bind_loopback(tmp_path):
    from tuner import ui
    from tuner.cli import CliError
    from tuner.settings import RunPaths

    command = ui._mlflow_server_command(RunPaths(root=tmp_path), ui.DEFAULT_HOST, 5000)
    assert command[command.index("--host") + 1] == "127.0.0.1"
    for host in ("0.0.0.0", "::", "192.168.1.5"):
        with pytest.raises(CliError, match="loopback only"):
            ui._require_loopback(host)


SECRETS = {"MLFLOW_TRACKING_TOKEN": "tok-5ecret-0001", "AWS_SECRET_ACCESS_KEY": "aws-5ecret-0002"}


@pytest.mark.slow
def test_secrets_in_the_environment_never_reach_mlflow(scenes, tiny_space, tmp_path):
    from fault_helpers import Sweeps, tune_args

    sweeps = Sweeps(env=SECRETS)
    try:
        code, out = sweeps.run(tmp_path / "run", *tune_args(tiny_space, scenes, "secrets", samples=1, epochs=1))
    finally:
        sweeps.cleanup()
    assert code == 0, out[-3000:]
    uri = f"sqlite:///{tmp_path / 'run' / 'mlflow.db'}"
    experiment = tracking.find_experiment(uri, "secrets")
    runs = tracking.client(uri).search_runs([experiment.experiment_id])
    assert len(runs) == 2  # parent + child
    for run in runs:
        for value in [*run.data.params.values(), *run.data.tags.values()]:
            assert not any(secret in value for secret in SECRETS.values()), (run.info.run_name, value)
    stored = (tmp_path / "run" / "mlflow.db").read_bytes()
    assert not any(secret.encode() in stored for secret in SECRETS.values())
    artifacts = [p for p in (tmp_path / "run" / "mlartifacts").rglob("*") if p.is_file()]
    assert artifacts  # the trial's checkpoint and model_config.json, the parent's space file
    for path in artifacts:  # a logged config or environment dump would carry them
        assert not any(secret.encode() in path.read_bytes() for secret in SECRETS.values()), path
