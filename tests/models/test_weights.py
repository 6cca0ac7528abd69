import pytest
import torch
from safetensors.torch import save_file

from models import ModelConfig, WeightsError, build
from models.weights import hub_source, imagenet_file, load_encoder_file

CLOSED_ENDPOINT = "http://127.0.0.1:9"  # nothing listens on the discard port: the probe is refused at once


def _encoders_equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_pth_encoder_file_loads_into_a_new_model(tmp_path):
    source = build(ModelConfig(backbone="resnet18"))
    path = tmp_path / "enc.pth"
    torch.save(source.encoder.state_dict(), path)
    loaded = build(ModelConfig(backbone="resnet18", encoder_weights=str(path)))
    assert _encoders_equal(loaded.encoder, source.encoder)
    assert not _encoders_equal(build(ModelConfig(backbone="resnet18")).encoder, source.encoder)


def test_safetensors_file_of_a_timm_encoder_with_native_keys(tmp_path):
    source = build(ModelConfig(backbone="tu-mobilenetv3_large_100"))
    # timm's own key names (no "model." prefix), as a timm checkpoint would have them
    native = {k[len("model."):]: v.contiguous() for k, v in source.encoder.state_dict().items()}
    path = tmp_path / "enc.safetensors"
    save_file(native, str(path))
    loaded = build(ModelConfig(backbone="mobilenetv3-large", encoder_weights=str(path)))
    assert _encoders_equal(loaded.encoder, source.encoder)


def test_whole_model_state_dict_uses_its_encoder_part(tmp_path):
    source = build(ModelConfig(backbone="resnet18"))
    path = tmp_path / "model.pt"
    torch.save({"state_dict": source.state_dict()}, path)
    target = build(ModelConfig(backbone="resnet18"))
    load_encoder_file(target.encoder, path)
    assert _encoders_equal(target.encoder, source.encoder)


def test_encoder_file_of_another_encoder_is_rejected_naming_the_file(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(build(ModelConfig(backbone="resnet18")).encoder.state_dict(), path)
    with pytest.raises(WeightsError, match=r"resnet18\.pth.*missing keys"):
        build(ModelConfig(backbone="resnet34", encoder_weights=str(path)))


def test_wrong_shape_is_rejected_naming_key_and_file(tmp_path):
    state = build(ModelConfig(backbone="resnet18")).encoder.state_dict()
    state["conv1.weight"] = torch.zeros(8, 3, 7, 7)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"bad\.pth.*wrong shapes: conv1\.weight"):
        build(ModelConfig(backbone="resnet18", encoder_weights=str(path)))


def test_corrupt_weights_file_is_a_clear_error(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match=r"broken\.pth: cannot read"):
        build(ModelConfig(backbone="resnet18", encoder_weights=str(path)))
    (tmp_path / "empty.pth").write_bytes(b"")  # was "(EOFError: )"
    with pytest.raises(WeightsError, match=r"empty\.pth: cannot read encoder weights: the file is empty$"):
        build(ModelConfig(backbone="resnet18", encoder_weights=str(tmp_path / "empty.pth")))


def test_imagenet_offline_without_cache_fails_with_instructions(tmp_path):
    with pytest.raises(WeightsError) as err:
        imagenet_file("vgg11", cache_dir=tmp_path, endpoint=CLOSED_ENDPOINT)
    message = str(err.value)
    assert "smp-hub/vgg11.imagenet" in message and "HF_HUB_CACHE" in message and "--encoder-weights" in message


def test_imagenet_weights_come_from_a_prefilled_cache_without_network(tmp_path):
    """A hub cache laid out as huggingface_hub writes it is used as is, with the hub unreachable."""
    repo_id, revision, filenames = hub_source("resnet18")
    snapshot = tmp_path / f"models--{repo_id.replace('/', '--')}" / "snapshots" / revision
    snapshot.mkdir(parents=True)
    source = build(ModelConfig(backbone="resnet18"))
    save_file({k: v.contiguous() for k, v in source.encoder.state_dict().items()}, str(snapshot / filenames[0]))
    path = imagenet_file("resnet18", cache_dir=tmp_path, endpoint=CLOSED_ENDPOINT)
    target = build(ModelConfig(backbone="resnet18"))
    load_encoder_file(target.encoder, path)
    assert _encoders_equal(target.encoder, source.encoder)


def test_a_hub_that_answers_without_the_weights_is_a_clear_error(tmp_path):
    """A reachable endpoint without the file (or a proxy's error page): huggingface_hub's own exception was
    a traceback; every candidate file is tried, then one WeightsError names the repo and what failed."""
    import http.server
    import threading

    requested = []

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            requested.append(self.path)
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(WeightsError, match=r"encoder 'tu-mobilenetv3_large_100': downloading .* failed "
                                               r"\(model\.safetensors: .*; pytorch_model\.bin: .*--encoder-weights"):
            imagenet_file("tu-mobilenetv3_large_100", cache_dir=tmp_path, endpoint=f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
    assert any("pytorch_model.bin" in path for path in requested)  # the second candidate was asked for too


def test_behind_a_proxy_the_direct_probe_is_skipped(monkeypatch):
    """A machine that reaches the hub only through HTTPS_PROXY fails a direct TCP connect: it said "cannot be
    reached" although huggingface_hub (which honours the proxy) would download."""
    from models.weights import behind_proxy

    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert not behind_proxy("https://huggingface.co")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert behind_proxy("https://huggingface.co")
    monkeypatch.setenv("NO_PROXY", "huggingface.co")
    assert not behind_proxy("https://huggingface.co")
