"""`lunartune export` of a registered model from a real sweep: files verified, model card, clean failures."""
# Tests marked slow share one real sweep per session (~1 min, sweep_fixture.py); each then takes < 15 s.
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from _procs import without_lunartune
from sweep_fixture import finished_sweep
from tuner.cli import CliError
from tuner.cli import main as cli_main
from tuner.export import CARD, FORMATS, ExportConfig, export, parse_formats
from tuner.promote import PromoteConfig, promote

CHAMPION = "models:/lunar-unet@champion"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@pytest.fixture(scope="module")
def promoted(tmp_path_factory, scenes, local_ray):
    # the hand-built U-Net: the same code path as VGG11, exported in a second instead of ~20 s
    sweep = finished_sweep(tmp_path_factory, scenes, "export")
    result = promote(PromoteConfig(experiment=sweep.experiment, backbone="unet_scratch", device="cpu"), sweep.paths)
    return sweep, result


def _pytorch(sweep, spec: str):
    from tuner.model_spec import load_model

    model, info, _ = load_model(spec, sweep.paths)
    return model, info


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_exports_both_formats_verified_with_a_model_card(promoted, tmp_path):
    import onnx
    import onnxruntime

    from data_pipeline import IMAGENET_MEAN, IMAGENET_STD, class_table

    sweep, promotion = promoted
    result = export(ExportConfig(CHAMPION, ("torchscript", "onnx"), tmp_path / "out"), sweep.paths)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([*FORMATS.values(), CARD])
    card = json.loads((tmp_path / "out" / CARD).read_text())
    assert [(c["name"], c["color_rgb"]) for c in card["classes"]] == [(c["name"], list(c["color"])) for c in class_table()]
    assert card["input"]["shape"] == ["batch", 3, 64, 64] and card["input"]["channels"] == "RGB"
    assert card["normalization"] == {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    assert card["config"]["model"]["backbone"] == "unet_scratch"
    assert card["source"]["spec"] == CHAMPION and card["source"]["run_id"] == promotion.promotion_run_id
    assert card["metrics"]["source_run"]["test_miou"] == pytest.approx(promotion.metrics["test_miou"], rel=1e-5)  # tags keep 6 digits
    # atol = rtol x the largest |logit| on the example (a seeded batch of one), at least rtol
    model, _ = _pytorch(sweep, CHAMPION)
    example = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        scale = max(1.0, float(model(example).abs().max()))
    for name in ("torchscript", "onnx"):
        report = card["exports"][name]
        assert report["rtol"] == 1e-4 and report["atol"] == pytest.approx(1e-4 * scale, rel=1e-6)
        assert 0 <= report["max_abs_diff"] <= report["atol"]
    # independently of models.export: batch 3 through both files equals PyTorch within the stated atol
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x).numpy()
        scripted = torch.jit.load(str(result.files["torchscript"]))(x).numpy()
    session = onnxruntime.InferenceSession(str(result.files["onnx"]), providers=["CPUExecutionProvider"])
    from_onnx = session.run(None, {"images": x.numpy()})[0]
    for got, name in ((scripted, "torchscript"), (from_onnx, "onnx")):
        assert np.abs(got - expected).max() <= card["exports"][name]["atol"]
    batch_axis = onnx.load(str(result.files["onnx"])).graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_axis.dim_param and not batch_axis.dim_value  # symbolic: any batch size
    # the declared output shape (the exporter named its height axis "batch" and its width "Convlogits_dim_3")
    assert session.get_outputs()[0].shape == ["batch", 4, 64, 64]
    # each file carries the card's usage part: a copied file still says how to feed it
    usage = {k: card[k] for k in ("card_version", "task", "classes", "input", "normalization", "output")}
    assert json.loads(session.get_modelmeta().custom_metadata_map[CARD]) == usage
    extra = {CARD: ""}
    torch.jit.load(str(result.files["torchscript"]), _extra_files=extra)
    assert json.loads(extra[CARD]) == usage


# the README's example, run as a user without lunartune runs it
_SEGMENT = """
import runpy, sys
sys.argv = ["segment.py", *sys.argv[1:]]
runpy.run_path("segment.py", run_name="__main__")
"""


@pytest.mark.slow
def test_the_readmes_onnx_example_runs_without_lunartune_and_matches_predict(promoted, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from PIL import Image

    from data_pipeline import load_rgb
    from models.inference import predict_mask

    repo = Path(__file__).resolve().parents[2]
    readme = (repo / "README.md").read_text()
    block = readme.split("<!-- export-example -->\n```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "segment.py").write_text(block)
    sweep, _ = promoted
    export(ExportConfig(CHAMPION, ("onnx",), tmp_path / "exported"), sweep.paths)
    photo = sorted((sweep.scenes / "images" / "render").glob("*.png"))[0]
    out = subprocess.run([sys.executable, "-c", without_lunartune(_SEGMENT), str(tmp_path / "exported"),
                          str(photo)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    model, info = _pytorch(sweep, CHAMPION)
    palette = np.array([c["color"] for c in info["classes"]], dtype=np.uint8)
    image = load_rgb(photo)
    expected = palette[predict_mask(model, image, tuple(info["image_size"]), info["normalization"]["mean"],
                                    info["normalization"]["std"])]
    got = np.asarray(Image.open(tmp_path / "mask.png").convert("RGB"))
    assert got.shape == expected.shape == (*image.shape[:2], 3)
    # Pillow's resizes are not torch's to the last bit: nearly every pixel, not all
    assert (got == expected).all(axis=2).mean() > 0.97


@pytest.mark.slow
def test_a_trial_run_id_or_checkpoint_file_exports_too(promoted, tmp_path):
    sweep, promotion = promoted
    export(ExportConfig(promotion.trial_run_id, ("onnx",), tmp_path / "by-run"), sweep.paths)
    card = json.loads((tmp_path / "by-run" / CARD).read_text())
    assert card["source"]["run_id"] == promotion.trial_run_id and list(card["exports"]) == ["onnx"]
    checkpoint = next((sweep.paths.root / "downloads" / promotion.trial_run_id).rglob("*.pt"))
    export(ExportConfig(str(checkpoint), ("torchscript",), tmp_path / "by-file"), sweep.paths)
    card = json.loads((tmp_path / "by-file" / CARD).read_text())
    assert card["source"]["run_id"] is None and card["metrics"]["source_run"] == {}
    assert sorted(p.name for p in (tmp_path / "by-file").iterdir()) == sorted([CARD, FORMATS["torchscript"]])
    # into a folder an earlier export filled: its files of other formats go, the card describes what is there
    export(ExportConfig(str(checkpoint), ("torchscript",), tmp_path / "by-run"), sweep.paths)
    assert sorted(p.name for p in (tmp_path / "by-run").iterdir()) == sorted([CARD, FORMATS["torchscript"]])
    assert (tmp_path / "by-run").stat().st_mode & 0o777 == 0o777 & ~_umask()  # as any folder made here


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_a_nan_metric_is_null_in_the_card_not_invalid_json(promoted, tmp_path):
    """A class absent from the val split has a NaN IoU in the checkpoint; json.dumps wrote a bare NaN, which
    strict parsers (JavaScript's JSON.parse, jq) refuse."""
    sweep, promotion = promoted
    source = next((sweep.paths.root / "downloads" / promotion.trial_run_id).rglob("*.pt"))
    checkpoint = torch.load(source, weights_only=True)
    checkpoint["metrics"]["val_iou_small_rocks"] = float("nan")
    torch.save(checkpoint, tmp_path / "nan.pt")
    export(ExportConfig(str(tmp_path / "nan.pt"), ("torchscript",), tmp_path / "out"), sweep.paths)

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    card = json.loads((tmp_path / "out" / CARD).read_text(), parse_constant=refuse)
    assert card["metrics"]["checkpoint"]["val_iou_small_rocks"] is None


@pytest.mark.parametrize("text, says", [("torchscript,tflite", "unknown format tflite"), (" , ", "(none given)")])
def test_unknown_format_is_a_clear_error(text, says):
    with pytest.raises(CliError, match=f"--format .*{says}.*expected a comma list of torchscript, onnx"):
        parse_formats(text)


def test_format_list_is_normalised():
    assert parse_formats(" ONNX, torchscript,onnx") == ("onnx", "torchscript")


@pytest.mark.slow
def test_cli_unknown_format_exits_1_and_writes_nothing(promoted, tmp_path, capsys):
    sweep, _ = promoted
    out = tmp_path / "out"
    code = cli_main(["--run-dir", str(sweep.paths.root), "export", "--model", CHAMPION, "--format", "tflite",
                     "--out", str(out)])
    assert code == 1 and "unknown format tflite" in capsys.readouterr().err and not out.exists()


@pytest.mark.slow
def test_a_failed_verification_leaves_out_as_it_was(promoted, tmp_path):
    sweep, _ = promoted
    out = tmp_path / "out"
    out.mkdir()
    (out / CARD).write_text("old card")
    # a negative tolerance no export can meet: the first verification fails
    with pytest.raises(CliError, match="outputs differ from PyTorch.*nothing was written"):
        export(ExportConfig(CHAMPION, ("torchscript", "onnx"), out, rtol=-1.0), sweep.paths)
    assert [p.name for p in out.iterdir()] == [CARD] and (out / CARD).read_text() == "old card"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.partial")]


@pytest.mark.slow
def test_unknown_model_is_a_clear_error(promoted, tmp_path):
    sweep, _ = promoted
    with pytest.raises(CliError, match="no alias 'nope'"):
        export(ExportConfig("models:/lunar-unet@nope", ("onnx",), tmp_path / "out"), sweep.paths)
    assert not (tmp_path / "out").exists()
