"""The bench scripts refuse bad arguments in one line naming the flag, before any work (a bench runs for
minutes: a typo found at the end, or an endless sweep from --trials -1, loses them), and report the project's
own errors without a traceback."""
from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def load_bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """tmp_path/out for outputs and tmp_path/tmp as the temp folder: both must stay empty."""
    (tmp_path / "out").mkdir()
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    return tmp_path


def refused(module, argv: list[str], capsys) -> str:
    """main(argv) exits 2 with argparse's one-line error; returns that line."""
    with pytest.raises(SystemExit) as exit_info:
        module.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def assert_nothing_written(scratch: Path) -> None:
    assert not list((scratch / "out").iterdir()) and not list((scratch / "tmp").iterdir())


def never(*args, **kwargs):
    raise AssertionError("the work started")


@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("not a folder")
    return path


# bench/overhead.py

@pytest.mark.parametrize("args, message", [
    (["--trials", "0"], "argument --trials: expected an integer from 1 to 8, got 0"),
    (["--trials", "-1"], "argument --trials: expected an integer from 1 to 8, got -1"),  # was an endless sweep
    (["--trials", "9"], "argument --trials: expected an integer from 1 to 8, got 9"),  # one trial per lr
    (["--epochs", "0"], "argument --epochs: expected an integer >= 1"),
    (["--scenes", "3"], "argument --scenes: expected an integer >= 4"),
    (["--image-size", "50"], "--image-size: image_size=(50, 50): expected (H, W) both positive multiples of 8"),
    (["--backbone", "vgg11", "--image-size", "48"], "positive multiples of 32 for backbone vgg11"),
    (["--backbone", "nope"], "--backbone: ModelConfig.backbone='nope': expected one of unet_scratch"),
])
def test_overhead_refuses_bad_arguments_before_any_work(scratch, capsys, monkeypatch, args, message):
    bench = load_bench("overhead")
    monkeypatch.setattr(bench, "measure", never)
    assert message in refused(bench, [*args, "--out", str(scratch / "out" / "o.json")], capsys)
    assert_nothing_written(scratch)


def test_overhead_refuses_an_out_it_cannot_write(scratch, capsys, monkeypatch, a_file):
    bench = load_bench("overhead")
    monkeypatch.setattr(bench, "measure", never)
    assert "--out" in refused(bench, ["--out", str(a_file / "o.json")], capsys)
    assert "is a folder" in refused(bench, ["--out", str(scratch / "out")], capsys)
    assert_nothing_written(scratch)


def test_overhead_reports_a_project_error_in_one_line(scratch, capsys, monkeypatch):
    from tuner.space import SpaceError

    bench = load_bench("overhead")

    def bad_space(args):
        raise SpaceError("space.yaml: params.lr: expected a list of choices")
    monkeypatch.setattr(bench, "measure", bad_space)
    assert bench.main(["--out", str(scratch / "out" / "o.json")]) == 1
    err = capsys.readouterr().err
    assert err == "overhead.py: space.yaml: params.lr: expected a list of choices\n"
    assert_nothing_written(scratch)


def test_help_descriptions_are_whole_sentences():
    for name in ("overhead", "many_trials", "store_load"):
        done = subprocess.run([sys.executable, str(REPO / "bench" / f"{name}.py"), "--help"], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        description = " ".join(done.stdout.split("\n\n")[1].split())
        assert description.endswith("."), (name, description)


# bench/many_trials.py

@pytest.mark.parametrize("args, flag", [(["--trials", "0"], "--trials"), (["--trials", "-1"], "--trials"),
                                        (["--epochs", "0"], "--epochs"), (["--concurrency", "0"], "--concurrency")])
def test_many_trials_refuses_bad_arguments_before_starting_ray(scratch, capsys, args, flag):
    line = refused(load_bench("many_trials"), [*args, "--out", str(scratch / "out" / "m.json")], capsys)
    assert f"argument {flag}: expected an integer >= 1" in line
    assert_nothing_written(scratch)  # its first work makes a temp folder for the run dir


# bench/store_load.py

@pytest.mark.parametrize("args, message", [
    (["--writers", "2", "0"], "argument --writers: expected an integer >= 1, got 0"),
    (["--steps", "-3"], "argument --steps: expected an integer >= 1, got -3"),
    (["--artifact-every", "-1"], "argument --artifact-every: expected an integer >= 0"),
    (["--port", "0"], "argument --port: expected an integer from 1 to 65535"),
])
def test_store_load_refuses_bad_arguments(scratch, capsys, monkeypatch, args, message):
    bench = load_bench("store_load")
    monkeypatch.setattr(bench, "measure", never)
    assert message in refused(bench, [*args, "--out", str(scratch / "out" / "s.json")], capsys)
    assert_nothing_written(scratch)


def test_store_load_refuses_a_busy_port_before_any_work(scratch, capsys, monkeypatch):
    bench = load_bench("store_load")
    monkeypatch.setattr(bench, "measure", never)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = refused(bench, ["--port", str(port), "--out", str(scratch / "out" / "s.json")], capsys)
    assert f"--port {port}: in use on 127.0.0.1" in line
    assert_nothing_written(scratch)


def test_a_server_that_exits_is_reported_at_once_naming_the_port():
    bench = load_bench("store_load")
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(bench.ServerError, match="127.0.0.1:5999 exited with code 3 .*is port 5999 in use"):
        bench.wait_for_server(proc, 5999, wait_s=60)  # returns as soon as it exits, not after the 60 s


def test_store_load_keeps_the_rows_it_measured_when_the_server_fails(scratch, capsys, monkeypatch):
    bench = load_bench("store_load")

    def no_server(root, port):
        raise bench.ServerError(f"mlflow server on 127.0.0.1:{port} exited with code 1 before answering")
    monkeypatch.setattr(bench, "start_server", no_server)
    out = scratch / "out" / "s.json"
    assert bench.main(["--writers", "1", "--steps", "2", "--artifact-every", "1", "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines()[-1].startswith("store_load.py: mlflow server on 127.0.0.1:5123 exited")
    assert "Traceback" not in captured.err and "sqlite" in captured.out  # the table of what was measured
    rows = json.loads(out.read_text())["rows"]
    assert [(r["backend"], r["writers"], r["acknowledged"]) for r in rows] == [("sqlite", 1, 2)]
    # the writers' artifacts lived in the run's temp folder: nothing is left in the temp dir
    assert [p.name for p in (scratch / "tmp").iterdir() if not p.name.startswith("db_init_lock")] == []


# bench/loader.py

@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "argument --epochs: expected an integer >= 1, got 0"),
    (["--batch-size", "0"], "argument --batch-size: expected an integer >= 1"),
    (["--size", "-8"], "argument --size: expected an integer >= 1"),
])
def test_loader_refuses_bad_numbers(scratch, capsys, monkeypatch, args, message):
    bench = load_bench("loader")
    monkeypatch.setattr(bench, "run", never)
    assert message in refused(bench, [*args, "--out", str(scratch / "out" / "l.json")], capsys)
    assert_nothing_written(scratch)


def test_loader_checks_its_out_path_before_the_work(scratch, capsys, monkeypatch, a_file):
    bench = load_bench("loader")
    monkeypatch.setattr(bench, "run", never)
    assert refused(bench, ["--out", str(a_file / "l.json")], capsys).endswith(f"{a_file} is a file, not a folder")
    assert refused(bench, ["--out", str(scratch / "out")], capsys).endswith("is a folder; expected a file path")
    assert_nothing_written(scratch)


# bench/gpu_packing.py: only its argument checks run here (it needs a GPU); they come before the GPU check

@pytest.mark.parametrize("args, message", [
    (["--fractions", "abc"], "argument --fractions: expected comma-separated numbers"),
    (["--fractions", "1,0.3"], "argument --fractions: expected each 1/N for a whole N (1, 0.5, 0.25, ...), got 0.3"),
    (["--fractions", "0"], "got 0"),
    (["--samples", "0"], "argument --samples: expected an integer >= 1"),
    (["--max-epochs", "0"], "argument --max-epochs: expected an integer >= 1"),
    (["--scenes", "3"], "argument --scenes: expected an integer >= 4"),
    (["--image-size", "12y"], "argument --image-size: expected N or HxW"),
])
def test_gpu_packing_refuses_bad_arguments_before_looking_for_a_gpu(scratch, capsys, args, message):
    line = refused(load_bench("gpu_packing"), [*args, "--out", str(scratch / "out" / "g.json")], capsys)
    assert message in line and "CUDA" not in line
    assert_nothing_written(scratch)


def test_gpu_packing_help_gives_the_real_split():
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_packing.py"), "--help"], capture_output=True,
                          text=True, timeout=60)
    assert "70/15/15 % train/val/test" in " ".join(done.stdout.split()) and "80 %" not in done.stdout


def test_gpu_packing_stops_in_one_line_when_the_warm_up_fails(scratch, capsys, monkeypatch):
    import torch

    bench = load_bench("gpu_packing")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # past the GPU check, to the warm-up
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: "a GPU")
    monkeypatch.setattr(bench, "tune_command", lambda *a, **k: [sys.executable, "-c", "raise SystemExit(4)"])
    monkeypatch.setattr(bench, "run_one", never)
    assert bench.main(["--out", str(scratch / "out" / "g.json")]) == 1
    err = capsys.readouterr().err
    assert "warm-up `lunartune tune` exited with code 4" in err and "Traceback" not in err


def test_gpu_packing_reads_a_sweep_that_made_no_experiment_as_no_trials(tmp_path, capsys):
    (tmp_path / "run").mkdir()  # the warm-up made the run dir and its store
    row = load_bench("gpu_packing")._trials(tmp_path / "run", "gpu-0.5")
    assert row == {"completed": 0, "trials_span_s": None, "epoch_s_mean": None, "devices": []}
    assert "experiment gpu-0.5 is not in MLflow" in capsys.readouterr().err


# bench/benchargs.py

def test_an_out_folder_that_does_not_exist_yet_is_fine(tmp_path):
    import argparse

    sys.path.insert(0, str(REPO / "bench"))
    try:
        import benchargs
    finally:
        sys.path.remove(str(REPO / "bench"))
    parser = argparse.ArgumentParser()
    assert benchargs.output_file(parser, "--out", tmp_path / "new" / "deeper" / "x.json").name == "x.json"
    assert benchargs.output_dir(parser, "--out", tmp_path / "new" / "folder") == tmp_path / "new" / "folder"
    assert not (tmp_path / "new").exists(), "a check makes nothing"
