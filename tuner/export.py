"""`lunartune export --model SPEC --format torchscript,onnx --out DIR`: deployable files + a model card.

SPEC is anything `tuner.model_spec` resolves (models:/NAME@ALIAS, runs:/RUN_ID, a run id, a checkpoint
file). Each format is written and then verified by `models.export` (the exported file and PyTorch agree
within a tolerance (rtol times the largest |logit|, see `tolerance`) on random inputs of another batch size than the example's, proving the dynamic batch axis;
ONNX runs in onnxruntime when installed, else only onnx's checker). `model_card.json` says how to feed the
files (input size, RGB order, 0-1 scaling then mean/std normalisation) and what comes out (logits per class,
the class table with colours), plus config, metrics, the source and each file's verification result.

Everything is written into a staging folder and moved into --out only when every export verified.
"""
from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from tuner.cli import CliError
from tuner.settings import RunPaths
from tuner.train import json_safe

FORMATS = {"torchscript": "model.torchscript.pt", "onnx": "model.onnx"}  # format -> file name in --out
CARD = "model_card.json"
CARD_VERSION = 1


@dataclass(frozen=True)
class ExportConfig:
    model: str  # model spec (see tuner.model_spec)
    formats: tuple[str, ...]  # subset of FORMATS, in the order given
    out: Path  # output folder (created, or files replaced one by one)
    rtol: float = 1e-4  # accepted max |logit difference| per unit of logit scale (see tolerance())


@dataclass(frozen=True)
class ExportResult:
    out: Path
    files: dict  # format -> path in out
    card: dict  # the model card as written


def parse_formats(text: str) -> tuple[str, ...]:
    """'torchscript, ONNX' -> ('torchscript', 'onnx'); CliError naming an unknown format."""
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise CliError(f"--format {text!r}: unknown format {', '.join(unknown) or '(none given)'}; "
                       f"expected a comma list of {', '.join(FORMATS)}")
    return tuple(dict.fromkeys(names))  # duplicates once, order kept


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _source_metrics(paths: RunPaths, run_id: str | None) -> dict:
    """Latest value of every metric of the source MLflow run (test_*/real_* for a promoted model)."""
    if not run_id:
        return {}
    from mlflow.tracking import MlflowClient

    return dict(MlflowClient(tracking_uri=paths.tracking_uri).get_run(run_id).data.metrics)


def usage_card(info: dict) -> dict:
    """What a program needs to run the exported files: in model_card.json and inside each file too."""
    height, width = info["image_size"]
    classes = info["classes"]
    return {
        "card_version": CARD_VERSION,
        "task": "semantic segmentation of lunar-surface images",
        "classes": [{"index": c["index"], "name": c["name"], "color_rgb": list(c["color"])} for c in classes],
        "input": {"name": "images", "shape": ["batch", 3, height, width], "dtype": "float32", "layout": "NCHW",
                  "channels": "RGB", "batch_axis": "dynamic",
                  "preprocessing": "convert to RGB (drop alpha, grey to 3 channels), scale to 0-1, resize to height "
                                   "x width (bilinear, align_corners=False, antialiased when shrinking), subtract "
                                   "mean, divide by std (per channel)"},
        "normalization": info["normalization"],
        "output": {"name": "logits", "shape": ["batch", len(classes), height, width], "dtype": "float32",
                   "postprocessing": "resize the logits to the image's own height x width (bilinear, "
                                     "align_corners=False), then argmax over axis 1 gives the class index per "
                                     "pixel (as lunartune predict does; an argmax before resizing gives blocky "
                                     "borders and differs on a few % of the pixels)"},
    }


def embedded_metadata(info: dict) -> dict[str, str]:
    """The usage card as the exported files carry it: ONNX metadata_props / TorchScript extra file."""
    return {CARD: json.dumps(json_safe(usage_card(info)), allow_nan=False, sort_keys=True)}


def model_card(info: dict, resolved, reports: dict, source_metrics: dict) -> dict:
    return {
        **usage_card(info),
        "config": {"model": info["model_config"].to_dict(), "train": info["train_config"].to_dict(),
                   "epoch": info["epoch"]},
        "metrics": {"checkpoint": info["metrics"], "source_run": source_metrics},
        "source": {"spec": resolved.model_uri or str(resolved.checkpoint_path), "run_id": resolved.run_id,
                   "description": resolved.description, "checkpoint_sha256": _sha256(resolved.checkpoint_path)},
        "exports": reports,
    }


def tolerance(model, example, rtol: float) -> float:
    """Absolute tolerance on logits: rtol times the largest |logit| on the example (at least rtol).

    float32 kernels differ by a few ulps of the values they add up, so the error grows with the logits'
    scale: a briefly trained net can emit logits in the thousands, where 1e-4 absolute is below float32's
    resolution; a fixed atol would reject correct exports of such models and accept wrong ones of others."""
    import torch

    with torch.no_grad():
        scale = float(model.eval().cpu()(example).abs().max())
    return rtol * max(1.0, scale)


def export_formats(model, info, formats: tuple[str, ...], folder: Path, rtol: float) -> dict:
    """Write and verify each format into `folder`; {format: report with file name, sha256, max error}."""
    import torch

    from models.export import ExportError, export_onnx, export_torchscript

    writers = {"torchscript": export_torchscript, "onnx": export_onnx}
    example = torch.randn(1, 3, *info["image_size"], generator=torch.Generator().manual_seed(0))
    atol = tolerance(model, example, rtol)
    reports = {}
    for name in formats:
        path = folder / FORMATS[name]
        try:
            report = writers[name](model, path, example, atol=atol, metadata=embedded_metadata(info))
        except ExportError as err:
            raise CliError(f"{name}: {err} (nothing was written to --out)") from None
        reports[name] = {**report, "path": FORMATS[name], "sha256": _sha256(path), "rtol": rtol,
                         "verified": "outputs equal PyTorch's within atol (= rtol x max |logit|) on random inputs"
                         if report.get("max_abs_diff") is not None else "onnx.checker only"}
    return reports


def export(cfg: ExportConfig, paths: RunPaths) -> ExportResult:
    from tuner.model_spec import load_model
    from tuner.predict import staged_output

    model, info, resolved = load_model(cfg.model, paths)
    with staged_output(cfg.out) as staging:
        reports = export_formats(model, info, cfg.formats, staging, cfg.rtol)
        card = model_card(info, resolved, reports, _source_metrics(paths, resolved.run_id))
        # a NaN metric (a class absent from the val split) is null: bare NaN is not JSON
        (staging / CARD).write_text(json.dumps(json_safe(card), allow_nan=False, indent=2) + "\n")
    out = Path(cfg.out).expanduser().resolve()
    for name, file in FORMATS.items():  # an earlier export's, of maybe another model: the card lists only these
        if name not in cfg.formats:
            (out / file).unlink(missing_ok=True)
    return ExportResult(out, {name: out / FORMATS[name] for name in cfg.formats}, card)


def config_from_args(args) -> ExportConfig:
    return ExportConfig(model=args.model, formats=parse_formats(args.format), out=Path(args.out))


def main(args, paths: RunPaths) -> int:
    result = export(config_from_args(args), paths)
    for name, report in result.card["exports"].items():
        error = report.get("max_abs_diff")
        check = f"max |diff| {error:.2e} <= atol {report['atol']:g}" if error is not None else "checker only"
        print(f"{name:<12} {result.files[name]}  ({report['runtime']}: {check})")
    print(f"{'model card':<12} {result.out / CARD}")
    print(f"source: {result.card['source']['description']}", file=sys.stderr)
    return 0
