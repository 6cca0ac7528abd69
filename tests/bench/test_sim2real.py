"""bench/sim2real.py end to end at toy scale: both styles trained, scored on the shared real data, written."""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from data_pipeline.synth import MANIFEST_VERSION

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO.parent / "shared" / "data"


def load_bench_module(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_bench():
    return load_bench_module("sim2real")


@pytest.mark.slow  # trains two VGG11 U-Nets (tiny) and scores 78 real images each: ~2-3 min on 2 busy cores
@pytest.mark.skipif(not (SHARED_DATA / "kaggle-eval-small").is_dir(),
                    reason=f"{SHARED_DATA} absent (the shared real data sits beside the repo as ../shared)")
def test_tiny_sim2real_writes_the_table_json_and_grid(tmp_path, capsys):
    bench = load_bench()
    assert bench.main(["--scenes", "16", "--epochs", "1", "--size", "64x96", "--seed", "3", "--out", str(tmp_path),
                       "--save-models"]) == 0
    results = json.loads((tmp_path / "sim2real.json").read_text())
    expected = {"synthetic-val", "kaggle-eval-small/renders", "kaggle-eval-small/photos",
                "kaggle-fullsize-eval/renders", "kaggle-fullsize-eval/photos"}
    for style in ("realistic", "simple"):
        scores = results[style]["scores"]
        assert set(scores) == expected
        assert scores["kaggle-eval-small/renders"]["images"] == 40 and scores["kaggle-eval-small/photos"]["images"] == 28
        assert scores["synthetic-val"]["images"] == 2, "all 16 scenes train; 15 % more are generated for own val"
        assert 0 <= scores["kaggle-eval-small/renders"]["pixel_acc"] <= 1
        assert len(scores["kaggle-eval-small/renders"]["worst"]) == 4, "the worst figures show real predictions"
    assert results["recipe"]["backbone"] == "vgg11" and results["recipe"]["dropout"] == 0.1
    assert results["recipe"]["image_size"] == [64, 96] and results["recipe"]["scenes"] == 16 and results["recipe"]["seed"] == 3
    assert results["recipe"]["own_val_scenes"] == 2
    # what ran: train_one_epoch without amp/channels_last, fp32 (not TrainConfig's CUDA defaults)
    assert results["recipe"]["amp"] is False and results["recipe"]["channels_last"] is False
    assert "synthetic-val" not in results["gain"], "each model on its own generator's val: not a paired gain"
    assert results["recipe"]["generator"] == f"MANIFEST_VERSION {MANIFEST_VERSION}"
    table = capsys.readouterr().out
    assert f"generated scenes: MANIFEST_VERSION {MANIFEST_VERSION}" in table
    assert "kaggle-fullsize-eval/photos (1 images)" in table and "iou_small_rocks" in table and "gain" in table
    assert "rock recall by contrast" in table and "recall realistic" in table
    renders = {style: results[style]["scores"]["kaggle-eval-small/renders"] for style in ("realistic", "simple")}
    gain = results["gain"]["kaggle-eval-small/renders"]["miou"]
    assert gain["per_seed"] == [pytest.approx(renders["realistic"]["miou"] - renders["simple"]["miou"])]
    assert gain["se"] is None, "one seed: no standard error"
    checks = {(c["set"], c["metric"]): c for c in results["targets"]}
    assert len(checks) == 6 and "targets (mean over 1 seed(s)" in table
    small = checks["kaggle-eval-small/renders", "iou_small_rocks"]
    assert small["value"] == renders["realistic"]["iou_small_rocks"] and small["met"] == (small["value"] > 0.25)
    assert checks["kaggle-eval-small/renders", "miou"]["value"] == pytest.approx(gain["mean"])
    # one run written as two (one style each) merges back into the same result
    halves = []
    for style in ("realistic", "simple"):
        half = {k: v for k, v in results.items() if k not in ("simple" if style == "realistic" else "realistic",
                                                             "gain", "targets")}
        halves.append(tmp_path / f"{style}.json")
        halves[-1].write_text(json.dumps(half))
    assert bench.main(["--merge", *map(str, halves), "--out", str(tmp_path / "merged")]) == 0
    merged = json.loads((tmp_path / "merged" / "sim2real.json").read_text())
    assert merged["gain"] == results["gain"] and merged["targets"] == results["targets"]
    assert merged["seeds"] == [3] and [m["file"] for m in merged["merged_from"]] == list(map(str, halves))
    recall = results["realistic"]["scores"]["kaggle-eval-small/renders"]["rock_recall"]
    assert sum(recall[band]["rocks"] for band in ("darker", "similar", "brighter")) > 200  # the 40 renders' rocks
    # the saved model is a lunartune checkpoint: rock_recall.py reloads it and gets the same table
    out = tmp_path / "recall.json"
    assert load_bench_module("rock_recall").main(["--model", str(tmp_path / "realistic" / "model.pt"), "--data",
                                                  str(SHARED_DATA / "kaggle-eval-small"), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["renders"] == recall
    with Image.open(tmp_path / "sim2real_scenes.png") as grid:
        assert grid.width > 400 and grid.height > 600
    for style in ("realistic", "simple"):  # what each model got wrong on the real data, to look at
        for kind in ("confusion", "worst"):
            with Image.open(tmp_path / style / f"{kind}_kaggle-eval-small-photos.png") as figure:
                assert figure.width > 300


@pytest.mark.slow  # two tiny simple-style models, trained one after the other and then at once: ~2 min on 2 cores
@pytest.mark.skipif(not (SHARED_DATA / "kaggle-eval-small").is_dir(),
                    reason=f"{SHARED_DATA} absent (the shared real data sits beside the repo as ../shared)")
def test_several_seeds_report_their_mean_and_each_seed(tmp_path, capsys):
    bench = load_bench()
    assert bench.main(["--styles", "simple", "--seeds", "1,2", "--scenes", "8", "--epochs", "1", "--size", "64x96",
                       "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "sim2real.json").read_text())
    assert results["seeds"] == [1, 2] and set(results["per_seed"]) == {"1", "2"}
    name = "kaggle-eval-small/renders"
    each = [results["per_seed"][seed]["simple"]["scores"][name] for seed in ("1", "2")]
    assert each[0]["miou"] != each[1]["miou"], "two seeds, two models (else the mean proves nothing)"
    mean = results["simple"]["scores"][name]
    assert mean["miou"] == pytest.approx((each[0]["miou"] + each[1]["miou"]) / 2)
    assert mean["images"] == 40 and mean["worst"] == each[0]["worst"]
    for band in ("darker", "similar", "brighter"):
        recalls = [e["rock_recall"][band]["recall"] for e in each]
        assert mean["rock_recall"][band]["recall"] == pytest.approx(sum(recalls) / 2)
    for seed in (1, 2):  # each seed's figures, to look at
        assert (tmp_path / f"seed{seed}" / "simple" / "worst_kaggle-eval-small-renders.png").is_file()
    table = capsys.readouterr().out
    assert "mean over seeds 1, 2" in table
    assert f"miou per seed   simple {each[0]['miou']:.3f} / {each[1]['miou']:.3f}" in table

    # --jobs 2: the same two runs at once, in worker processes, give the same models' scores
    parallel = tmp_path / "parallel"
    subprocess.run([sys.executable, str(REPO / "bench" / "sim2real.py"), "--styles", "simple", "--seeds", "1,2",
                    "--scenes", "8", "--epochs", "1", "--size", "64x96", "--jobs", "2", "--out", str(parallel)],
                   check=True, capture_output=True, text=True, timeout=600)
    at_once = json.loads((parallel / "sim2real.json").read_text())
    assert at_once["machine"]["jobs"] == 2
    for seed, serial in zip(("1", "2"), each):
        # one torch thread per worker instead of two may reorder float sums: equal up to rounding
        assert at_once["per_seed"][seed]["simple"]["scores"][name]["miou"] == pytest.approx(serial["miou"], abs=2e-3)
    assert (parallel / "seed2" / "simple" / "worst_kaggle-eval-small-renders.png").is_file()


@pytest.mark.slow  # two tiny simple-style models: ~1 min on 2 cores
@pytest.mark.skipif(not (SHARED_DATA / "kaggle-eval-small").is_dir(),
                    reason=f"{SHARED_DATA} absent (the shared real data sits beside the repo as ../shared)")
def test_another_loss_trains_another_model_recorded_as_a_variant_of_the_recipe(tmp_path, capsys):
    bench = load_bench()
    tiny = ["--styles", "simple", "--seed", "1", "--scenes", "8", "--epochs", "1", "--size", "64x96"]
    assert bench.main([*tiny, "--out", str(tmp_path / "ce")]) == 0
    assert "a variant of the recipe" not in capsys.readouterr().out
    assert bench.main([*tiny, "--loss", "weighted_ce", "--out", str(tmp_path / "weighted")]) == 0
    assert "a variant of the recipe: loss weighted_ce (the recipe's: ce)" in capsys.readouterr().out
    runs = {name: json.loads((tmp_path / name / "sim2real.json").read_text()) for name in ("ce", "weighted")}
    assert runs["ce"]["recipe"]["loss"] == "ce" and runs["weighted"]["recipe"]["loss"] == "weighted_ce"
    name = "synthetic-val"  # same scenes, weights and batch order: only the loss differs, so must the model
    assert runs["weighted"]["simple"]["scores"][name] != runs["ce"]["simple"]["scores"][name]
    with pytest.raises(ValueError, match=re.escape("another recipe (loss differ)")):
        bench.merge([tmp_path / "ce" / "sim2real.json", tmp_path / "weighted" / "sim2real.json"])


def test_mean_of_results_averages_numbers_keeps_counts_and_names():
    mean_tree = load_bench().mean_tree
    runs = [{"miou": 0.5, "images": 40, "worst": ["a"], "recall": None, "band": {"recall": None, "rocks": 3}},
            {"miou": 0.7, "images": 40, "worst": ["b"], "recall": 0.4, "band": {"recall": None, "rocks": 3}}]
    assert mean_tree(runs) == {"miou": pytest.approx(0.6), "images": 40, "worst": ["a"], "recall": 0.4,
                               "band": {"recall": None, "rocks": 3}}


def fake_run(seeds: list[int], scores: dict, scenes: int = 400, generator: str = "MANIFEST_VERSION 8",
             own_val: bool = False) -> dict:
    """A sim2real.json of the shape run() writes: scores = {style: [renders mIoU per seed]}; with own_val each
    model also has the same scores on its own generator's val scenes."""
    def one(miou):
        renders = {"images": 40, "iou_ground": 0.8, "iou_sky": 0.9, "iou_small_rocks": 0.3, "iou_large_rocks": None,
                   "miou": miou, "rock_miou": 0.3, "pixel_acc": 0.9, "worst": ["x"]}
        return {"scores": {**({"synthetic-val": {**renders, "images": 2}} if own_val else {}),
                           "kaggle-eval-small/renders": renders}}
    per_seed = {str(seed): {style: one(v[i]) for style, v in scores.items()} for i, seed in enumerate(seeds)}
    run = {"recipe": {"scenes": scenes, "seed": seeds[0], "generator": generator}, "seeds": seeds,
           "machine": {"device": "cpu"}}
    if len(seeds) > 1:
        run["per_seed"] = per_seed
    run.update({style: per_seed[str(seeds[0])][style] for style in scores} if len(seeds) == 1 else {})
    return run


def test_merged_runs_give_the_paired_gain_and_targets_of_all_their_seeds(tmp_path):
    bench = load_bench()
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps(fake_run([0, 1], {"realistic": [0.50, 0.56], "simple": [0.40, 0.36]})))
    second.write_text(json.dumps(fake_run([2], {"realistic": [0.53], "simple": [0.41]})))
    merged = bench.merge([first, second])
    assert merged["seeds"] == [0, 1, 2] and set(merged["per_seed"]) == {"0", "1", "2"}
    gain = merged["gain"]["kaggle-eval-small/renders"]["miou"]
    assert gain["per_seed"] == pytest.approx([0.10, 0.20, 0.12])
    assert gain["mean"] == pytest.approx(0.14) and gain["sd"] == pytest.approx(0.052915, abs=1e-6)
    assert gain["se"] == pytest.approx(0.052915 / 3 ** 0.5, abs=1e-6)
    assert merged["realistic"]["scores"]["kaggle-eval-small/renders"]["miou"] == pytest.approx(0.53)
    checks = {c["metric"]: c for c in merged["targets"]}
    assert set(checks) == {"miou", "iou_small_rocks"}, "no large-rock IoU (None) and no photos: not judged"
    assert checks["miou"]["met"] is False and checks["miou"]["target"] == ">= 0.15" and checks["miou"]["seeds"] == 3
    assert checks["iou_small_rocks"]["met"] is True
    table = bench.format_table(merged) + bench.format_targets(merged)
    assert "miou gain       +0.100 / +0.200 / +0.120   mean +0.140, sd 0.053, se 0.031 (paired by seed)" in table
    assert "NOT met" in table
    assert bench.format_recall(merged) == "", "no recall in these runs: no table header either"


def test_merge_refuses_runs_that_are_not_one_experiment(tmp_path):
    bench = load_bench()
    files = {"a": fake_run([0], {"realistic": [0.5], "simple": [0.4]}),
             "other_recipe": fake_run([1], {"realistic": [0.5], "simple": [0.4]}, scenes=16),
             "other_generator": fake_run([1], {"realistic": [0.5], "simple": [0.4]}, generator="MANIFEST_VERSION 7"),
             "same_seed": fake_run([0], {"simple": [0.4]}),
             "half": fake_run([5], {"simple": [0.4]})}
    for name, run in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(run))
    (tmp_path / "broken.json").write_text("{not json")
    path = lambda name: tmp_path / f"{name}.json"
    for names, message in ((["a", "other_recipe"], "another recipe (scenes differ)"),
                           (["a", "other_generator"], "another recipe (generator differ)"),
                           (["a", "same_seed"], "seed 0 of style simple is in an earlier file too"),
                           (["a", "half"], "seed 5 lacks style realistic"),
                           (["a", "broken"], "broken.json: not a sim2real.json"),
                           (["a", "absent"], "absent.json: cannot read it")):
        with pytest.raises(ValueError, match=re.escape(message)):
            bench.merge([path(n) for n in names])


@pytest.mark.parametrize("args, message", [
    (["--seeds", "0,0"], "a seed appears twice"),
    (["--seeds", "0,one"], "expected a seed or comma-separated seeds"),
    (["--styles", "realistic,photoreal"], "--styles: unknown photoreal"),
    (["--size", "60x90"], "multiples of 32"),  # a size the encoder cannot take
    (["--jobs", "0"], "--jobs: expected an integer >= 1"),
    (["--loss", "hinge"], "--loss: invalid choice: 'hinge'"),
    (["--scenes", "0"], "--scenes: expected an integer >= 2, got 0"),
    (["--scenes", "-5"], "--scenes: expected an integer >= 2, got -5"),
    (["--scenes", "1"], "--scenes: expected an integer >= 2, got 1"),  # one scene: no training batch (BatchNorm)
    (["--epochs", "0"], "--epochs: expected an integer >= 1, got 0"),
])
def test_bad_arguments_are_refused_before_any_work(tmp_path, capsys, args, message):
    bench = load_bench()
    with pytest.raises(SystemExit) as exit_info:
        bench.main([*args, "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_an_out_that_is_a_file_is_refused_before_any_work(tmp_path, capsys):
    bench = load_bench()
    out = tmp_path / "results"
    out.write_text("a file")
    for args in ([], ["--merge", str(tmp_path / "a.json")]):
        with pytest.raises(SystemExit) as exit_info:
            bench.main([*args, "--scenes", "2", "--epochs", "1", "--out", str(out)])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and f"--out {out}: exists and is not a folder" in err
        assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"] and out.read_text() == "a file"


def test_a_device_the_machine_lacks_is_refused_in_one_line(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit) as exit_info:
        load_bench().main(["--device", "cuda", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--device: " in err and "no CUDA device" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_unreadable_real_data_is_one_line_not_a_traceback(tmp_path, capsys):
    data = tmp_path / "data"
    for folder in ("kaggle-eval-small", "kaggle-fullsize-eval"):
        (data / folder).mkdir(parents=True)  # present but holding nothing to score
    assert load_bench().main(["--data", str(data), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sim2real.py: --data ") and "nothing to score" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_the_own_generator_val_gets_no_gain(tmp_path):
    """Each model is scored on its own generator's val scenes: realistic minus simple there compares two
    different sets, so neither the table nor the JSON calls it a gain."""
    bench = load_bench()
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps(fake_run([0, 1], {"realistic": [0.5, 0.6], "simple": [0.4, 0.5]}, own_val=True)))
    second.write_text(json.dumps(fake_run([2], {"realistic": [0.7], "simple": [0.6]}, own_val=True)))
    merged = bench.merge([first, second])
    assert set(merged["gain"]) == {"kaggle-eval-small/renders"}
    blocks = {block.splitlines()[0].split(" (")[0]: block for block in bench.format_table(merged).split("\n\n")[1:]}
    assert re.search(r"\n  miou +0\.6000 +0\.5000 +-\n", blocks["synthetic-val"]), blocks["synthetic-val"]
    assert "miou gain" not in blocks["synthetic-val"]
    assert re.search(r"\n  miou +0\.6000 +0\.5000 +\+0\.1000\n", blocks["kaggle-eval-small/renders"])
    assert "miou gain       +0.100 / +0.100 / +0.100" in blocks["kaggle-eval-small/renders"]


def test_runs_recorded_before_the_recipe_said_fp32_merge_with_newer_ones(tmp_path):
    """Older files recorded TrainConfig's amp/channels_last defaults (true) though training ran as it does now."""
    bench = load_bench()
    old = fake_run([0], {"realistic": [0.5], "simple": [0.4]})
    new = fake_run([1], {"realistic": [0.6], "simple": [0.4]})
    old["recipe"].update(amp=True, channels_last=True)
    new["recipe"].update(amp=False, channels_last=False)
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(new))
    merged = bench.merge([tmp_path / "old.json", tmp_path / "new.json"])
    assert merged["seeds"] == [0, 1] and merged["recipe"]["amp"] is False and merged["recipe"]["channels_last"] is False
