"""`lunartune evaluate` and `evaluate_model`: exact metrics at each mask's own size, figures, MLflow, bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.tuner.test_model_spec import make_checkpoint
from tuner.cli import main
from tuner.evaluate import evaluate_model, write_figures
from tuner.settings import RunPaths

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
PALETTE = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)
GRADED = np.array([[5, 3, 2], [226, 0, 0], [0, 200, 0], [0, 0, 180]], dtype=np.uint8)  # a raw "ground" label
SIZE = (64, 96)  # the checkpoint's input size (H, W)


def scene_classes(shape, seed) -> np.ndarray:
    """Sky on top, ground below, a small and a large rock: H x W uint8 class indices."""
    h, w = shape
    rng = np.random.default_rng(seed)
    classes = np.zeros(shape, dtype=np.uint8)
    classes[: h // 3] = 1
    classes[h // 2: h // 2 + 4, w // 4: w // 4 + 4] = 2
    classes[2 * h // 3:, w // 2: w // 2 + w // 4] = 3
    return np.where(rng.random(shape) < 0.02, 0, classes).astype(np.uint8)


def save(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def photo(shape, seed, channels=3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (*shape, channels), dtype=np.uint8)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt", image_size=SIZE)


@pytest.fixture
def data(tmp_path):
    """Kaggle layout: render 0001 (48x72) with a clean mask AND a contradicting ground mask (clean must win),
    render 0002 (64x96) with a ground mask only, photo PCAM1 (80x100 RGBA) larger than its 60x75 mask
    with anti-aliased colours. Returns (root, {name: truth classes})."""
    root = tmp_path / "data"
    truth = {"0001": scene_classes((48, 72), 1), "0002": scene_classes((64, 96), 2), "PCAM1": scene_classes((60, 75), 3)}
    save(root / "images/render/render0001.png", photo((48, 72), 1))
    save(root / "images/clean/clean0001.png", PALETTE[truth["0001"]])
    save(root / "images/ground/ground0001.png", np.full((48, 72, 3), GRADED[1]))  # all sky: must be ignored
    save(root / "images/render/render0002.png", photo((64, 96), 2))
    save(root / "images/ground/ground0002.png", GRADED[truth["0002"]])
    save(root / "real_moon_images/PCAM1.png", photo((80, 100), 3, channels=4))
    soft = PALETTE[truth["PCAM1"]].astype(np.int16) + np.array([-5, 9, 7])  # off-palette, nearest is right
    save(root / "real_moon_images/g_PCAM1.png", np.clip(soft, 0, 255).astype(np.uint8))
    return root, truth


def run_cli(tmp_path, *args) -> int:
    return main(["--run-dir", str(tmp_path / "run"), "evaluate", *map(str, args)])


def expected_metrics(checkpoint, root: Path, truth: dict, names, size=SIZE) -> dict:
    """The metrics recomputed independently: predict_mask per image, pixel counts with numpy."""
    from data_pipeline import load_rgb, resize_image
    from models.checkpoint import model_from_checkpoint
    from models.inference import predict_mask

    model, info = model_from_checkpoint(checkpoint)
    files = {"0001": root / "images/render/render0001.png", "0002": root / "images/render/render0002.png",
             "PCAM1": root / "real_moon_images/PCAM1.png"}
    counts = np.zeros((4, 4), dtype=np.int64)
    for name in names:
        image = resize_image(load_rgb(files[name]), truth[name].shape)
        pred = predict_mask(model, image, size, info["normalization"]["mean"], info["normalization"]["std"])
        np.add.at(counts, (truth[name].ravel(), pred.ravel()), 1)
    tp = np.diag(counts)
    union = counts.sum(0) + counts.sum(1) - tp
    iou = [tp[c] / union[c] if union[c] else None for c in range(4)]
    present = [v for v in iou if v is not None]
    return {"pixels": int(counts.sum()), "pixel_acc": tp.sum() / counts.sum(), "miou": sum(present) / len(present),
            "iou": iou}


def test_metrics_are_exact_over_each_group_at_the_masks_own_size(checkpoint, data, tmp_path, capsys):
    root, truth = data
    assert run_cli(tmp_path, "--model", checkpoint, "--data", root, "--json", tmp_path / "m.json") == 0
    printed = capsys.readouterr()
    results = json.loads(printed.out)
    assert results == json.loads((tmp_path / "m.json").read_text())
    assert "iou_small_rocks" in printed.err and "renders" in printed.err  # the table
    renders, photos = results["groups"]["renders"], results["groups"]["photos"]
    assert renders["mask_sources"] == {"clean": 1, "ground": 1} and photos["mask_sources"] == {"real": 1}
    assert renders["pixels"] == 48 * 72 + 64 * 96 and photos["pixels"] == 60 * 75
    for group, names in ((renders, ["0001", "0002"]), (photos, ["PCAM1"])):
        want = expected_metrics(checkpoint, root, truth, names)
        assert group["pixels"] == want["pixels"] == np.array(group["confusion"]).sum()
        assert group["metrics"]["pixel_acc"] == pytest.approx(want["pixel_acc"], abs=1e-12)
        assert group["metrics"]["miou"] == pytest.approx(want["miou"], abs=1e-12)
        for name, iou in zip(("ground", "sky", "small_rocks", "large_rocks"), want["iou"]):
            assert group["metrics"][f"iou_{name}"] == (pytest.approx(iou, abs=1e-12) if iou is not None else None)
    assert results["image_size"] == list(SIZE) and results["run_id"] is None


def test_evaluate_model_scores_any_named_groups(checkpoint, data):
    from data_pipeline import load_eval_set
    from models.checkpoint import model_from_checkpoint

    root, truth = data
    model, info = model_from_checkpoint(checkpoint)
    scores = evaluate_model(model, info, {"test": load_eval_set(root, "render", "ground", frames=["0002"])}, "cpu",
                            keep_worst=1)
    assert list(scores) == ["test"] and scores["test"].images == 1
    assert scores["test"].matrix.sum(axis=1).tolist() == np.bincount(truth["0002"].ravel(), minlength=4).tolist()
    assert scores["test"].worst[0].name == "0002" and scores["test"].worst[0].prediction.shape == (64, 96)


def test_kept_predictions_are_the_masks_that_were_scored(checkpoint, data):
    """bench/sim2real.py takes its rock-recall table from these instead of predicting every set twice."""
    from data_pipeline import load_eval_set
    from models.checkpoint import model_from_checkpoint

    root, truth = data
    model, info = model_from_checkpoint(checkpoint)
    samples = list(load_eval_set(root, "render", "ground", frames=["0001", "0002"]))
    kept = evaluate_model(model, info, {"test": samples}, "cpu", keep_predictions=True)["test"]
    assert [p.shape for p in kept.predictions] == [(48, 72), (64, 96)]
    counts = np.zeros((4, 4), dtype=np.int64)
    for sample, prediction in zip(samples, kept.predictions):
        np.add.at(counts, (np.asarray(sample.mask).ravel(), prediction.ravel()), 1)
    assert counts.tolist() == kept.matrix.tolist()
    assert evaluate_model(model, info, {"test": samples}, "cpu")["test"].predictions == []  # opt-in: memory


def test_figures_of_a_score_without_kept_predictions_are_refused(checkpoint, data, tmp_path):
    """A worst-predictions figure with nothing in it would read as "nothing went wrong"."""
    from data_pipeline import load_eval_set
    from models.checkpoint import model_from_checkpoint

    root, _ = data
    model, info = model_from_checkpoint(checkpoint)
    scores = evaluate_model(model, info, {"test": load_eval_set(root, "render", "ground", frames=["0002"])}, "cpu")
    with pytest.raises(ValueError, match="worst_test.png: no predictions kept"):
        write_figures(scores, tmp_path, "label")


def test_out_gets_a_confusion_matrix_and_worst_predictions_per_group(checkpoint, data, tmp_path):
    root, _ = data
    assert run_cli(tmp_path, "--model", checkpoint, "--data", root, "--out", tmp_path / "figs",
                   "--image-size", "32x48") == 0
    written = sorted(p.name for p in (tmp_path / "figs").iterdir())
    assert written == ["confusion_photos.png", "confusion_renders.png", "worst_photos.png", "worst_renders.png"]
    for name in written:
        with Image.open(tmp_path / "figs" / name) as im:
            assert im.width > 300 and im.height > 300


def test_image_size_override_is_used_and_validated(checkpoint, data, tmp_path, capsys):
    root, truth = data
    assert run_cli(tmp_path, "--model", checkpoint, "--data", root, "--image-size", "32x48") == 0
    results = json.loads(capsys.readouterr().out)
    assert results["image_size"] == [32, 48]
    renders = results["groups"]["renders"]["metrics"]
    want = expected_metrics(checkpoint, root, truth, ["0001", "0002"], size=(32, 48))
    assert renders["miou"] == pytest.approx(want["miou"], abs=1e-12)
    assert renders["pixel_acc"] == pytest.approx(want["pixel_acc"], abs=1e-12)
    assert want["pixel_acc"] != expected_metrics(checkpoint, root, truth, ["0001", "0002"])["pixel_acc"]
    assert run_cli(tmp_path, "--model", checkpoint, "--data", root, "--image-size", "33") == 1
    assert "--image-size: image_size=(33, 33): expected (H, W) both positive multiples of 2" in capsys.readouterr().err


@pytest.mark.parametrize("damage, expected", [
    ("unknown_colour", "clean0001.png: 1 pixels have colours outside the clean palette"),
    ("not_an_image", "render0002.png: cannot decode image"),
    ("empty_folder", "nothing to score"),
    ("missing_model", "nope.pt: no such checkpoint file"),
])
def test_bad_input_is_a_clear_error_and_writes_nothing(checkpoint, data, tmp_path, capsys, damage, expected):
    root, truth = data
    model = checkpoint
    if damage == "unknown_colour":
        pixels = PALETTE[truth["0001"]].copy()
        pixels[3, 5] = (10, 200, 30)
        save(root / "images/clean/clean0001.png", pixels)
    elif damage == "not_an_image":
        (root / "images/render/render0002.png").write_text("no pixels here")
    elif damage == "empty_folder":
        root = tmp_path / "empty"
        root.mkdir()
    else:
        model = tmp_path / "nope.pt"
    out, report = tmp_path / "figs", tmp_path / "m.json"
    assert run_cli(tmp_path, "--model", model, "--data", root, "--out", out, "--json", report) == 1
    assert expected in capsys.readouterr().err
    assert not out.exists() and not report.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".figs", ".m.json"))]


def test_a_json_path_that_cannot_be_written_or_a_bad_device_is_refused_before_scoring(checkpoint, data, tmp_path,
                                                                                     capsys):
    root, _ = data
    out, folder, taken = tmp_path / "figs", tmp_path / "a-folder", tmp_path / "a-file"
    folder.mkdir()
    taken.write_text("x")
    assert run_cli(tmp_path, "--model", checkpoint, "--data", root, "--out", out, "--json", folder) == 1
    assert "a-folder: is a folder; expected the path of a file to write" in capsys.readouterr().err
    assert run_cli(tmp_path, "--model", checkpoint, "--data", root, "--out", out, "--json", taken / "m.json") == 1
    assert f"{taken} is a file, not a folder" in capsys.readouterr().err
    assert run_cli(tmp_path, "--model", checkpoint, "--data", root, "--out", out, "--device", "gpu") == 1
    assert "--device='gpu': expected auto, cpu, cuda or cuda:N" in capsys.readouterr().err
    # MLflow refused it only when logging, after the scoring and the --json
    assert run_cli(tmp_path, "--model", checkpoint, "--data", root, "--json", tmp_path / "m.json",
                   "--metric-prefix", "bad#") == 1
    assert "--metric-prefix 'bad#': expected one or more letters, digits" in capsys.readouterr().err
    assert run_cli(tmp_path, "--model", checkpoint, "--data", root, "--metric-prefix", "") == 1
    assert "--metric-prefix '': expected one or more letters, digits" in capsys.readouterr().err
    assert not (tmp_path / "m.json").exists()
    # outputs that would replace an input: the model's checkpoint, a file of the data set
    model_bytes = Path(checkpoint).read_bytes()
    assert run_cli(tmp_path, "--model", checkpoint, "--data", root, "--json", checkpoint) == 1
    assert "is the model's checkpoint" in capsys.readouterr().err and Path(checkpoint).read_bytes() == model_bytes
    assert run_cli(tmp_path, "--model", checkpoint, "--data", root, "--json", root / "images/clean/clean0001.png") == 1
    assert f"is inside --data {Path(root).resolve()}" in capsys.readouterr().err
    # an --out no folder can be made at: refused before the scoring, on one line
    assert run_cli(tmp_path, "--model", checkpoint, "--data", root, "--out", taken / "figs") == 1
    assert f"--out {taken / 'figs'}: {taken} is a file, not a folder\n" == capsys.readouterr().err.split("error: ")[-1]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".figs")]


def test_renders_without_any_mask_folder_are_named_and_not_scored(tmp_path):
    """With neither images/clean nor images/ground, the renders were listed by a glob of its own: case-sensitive
    (RENDER0003.PNG went unnamed) and loose (render_notes.png was named), unlike the pairing."""
    from tuner.evaluate import find_eval_sets

    root = tmp_path / "data"
    for name in ("render0002.png", "RENDER0003.PNG", "render_notes.png"):
        save(root / "images/render" / name, photo((8, 12), 1))
    save(root / "real_moon_images/PCAM1.png", photo((8, 12), 3))
    save(root / "real_moon_images/g_PCAM1.png", PALETTE[scene_classes((8, 12), 3)])
    found = find_eval_sets(root)
    assert [p.name for p in found.unmasked] == ["render0002.png", "RENDER0003.PNG"]
    assert list(found.sets) == ["photos"]


def test_excluded_frames_and_photos_are_not_scored_and_are_named(checkpoint, data, tmp_path, capsys):
    root, truth = data
    assert run_cli(tmp_path, "--model", checkpoint, "--data", root, "--exclude", "1, PCAM1") == 0  # 1 = frame 0001
    printed = capsys.readouterr()
    results = json.loads(printed.out)
    assert results["excluded"] == {"0001": "--exclude", "PCAM1": "--exclude"}
    assert "left out 2: 0001 (--exclude), PCAM1 (--exclude)" in printed.err
    assert list(results["groups"]) == ["renders"]  # the only photo was left out
    renders = results["groups"]["renders"]
    want = expected_metrics(checkpoint, root, truth, ["0002"])
    assert renders["images"] == 1 and renders["pixels"] == want["pixels"] == 64 * 96
    assert renders["metrics"]["miou"] == pytest.approx(want["miou"], abs=1e-12)


def test_exclude_mismatches_leaves_out_the_frames_the_data_sets_list_names(checkpoint, data, tmp_path, capsys):
    root, _ = data
    (root / "mismatch_IDs.txt").write_text("2\n")
    assert run_cli(tmp_path, "--model", checkpoint, "--data", root) == 0  # the list is used only on request
    assert json.loads(capsys.readouterr().out)["groups"]["renders"]["images"] == 2
    assert run_cli(tmp_path, "--model", checkpoint, "--data", root, "--exclude-mismatches") == 0
    results = json.loads(capsys.readouterr().out)
    assert results["excluded"] == {"0002": "listed in mismatch_IDs.txt"}
    assert results["groups"]["renders"]["images"] == 1 and results["groups"]["renders"]["pixels"] == 48 * 72
    # naming a listed frame again is no error (it is left out once, for the list)
    assert run_cli(tmp_path, "--model", checkpoint, "--data", root, "--exclude-mismatches", "--exclude", "2") == 0
    assert json.loads(capsys.readouterr().out)["excluded"] == {"0002": "listed in mismatch_IDs.txt"}


def test_excluding_a_name_that_is_not_there_is_an_error_naming_it(checkpoint, data, tmp_path, capsys):
    root, _ = data
    report = tmp_path / "m.json"
    assert run_cli(tmp_path, "--model", checkpoint, "--data", root, "--exclude", "0002,TCAM99", "--json", report) == 1
    err = capsys.readouterr().err
    assert "--exclude TCAM99: no render frame or real photo of that name in" in err and str(root) in err
    assert not report.exists()


def _run_holding(checkpoint, tmp_path):
    """(client, run id) of an MLflow run in tmp_path/run's store with `checkpoint` as its checkpoint artifact."""
    from mlflow.tracking import MlflowClient

    paths = RunPaths(root=tmp_path / "run").ensure()
    client = MlflowClient(paths.tracking_uri)
    experiment = client.create_experiment("exp", artifact_location=paths.mlflow_artifacts.as_uri())
    run_id = client.create_run(experiment).info.run_id
    client.log_artifact(run_id, str(checkpoint), "checkpoint")
    return client, run_id


def test_a_model_from_mlflow_gets_the_metrics_on_its_run(checkpoint, data, tmp_path, capsys):
    root, _ = data
    client, run_id = _run_holding(checkpoint, tmp_path)
    assert run_cli(tmp_path, "--model", f"runs:/{run_id}", "--data", root) == 0
    results = json.loads(capsys.readouterr().out)
    logged = client.get_run(run_id).data.metrics
    assert results["run_id"] == run_id
    assert logged["real_renders_miou"] == pytest.approx(results["groups"]["renders"]["metrics"]["miou"])
    assert logged["real_photos_iou_small_rocks"] == pytest.approx(
        results["groups"]["photos"]["metrics"]["iou_small_rocks"])
    assert {k for k in logged if k.startswith("real_")} >= {"real_photos_rock_miou", "real_renders_pixel_acc",
                                                             "real_renders_dice"}


def test_a_later_evaluation_on_other_data_leaves_no_earlier_score_on_the_run(checkpoint, data, tmp_path, capsys):
    """The photos' scores of an evaluation on another folder stayed on the run beside a tag naming a folder
    without photos; and a run MLflow no longer takes metrics for was a traceback after the files landed."""
    import math
    import shutil

    root, _ = data
    client, run_id = _run_holding(checkpoint, tmp_path)
    client.log_metric(run_id, "real_miou", 0.5, step=0)  # promote's --real-data score on a promotion run
    assert run_cli(tmp_path, "--model", run_id, "--data", root) == 0
    renders_only = tmp_path / "renders-only"
    shutil.copytree(root / "images", renders_only / "images")
    assert run_cli(tmp_path, "--model", run_id, "--data", renders_only) == 0
    logged = client.get_run(run_id).data.metrics
    assert math.isnan(logged["real_photos_miou"]) and math.isnan(logged["real_photos_iou_small_rocks"])
    assert math.isfinite(logged["real_renders_miou"]) and logged["real_miou"] == 0.5  # not evaluate's to clear
    assert client.get_run(run_id).data.tags["lunartune.real_eval_data"] == str(renders_only.resolve())
    capsys.readouterr()

    client.delete_run(run_id)  # MLflow refuses metrics for it now
    report = tmp_path / "m.json"
    assert run_cli(tmp_path, "--model", run_id, "--data", root, "--json", report) == 3
    out, err = capsys.readouterr()
    assert f"the scores were not logged to MLflow run {run_id}" in err and "Traceback" not in err
    assert json.loads(report.read_text()) == json.loads(out)  # the scores stand, printed and written


@pytest.mark.parametrize("folder, counts", [
    pytest.param("kaggle-eval-small", {"renders": (40, {"clean": 40}), "photos": (28, {"real": 28})},
                 marks=pytest.mark.slow),  # 68 images: ~20 s on 2 busy cores
    ("kaggle-fullsize-eval", {"renders": (9, {"clean": 3, "ground": 6}), "photos": (1, {"real": 1})}),
])
def test_the_shared_real_data_is_scored_at_its_own_resolution(checkpoint, tmp_path, capsys, folder, counts):
    from data_pipeline import read_size

    root = SHARED / folder
    if not root.is_dir():
        pytest.skip(f"{root} absent (the shared data sits beside the repo as ../shared)")
    assert run_cli(tmp_path, "--model", checkpoint, "--data", root) == 0
    groups = json.loads(capsys.readouterr().out)["groups"]
    assert {g: (v["images"], v["mask_sources"]) for g, v in groups.items()} == counts
    masks = [p for p in (root / "images").glob("*/*.png") if not p.parent.name == "render"]
    real = list((root / "real_moon_images").glob("g_*.png"))
    clean_frames = {p.name[len("clean"):] for p in (root / "images/clean").glob("*.png")}
    scored = [p for p in masks if p.parent.name == "clean"
              or p.name[len("ground"):] not in clean_frames]  # clean wins where both exist
    assert groups["renders"]["pixels"] == sum(np.prod(read_size(p)) for p in scored)
    assert groups["photos"]["pixels"] == sum(np.prod(read_size(p)) for p in real)
