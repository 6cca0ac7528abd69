"""The command line: help, usage errors, global flags, and that --help stays instant (lazy imports)."""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tuner.cli import build_parser, main
from tuner.settings import RunPaths, environment, resolve_run_paths, shown_uri
from tuner.train import synthetic_root

REPO = Path(__file__).resolve().parents[2]

SUBCOMMANDS = ["data", "train", "tune", "promote", "export", "predict", "evaluate", "report", "ui", "demo"]


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    listed = re.findall(r"^ {4}(\w+) ", out, re.M)  # the subcommand table: "    name   description"
    assert listed == SUBCOMMANDS


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_each_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    assert f"lunartune {name}" in capsys.readouterr().out


def _subparsers(parser, path=()):
    """(command path, parser) for every command and nested subcommand ("data synth", ...)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _subparsers(sub, (*path, name))


def test_every_flag_of_every_command_says_what_it_does():
    undocumented = [f"{' '.join(path)} {action.option_strings[-1]}"
                    for path, sub in _subparsers(build_parser()) for action in sub._actions
                    if action.option_strings and not action.help and action.dest != "help"]
    assert undocumented == []


def test_every_flag_with_a_default_shows_it_in_help(capsys):
    """tune's --samples, --max-epochs, --concurrency, ... said nothing of their defaults."""
    silent = [f"{' '.join(path)} {a.option_strings[-1]}" for path, sub in _subparsers(build_parser())
              for a in sub._actions
              if a.option_strings and a.default not in (None, argparse.SUPPRESS) and not isinstance(a.default, bool)
              and "default" not in sub._get_formatter()._get_help_string(a)]  # the text --help prints for it
    assert silent == []
    with pytest.raises(SystemExit):
        main(["tune", "--help"])
    assert "number of trials (default 8)" in " ".join(capsys.readouterr().out.split())  # argparse wraps lines


def test_run_dir_goes_after_data_subcommands_too(tmp_path, capsys):
    """`data check --run-dir D PATH` was refused as an unrecognised argument naming PATH."""
    scenes = tmp_path / "scenes"
    assert main(["data", "synth", "--run-dir", str(tmp_path / "run"), "--out", str(scenes), "--count", "4",
                 "--size", "96x64", "--style", "simple"]) == 0
    assert main(["data", "check", "--run-dir", str(tmp_path / "run"), str(scenes)]) == 0
    assert "OK: no problems" in capsys.readouterr().out


def test_unknown_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bogus"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'bogus'" in err and "train" in err


def test_unknown_flag_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--no-such-flag"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


def test_bad_image_size_names_the_expected_form(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--image-size", "big"])
    assert exit_info.value.code == 2
    assert "expected N or HxW" in capsys.readouterr().err
    for command in (["train", "--image-size", "80000"], ["evaluate", "--model", "m", "--data", "d", "--image-size", "64x9000"],
                    ["data", "synth", "--out", "o", "--size", "100000x480"]):
        with pytest.raises(SystemExit):  # a typo asked for tens of GB of memory, or a decode cache bigger than the disk
            main(command)
        assert "expected sizes of at most 8192 px per side" in capsys.readouterr().err


def test_run_dir_flag_works_before_and_after_the_subcommand(tmp_path):
    parser = build_parser()
    before = parser.parse_args(["--run-dir", str(tmp_path / "a"), "train"])
    after = parser.parse_args(["train", "--run-dir", str(tmp_path / "b")])
    assert before.run_dir == str(tmp_path / "a")
    assert after.run_dir == str(tmp_path / "b")


def test_a_run_dir_that_is_a_file_is_one_clear_line(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    # were FileExistsError, NotADirectoryError; then, under /proc (no folder can be made there, even as root), a
    # FileNotFoundError (PermissionError, a read-only file system: the same way out)
    for run_dir in (tmp_path / "file", tmp_path / "file" / "sub", Path("/proc/lunartune-test/run")):
        assert main(["--run-dir", str(run_dir), "tune", "--space", "smoke", "--samples", "1"]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"lunartune tune: error: --run-dir {run_dir}: cannot make a folder there") \
            and "Traceback" not in err


def test_run_paths_precedence_flag_env_default(tmp_path, monkeypatch):
    env = {"LUNARTUNE_RUN_DIR": str(tmp_path / "env"), "MLFLOW_TRACKING_URI": "http://127.0.0.1:5999"}
    assert resolve_run_paths(str(tmp_path / "flag"), None, env).root == tmp_path / "flag"
    from_env = resolve_run_paths(None, None, env)
    assert from_env.root == tmp_path / "env"
    assert from_env.tracking_uri == "http://127.0.0.1:5999"
    monkeypatch.chdir(tmp_path)
    default = resolve_run_paths(None, None, {})
    assert default.root == tmp_path / "lunartune-runs"
    assert default.tracking_uri == f"sqlite:///{tmp_path / 'lunartune-runs' / 'mlflow.db'}"
    assert default.ray_results == tmp_path / "lunartune-runs" / "ray"
    assert default.data == tmp_path / "lunartune-runs" / "data"


def test_environment_sets_for_the_block_and_restores_set_and_unset_names_even_on_error(monkeypatch):
    monkeypatch.setenv("LUNARTUNE_TEST_SET", "before")
    monkeypatch.delenv("LUNARTUNE_TEST_UNSET", raising=False)
    with pytest.raises(RuntimeError, match="inside"):
        with environment({"LUNARTUNE_TEST_SET": "during", "LUNARTUNE_TEST_UNSET": "during"}):
            assert os.environ["LUNARTUNE_TEST_SET"] == os.environ["LUNARTUNE_TEST_UNSET"] == "during"
            raise RuntimeError("inside")
    assert os.environ["LUNARTUNE_TEST_SET"] == "before"
    assert "LUNARTUNE_TEST_UNSET" not in os.environ


@pytest.mark.parametrize("uri, shown", [
    ("postgresql://lunar:s3cr:t@db.example:5432/mlflow?sslmode=require",
     "postgresql://lunar:***@db.example:5432/mlflow?sslmode=require"),
    ("mysql+pymysql://lunar:p%40ss@db/mlflow", "mysql+pymysql://lunar:***@db/mlflow"),
    ("postgresql://lunar@db/mlflow", "postgresql://lunar@db/mlflow"),  # no password: unchanged
    ("sqlite:////tmp/run/mlflow.db", "sqlite:////tmp/run/mlflow.db"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
])
def test_shown_uri_hides_only_the_password(uri, shown):
    assert shown_uri(uri) == shown


def test_help_does_not_import_heavy_modules():
    # --help must stay instant: no torch, ray or mlflow at parse time.
    code = (
        "import sys; from tuner.cli import build_parser; build_parser();"
        "heavy = [m for m in ('torch', 'ray', 'mlflow', 'optuna', 'segmentation_models_pytorch') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


@pytest.mark.slow  # a fresh process starts its own Ray and trains one tiny trial: ~1 min
def test_tune_on_generated_scenes_in_a_fresh_process(tiny_space, tmp_path):
    # a fresh interpreter: nothing imported data_pipeline.synth before `tune --data synthetic` needs it
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "tuner.cli", "--run-dir", str(run_dir), "tune", "--space", tiny_space,
               "--data", "synthetic", "--synthetic-count", "6", "--samples", "1", "--max-epochs", "1",
               "--device", "cpu", "--no-asha", "--experiment", "fresh"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list((synthetic_root(RunPaths(run_dir), 6, 0) / "images" / "render").glob("*.png"))) == 6
    assert "completed" in done.stdout


@pytest.mark.parametrize("command", ["train", "tune"])
def test_synthetic_count_with_a_folder_is_refused(command, tmp_path, capsys):
    """It was silently ignored: asked for 16 scenes of their own folder, a user trained on all of it."""
    folder = tmp_path / "frames"
    folder.mkdir()
    assert main([command, "--run-dir", str(tmp_path / "run"), "--data", str(folder), "--synthetic-count", "16"]) == 1
    err = capsys.readouterr().err
    assert "--synthetic-count=16: only for --data synthetic" in err and str(folder) in err
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").rglob("*.json"))


def test_tune_data_that_is_a_file_says_so(tmp_path, capsys):
    (tmp_path / "frames.zip").write_bytes(b"PK")  # the unzipped folder was meant
    assert main(["tune", "--run-dir", str(tmp_path / "run"), "--data", str(tmp_path / "frames.zip")]) == 1
    assert f"--data {tmp_path / 'frames.zip'}: not a folder (expected a data set" in capsys.readouterr().err
