"""`lunartune data synth|check` end to end through the real CLI and the real generator."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from data_pipeline import DataConfig, check_dataset, make_loaders, synth
from tuner.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_a_bad_synth_size_is_explained_in_the_flags_own_order(tmp_path, capsys):
    for size, says in (("abc", "expected N or WIDTHxHEIGHT (e.g. 720x480), got 'abc'"),  # the flag is WxH: it said HxW
                       ("10x10", "--size=10x10: expected WIDTHxHEIGHT with 48 to 8192 px per side")):
        try:
            code = main(["--run-dir", str(tmp_path), "data", "synth", "--out", str(tmp_path / "s"), "--size", size])
        except SystemExit as usage:
            code = usage.code
        assert code in (1, 2) and says in capsys.readouterr().err


def test_bad_synth_flags_are_named_as_typed(tmp_path, capsys):
    """The generator's own words named its arguments ("count must be >= 1"), not the flags."""
    for flag, value, says in (("--count", "0", "--count=0: expected an integer >= 1"),
                              ("--seed", "-1", "--seed=-1: expected an integer >= 0"),
                              ("--workers", "-1", "--workers=-1: expected an integer >= 0")):
        assert main(["--run-dir", str(tmp_path), "data", "synth", "--out", str(tmp_path / "s"), flag, value]) == 1
        assert says in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_a_folder_of_other_scenes_is_refused_naming_what_differs(tmp_path, capsys):
    out, run = tmp_path / "scenes", ["--run-dir", str(tmp_path / "runs"), "data", "synth"]
    assert main([*run, "--out", str(out), "--count", "2", "--size", "96x64", "--style", "simple"]) == 0
    capsys.readouterr()
    assert main([*run, "--out", str(out), "--count", "3", "--size", "96x64", "--style", "simple"]) == 1
    err = capsys.readouterr().err  # it printed both manifests as dicts, the size as [height, width]
    assert f"{out}: holds 2 scenes (96x64, style simple, seed 0, generator v" in err
    assert "not 3 scenes (96x64, style simple, seed 0, generator v" in err and "(other count)" in err


def test_synth_then_check_then_load(tmp_path, capsys):
    out = tmp_path / "scenes"
    run = ["--run-dir", str(tmp_path / "runs"), "data"]
    assert main([*run, "synth", "--out", str(out), "--count", "8", "--size", "64x48", "--style", "simple",
                 "--workers", "1"]) == 0
    assert f"wrote 8 scenes (64x48, style simple, seed 0) to {out}" in capsys.readouterr().out
    stamp = (out / "images" / "render" / "render0001.png").stat().st_mtime_ns
    assert main([*run, "synth", "--out", str(out), "--count", "8", "--size", "64x48", "--style", "simple"]) == 0
    assert capsys.readouterr().out.strip() == f"{out} already holds 8 scenes (64x48, style simple, seed 0): nothing written"
    assert (out / "images" / "render" / "render0001.png").stat().st_mtime_ns == stamp  # said "wrote 8 scenes"
    assert main([*run, "check", str(out)]) == 0
    assert "renders (clean masks): 8 pairs" in capsys.readouterr().out
    loaders = make_loaders(DataConfig(root=str(out), image_size=(32, 32), batch_size=2, val_fraction=0.25,
                                      test_fraction=0.25))
    x, y = next(iter(loaders.train))
    assert x.shape == (2, 3, 32, 32) and loaders.split_sizes == {"train": 4, "val": 2, "test": 2}


def test_an_out_under_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "a-file").write_text("x")
    for out in (tmp_path / "a-file", tmp_path / "a-file" / "sub"):  # both were tracebacks (NotADirectoryError)
        assert main(["--run-dir", str(tmp_path / "runs"), "data", "synth", "--out", str(out), "--count", "2"]) == 1
        err = capsys.readouterr().err
        assert str(tmp_path / "a-file") in err and len(err.strip().splitlines()) == 1, err


def test_ctrl_c_stops_a_pool_of_workers_quietly_and_a_rerun_completes_the_folder(tmp_path):
    out = tmp_path / "scenes"
    command = [sys.executable, "-m", "tuner.cli", "--run-dir", str(tmp_path / "runs"), "data", "synth", "--out",
               str(out), "--count", "400", "--size", "96x64", "--workers", "2"]
    # Ctrl-C's handler as in a terminal: a job started in the background (CI's `.ci/run &`) inherits SIGINT
    # ignored, which Python then keeps
    proc = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while len(list((out / "images" / "clean").glob("clean*.png"))) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: to the whole process group, workers too
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]  # each worker printed one
    assert synth.read_manifest(out)["complete"] is False
    report = check_dataset(out)  # what is there so far looks like a valid, smaller data set: said
    assert not report.ok and "the generation of 400 scenes was interrupted" in report.problems[0]
    rerun = synth.generate(out, 400, 0, size=(64, 96), workers=2, progress=False)  # redone, whole
    frames = sorted((out / "images" / "render").iterdir())
    assert synth.read_manifest(rerun)["complete"] and len(frames) == 400 and not list(out.rglob(".*.partial"))
    for frame in frames[:: 40]:
        with Image.open(frame) as image:
            image.load()  # no truncated frame
