"""Export a model to TorchScript or ONNX, each verified against PyTorch before it is trusted.

Both formats keep the batch axis dynamic; the spatial size is fixed at the example's (the checkpoint's
training size): the model's scores hold at that scale, with objects sized as in training, and the card tells
a consumer to resize to it. (Traces of every registry backbone do run at other multiples of its size
multiple, checked on 2026-12-05 with smp 0.6 and torch 2.14, but nothing verifies them there.) Verification
runs the exported file and the PyTorch model on random inputs whose batch size differs from the example's
(proving the dynamic axis) and requires max |difference| <= atol (default 1e-4 on logits). ONNX files are
checked with onnx.checker and, when onnxruntime is importable, run with it on CPU; without onnxruntime only
the checker runs (the returned report says which). TorchScript uses tracing (torch.jit.trace): smp models
are not scriptable. ONNX uses the TorchScript-based exporter (dynamo=False): in torch 2.14 it is the path
that handles `dynamic_axes` for these models without needing torch.export to succeed on every decoder.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

DEFAULT_ATOL = 1e-4  # max |logit difference| accepted between PyTorch and the exported model
ONNX_OPSET = 17
INPUT_NAME, OUTPUT_NAME = "images", "logits"


class ExportError(RuntimeError):
    """An export that failed or whose outputs differ from PyTorch's; the message names the file."""


@contextmanager
def _quiet_jit():
    """torch 2.14 marks torch.jit deprecated; it is still the one format that loads without our Python code."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=FutureWarning)
        yield


def _verify_batch(example: torch.Tensor) -> torch.Tensor:
    """Random inputs shaped like the example but with a different batch size."""
    generator = torch.Generator().manual_seed(0)
    shape = (example.shape[0] + 1, *example.shape[1:])
    return torch.randn(shape, generator=generator, dtype=example.dtype)


def _compare(path: Path, expected: torch.Tensor, got: torch.Tensor, atol: float) -> float:
    if tuple(got.shape) != tuple(expected.shape):
        raise ExportError(f"{path}: output shape {tuple(got.shape)} != PyTorch's {tuple(expected.shape)}")
    diff = float((got.float() - expected.float()).abs().max())
    if not diff <= atol:  # also catches NaN
        raise ExportError(f"{path}: outputs differ from PyTorch by {diff:.3g} (> atol {atol:g})")
    return diff


@torch.no_grad()
def _reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.eval().cpu()(x)


@torch.no_grad()
def export_torchscript(model: nn.Module, path, example: torch.Tensor, atol: float = DEFAULT_ATOL,
                       metadata: dict[str, str] | None = None) -> dict:
    """Trace `model` (eval, CPU) on `example`, save it with `metadata` as extra files (torch.jit.load's
    `_extra_files` reads them back), verify it; returns verify_torchscript's report."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    try:
        with _quiet_jit():
            traced = torch.jit.trace(model, example.cpu(), check_trace=False)
            traced.save(str(path), _extra_files=metadata or {})
    except Exception as err:
        raise ExportError(f"{path}: TorchScript export failed: {type(err).__name__}: {err}") from None
    return verify_torchscript(model, path, example, atol)


@torch.no_grad()
def verify_torchscript(model: nn.Module, path, example: torch.Tensor, atol: float = DEFAULT_ATOL) -> dict:
    path = Path(path)
    x = _verify_batch(example)
    with _quiet_jit():
        loaded = torch.jit.load(str(path), map_location="cpu")
    diff = _compare(path, _reference(model, x), loaded(x), atol)
    return {"format": "torchscript", "path": str(path), "max_abs_diff": diff, "atol": atol,
            "verify_batch": x.shape[0], "runtime": "torch.jit"}


@torch.no_grad()
def export_onnx(model: nn.Module, path, example: torch.Tensor, atol: float = DEFAULT_ATOL,
                metadata: dict[str, str] | None = None) -> dict:
    """Export `model` (eval, CPU) to ONNX with a dynamic batch axis and `metadata` in the file's
    metadata_props, then verify; returns verify_onnx's report."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    try:
        torch.onnx.export(model, (example.cpu(),), str(path), dynamo=False, opset_version=ONNX_OPSET,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    except Exception as err:
        raise ExportError(f"{path}: ONNX export failed: {type(err).__name__}: {err}") from None
    _declare_output_and_metadata(path, ["batch", *_reference(model, example).shape[1:]], metadata or {})
    return verify_onnx(model, path, example, atol)


def _declare_output_and_metadata(path: Path, output_shape: list, metadata: dict[str, str]) -> None:
    """The exporter's shape inference names the output's height axis after the batch axis ("batch", 4,
    "batch", "Convlogits_dim_3"): whatever sizes buffers from the declared shape is misled. The input's
    height and width are fixed, so are the output's: declare them, and add the metadata."""
    import onnx

    proto = onnx.load(str(path))
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    for dim, size in zip(dims, output_shape):
        dim.Clear()
        if isinstance(size, str):
            dim.dim_param = size
        else:
            dim.dim_value = int(size)
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))


def declared_output_shape(path) -> list:
    """The ONNX file's declared output shape: a name for a free axis, a number for a fixed one."""
    import onnx

    dims = onnx.load(str(path), load_external_data=False).graph.output[0].type.tensor_type.shape.dim
    return [d.dim_param if d.HasField("dim_param") else d.dim_value for d in dims]


def verify_onnx(model: nn.Module, path, example: torch.Tensor, atol: float = DEFAULT_ATOL) -> dict:
    import onnx

    path = Path(path)
    try:
        onnx.checker.check_model(str(path))
    except Exception as err:
        raise ExportError(f"{path}: onnx.checker rejected the file: {err}") from None
    expected = ["batch", *_reference(model, example).shape[1:]]
    if declared_output_shape(path) != expected:
        raise ExportError(f"{path}: declared output shape {declared_output_shape(path)} != {expected}")
    report = {"format": "onnx", "path": str(path), "atol": atol, "opset": ONNX_OPSET}
    try:
        import onnxruntime
    except ImportError:
        return {**report, "runtime": "onnx.checker only (onnxruntime not installed)", "max_abs_diff": None}
    x = _verify_batch(example)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])
    diff = _compare(path, _reference(model, x), got, atol)
    return {**report, "runtime": f"onnxruntime {onnxruntime.__version__}", "max_abs_diff": diff,
            "verify_batch": x.shape[0]}
