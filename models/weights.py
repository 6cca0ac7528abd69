"""Encoder weights: `none`, `imagenet` (from the Hugging Face hub cache, failing fast offline) or a file.

Why not let smp download: offline, huggingface_hub retries for 23-46 s before it gives up
(../shared/STACK.md). So `imagenet` first looks in the local hub cache (HF_HOME / HF_HUB_CACHE are honoured
by huggingface_hub itself); only when the file is not cached does it probe the hub with a short TCP
connect and download; if the hub cannot be reached it raises WeightsError at once, saying how to pre-fill
the cache or pass a file instead.

A weights file is the encoder's own state_dict (`model.encoder.state_dict()`), as .pth/.pt/.bin
(loaded with weights_only=True) or .safetensors. Also accepted: a whole model's state_dict (keys under
`encoder.` are used), a dict wrapping it under "state_dict"/"model", and timm's native keys for `tu-`
encoders (they live under `model.` in smp). Classifier-head keys (fc, classifier, ...) are ignored:
encoders drop their heads. Anything else that does not fit is a WeightsError naming the file.
"""
from __future__ import annotations

import pickle
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

NONE, IMAGENET = "none", "imagenet"
WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
HUB_PROBE_TIMEOUT_S = 3.0  # a reachable hub answers a TCP connect well within this
# Top-level modules of classifier heads that encoders drop; their keys in a file are ignored.
HEAD_MODULES = frozenset({"fc", "_fc", "classifier", "last_linear", "head", "conv_head"})
_MAX_LISTED_KEYS = 5


class WeightsError(ValueError):
    """Encoder weights that cannot be had or do not fit; the message names the file or encoder."""


def is_weights_file(spec: str) -> bool:
    return spec not in (NONE, IMAGENET)


def check_weights_spec(spec: str) -> str | None:
    """None if `spec` is none, imagenet or an existing weights file; else what is wrong with it."""
    if not is_weights_file(spec):
        return None
    path = Path(spec).expanduser()
    if path.suffix.lower() not in WEIGHT_FILE_SUFFIXES:
        return f"none, imagenet or a weights file ({', '.join(WEIGHT_FILE_SUFFIXES)})"
    if not path.is_file():
        return f"none, imagenet or an existing weights file ({path} does not exist)"
    return None


# ----------------------------------------------------------------------------------------- imagenet
def hub_source(encoder: str) -> tuple[str, str | None, tuple[str, ...]]:
    """(repo_id, revision, candidate file names) of an encoder's ImageNet weights on the hub."""
    if encoder.startswith("tu-"):
        import timm

        cfg = timm.models.get_pretrained_cfg(encoder[3:])
        if cfg is None or not cfg.hf_hub_id:
            raise WeightsError(f"encoder {encoder!r} has no ImageNet weights on the hub")
        return cfg.hf_hub_id, None, ("model.safetensors", "pytorch_model.bin")
    from segmentation_models_pytorch.encoders import encoders

    settings = encoders[encoder]["pretrained_settings"].get(IMAGENET)
    if settings is None:
        raise WeightsError(f"encoder {encoder!r} has no ImageNet weights in smp")
    return settings["repo_id"], settings["revision"], ("model.safetensors",)


def cached_hub_file(repo_id: str, revision: str | None, filenames, cache_dir=None) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    for name in filenames:
        found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir, revision=revision)
        if isinstance(found, str):  # a path; None or a "known missing" sentinel otherwise
            return Path(found)
    return None


def hub_reachable(endpoint: str, timeout_s: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """One TCP connect to the hub's host: seconds at most, instead of huggingface_hub's retry loop."""
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def imagenet_file(encoder: str, *, cache_dir=None, endpoint: str | None = None,
                  probe_timeout_s: float = HUB_PROBE_TIMEOUT_S) -> Path:
    """The local path of `encoder`'s ImageNet weights: from the cache, else downloaded, else WeightsError.

    `cache_dir` and `endpoint` default to huggingface_hub's own (HF_HUB_CACHE, HF_ENDPOINT).
    """
    from huggingface_hub import constants, hf_hub_download

    repo_id, revision, filenames = hub_source(encoder)
    cached = cached_hub_file(repo_id, revision, filenames, cache_dir)
    if cached is not None:
        return cached
    endpoint = endpoint or constants.ENDPOINT
    if constants.HF_HUB_OFFLINE or not (behind_proxy(endpoint) or hub_reachable(endpoint, probe_timeout_s)):
        raise WeightsError(
            f"ImageNet weights for encoder {encoder!r} ({repo_id}/{filenames[0]}) are not in the Hugging Face "
            f"cache ({cache_dir or constants.HF_HUB_CACHE}) and {endpoint} cannot be reached. Pre-fill the cache "
            f"on a machine with internet (python -c \"import huggingface_hub as h; h.hf_hub_download('{repo_id}', "
            f"'{filenames[0]}'{_revision_arg(revision)})\") and point HF_HOME or HF_HUB_CACHE at it, or pass "
            f"--encoder-weights PATH to a local .pth/.safetensors encoder state_dict, or use --encoder-weights none.")
    failures = []
    for name in filenames:  # timm's repos hold model.safetensors or only pytorch_model.bin
        try:
            return Path(hf_hub_download(repo_id, name, revision=revision, cache_dir=cache_dir, endpoint=endpoint))
        except Exception as err:  # HTTP 401/404/5xx, a dropped connection, a full disk: one clear error
            failures.append(f"{name}: {type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}")
    raise WeightsError(f"ImageNet weights for encoder {encoder!r}: downloading {repo_id} from {endpoint} failed "
                       f"({'; '.join(failures)}); pass --encoder-weights PATH to a local encoder state_dict, or "
                       f"use --encoder-weights none")


def behind_proxy(endpoint: str) -> bool:
    """Is the hub reached through a proxy (HTTPS_PROXY, ...)? Then a direct TCP probe says nothing: a machine
    that reaches the internet only through its proxy fails it, and huggingface_hub would download fine."""
    from urllib.request import getproxies, proxy_bypass

    url = urlparse(endpoint)
    return url.scheme in getproxies() and not proxy_bypass(url.hostname or "")


def _revision_arg(revision: str | None) -> str:
    return f", revision='{revision}'" if revision else ""


def timm_file_overlay(path: Path) -> dict:
    """timm.create_model kwargs that load pretrained weights from a local file, never from the network."""
    return {"pretrained_cfg_overlay": {"file": str(path), "source": "timm"}}


# ----------------------------------------------------------------------------------------- files
def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A flat {key: tensor} from a .safetensors or torch file; WeightsError naming the file otherwise."""
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's own text is a page long and suggests weights_only=False
        raise WeightsError(f"{path}: cannot read encoder weights (not a torch file that loads with "
                           f"weights_only=True: corrupt, or it pickles objects other than tensors)") from None
    except Exception as err:  # truncated, not a zip, not safetensors, ...
        if path.is_file() and path.stat().st_size == 0:
            raise WeightsError(f"{path}: cannot read encoder weights: the file is empty") from None
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise WeightsError(f"{path}: cannot read encoder weights ({type(err).__name__}: {first_line})") from None
    for wrapper in ("state_dict", "model"):  # common training-script wrappers around the state_dict
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: expected a state_dict (a mapping of names to tensors)")
    return state


def _key_variants(state: dict) -> list[dict]:
    """The file's keys as-is, with a whole model's `encoder.` prefix stripped, and with timm's `model.` added."""
    encoder_only = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    return [state, encoder_only, {f"model.{k}": v for k, v in state.items()}]


def _is_head_key(key: str) -> bool:
    parts = key.split(".")
    return parts[0] in HEAD_MODULES or (parts[0] == "model" and len(parts) > 1 and parts[1] in HEAD_MODULES)


def _listed(keys) -> str:
    keys = sorted(keys)
    more = f" (+{len(keys) - _MAX_LISTED_KEYS} more)" if len(keys) > _MAX_LISTED_KEYS else ""
    return ", ".join(keys[:_MAX_LISTED_KEYS]) + more


def load_encoder_file(encoder: nn.Module, path: str | Path, name: str = "") -> None:
    """Load a weights file into encoder `name` after checking every key and shape; WeightsError names the file."""
    nn.Module.load_state_dict(encoder, _fitting_state(encoder, path, name), strict=False)  # checked there


def check_encoder_file(encoder: nn.Module, path: str | Path, name: str = "") -> None:
    """WeightsError naming the file unless it reads and fits encoder `name`, which may live on the meta
    device (shapes only): a sweep checks its weights files this way before any trial starts."""
    _fitting_state(encoder, path, name)


def _fitting_state(encoder: nn.Module, path: str | Path, name: str) -> dict[str, torch.Tensor]:
    """The file's tensors that `encoder` takes, once every key and shape has been checked."""
    path = Path(path).expanduser()
    expected = encoder.state_dict()
    state = max(_key_variants(read_state_dict(path)), key=lambda s: len(expected.keys() & s.keys()))
    # BatchNorm's num_batches_tracked is bookkeeping that older files lack; everything else must be there.
    missing = {k for k in expected.keys() - state.keys() if not k.endswith("num_batches_tracked")}
    unexpected = {k for k in state.keys() - expected.keys() if not _is_head_key(k)}
    wrong_shape = {f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
                   for k in expected.keys() & state.keys() if state[k].shape != expected[k].shape}
    problems = [f"{label}: {_listed(keys)}" for label, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong_shape)) if keys]
    if problems:
        encoder_name = f"the {name} encoder" if name else "the encoder"
        raise WeightsError(f"{path}: does not fit {encoder_name} ({len(expected)} tensors); " + "; ".join(problems))
    return {k: v for k, v in state.items() if k in expected}
