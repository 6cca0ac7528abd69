"""Search spaces: shipped files load, validation names file + field, define-by-run is conditional."""
from __future__ import annotations

import pickle

import optuna
import pytest
import yaml

import search_spaces
from tuner.space import SpaceError, define_by_run, load_space

BACKBONES = ("unet_scratch", "vgg11", "resnet18", "mobilenetv3-large")
optuna.logging.set_verbosity(optuna.logging.WARNING)


def _write(tmp_path, raw) -> str:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False) if not isinstance(raw, str) else raw)
    return str(path)


def _load(tmp_path, raw):
    return load_space(_write(tmp_path, raw), known_backbones=BACKBONES)


def _draws(space, n: int, seed: int = 0) -> list[dict]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    fn = define_by_run(space)
    out = []
    for _ in range(n):
        trial = study.ask()
        fixed = fn(trial)
        out.append({**trial.params, **fixed})
        study.tell(trial, 0.0)
    return out


@pytest.mark.parametrize("name", ["default", "vgg11", "smoke"])
def test_shipped_spaces_load_with_the_real_registry(name):
    space = load_space(search_spaces.resolve(name))  # backbones checked against models.registry
    assert space.params and space.source.endswith(f"{name}.yaml")


def test_shipped_spaces_cover_what_the_issue_asks():
    default = load_space(search_spaces.resolve("default"), known_backbones=BACKBONES)
    assert set(default.choices_of("backbone")) == set(BACKBONES)
    assert set(default.choices_of("optimizer")) == {"adam", "adamw", "sgd"}
    lr = next(p for p in default.params if p.name == "lr")
    assert lr.log and {"dropout", "loss", "batch_size", "weight_decay", "augment"} <= set(default.param_names)
    assert default.points_to_evaluate[0]["backbone"] == "vgg11" and default.points_to_evaluate[0]["lr"] == 1e-3
    assert load_space(search_spaces.resolve("vgg11"), known_backbones=BACKBONES).choices_of("backbone") == ("vgg11",)
    assert set(load_space(search_spaces.resolve("smoke"), known_backbones=BACKBONES).choices_of("backbone")) \
        == {"unet_scratch", "vgg11"}


@pytest.mark.parametrize("name", ["default", "vgg11"])
def test_the_reference_point_sets_every_parameter_it_activates(name):
    """It left weight_decay out: the "reference setting" ran with a random decay of up to 1e-2."""
    space = load_space(search_spaces.resolve(name), known_backbones=BACKBONES)
    point = dict(space.points_to_evaluate[0])
    assert [p.name for p in space.params if p.is_active(point) and p.name not in point] == []


def test_conditional_params_only_appear_when_their_condition_holds():
    space = load_space(search_spaces.resolve("default"), known_backbones=BACKBONES)
    draws = _draws(space, 60)
    assert all(("momentum" in d) == (d["optimizer"] == "sgd") for d in draws)
    assert all(("focal_gamma" in d) == (d["loss"] == "focal") for d in draws)
    assert any("momentum" in d for d in draws) and any("momentum" not in d for d in draws)
    assert all(d["arch"] == "unet" and d["encoder_weights"] == "none" for d in draws)  # fixed values


def test_define_by_run_is_picklable_and_seeded():
    space = load_space(search_spaces.resolve("smoke"), known_backbones=BACKBONES)
    clone = pickle.loads(pickle.dumps(define_by_run(space)))
    assert clone.args[0] == space
    assert _draws(space, 5, seed=3) == _draws(space, 5, seed=3) != _draws(space, 5, seed=4)


def test_numbers_written_without_a_dot_are_accepted(tmp_path):
    space = _load(tmp_path, "params:\n  lr: {low: 1e-4, high: 1e-2, log: true}\n")
    assert space.params[0].low == 1e-4
    # in choices and fixed values too (YAML reads them as text), and the models' checks then pass
    space = _load(tmp_path, "params:\n  lr: {choices: [1e-4, 3e-4]}\nfixed: {weight_decay: 1e-5, encoder_weights: 2e5.pth}\n")
    assert space.params[0].choices == (1e-4, 3e-4) and space.fixed == (("weight_decay", 1e-5), ("encoder_weights", "2e5.pth"))


BAD = [
    ({"params": {"lr": {"low": 1e-3, "high": 1e-2}}, "extra": 1}, "top level", "extra"),
    ({"params": {"learning_rate": {"low": 1e-3, "high": 1e-2}}}, "params.learning_rate", "unknown hyperparameter"),
    ({"params": {"lr": {"low": 1e-3, "hi": 1e-2}}}, "params.lr", "unknown key"),
    ({"params": {"backbone": {"choices": ["vgg11", "vgg99"]}}}, "params.backbone.choices", "vgg99"),
    ({"params": {"lr": {"low": 1e-3}}, "fixed": {"backbone": "resnet9000"}}, "params.lr.high", "finite number"),
    ({"params": {"dropout": {"low": 0.1}}, "fixed": {"backbone": "resnet9000"}}, "params.dropout.high", "number"),
    ({"params": {"dropout": {"low": 0.3, "high": 0.3}}}, "params.dropout", "low (0.3) must be < high (0.3)"),
    ({"params": {"lr": {"low": 0.0, "high": 0.1, "log": True}}}, "params.lr", "log range needs low > 0"),
    ({"params": {"optimizer": {"choices": []}}}, "params.optimizer.choices", "non-empty list"),
    ({"params": {"optimizer": {"choices": ["sgd", "sgd"]}}}, "params.optimizer.choices", "duplicate"),
    ({"params": {"momentum": {"low": 0.8, "high": 0.9, "when": {"optimizer": "sgd"}},
                 "optimizer": {"choices": ["sgd", "adam"]}}}, "params.momentum.when.optimizer", "listed above"),
    ({"params": {"optimizer": {"choices": ["adam"]}, "momentum": {"low": 0.8, "high": 0.9,
                 "when": {"optimizer": "sgd"}}}}, "params.momentum.when.optimizer", "not among the choices"),
    ({"params": {"lr": {"low": 1e-3, "high": 1e-2}}, "fixed": {"lr": 1e-3}}, "fixed.lr", "also listed"),
    ({"params": {"lr": {"low": 1e-3, "high": 1e-2}}, "fixed": {"epochs": 3}}, "fixed.epochs", "unknown"),
    ({"params": {"lr": {"low": 1e-3, "high": 1e-2}}, "points_to_evaluate": [{"lr": 0.5}]},
     "points_to_evaluate[0].lr", "outside the space"),
    ({"params": {"batch_size": {"type": "int", "low": 4, "high": 16, "step": 4}},
      "points_to_evaluate": [{"batch_size": 6}]}, "points_to_evaluate[0].batch_size", "in steps of 4 from 4"),
    ({"params": {"dropout": {"low": 0.0, "high": 0.5, "step": 0.1}}, "points_to_evaluate": [{"dropout": 0.05}]},
     "points_to_evaluate[0].dropout", "outside the space"),
    ({"params": {"lr": {"low": 1e-3, "high": 1e-2}}, "points_to_evaluate": [{"momentum": 0.9}]},
     "points_to_evaluate[0]", "unknown key"),
    ({"params": {"optimizer": {"choices": ["adam", "sgd"]}, "momentum": {"low": 0.8, "high": 0.9,
      "when": {"optimizer": "sgd"}}}, "points_to_evaluate": [{"optimizer": "adam", "momentum": 0.85}]},
     "points_to_evaluate[0].momentum", "only searched when"),
    ({"params": {}}, "params", "non-empty mapping"),
    ({"params": {"batch_size": {"type": "int", "low": 2.5, "high": 8}}}, "params.batch_size.low", "integer"),
    ([1, 2], "space.yaml", "expected a mapping"),
]


@pytest.mark.parametrize("raw, field, says", BAD, ids=[b[1] + ":" + b[2] for b in BAD])
def test_a_bad_space_is_one_clear_error_naming_file_and_field(tmp_path, raw, field, says):
    with pytest.raises(SpaceError) as err:
        _load(tmp_path, raw)
    message = str(err.value)
    assert str(tmp_path / "space.yaml") in message and field in message and says in message


def test_invalid_yaml_and_missing_files_are_clear(tmp_path):
    with pytest.raises(SpaceError, match="not valid YAML"):
        _load(tmp_path, "params: {lr: [\n")
    with pytest.raises(SpaceError, match=r"not valid YAML: duplicate key 'lr' \(line 3, column 3\)$"):  # YAML kept the last
        _load(tmp_path, "params:\n  lr: {low: 1.0e-4, high: 1.0e-2, log: true}\n  lr: {choices: [0.1]}\n")
    with pytest.raises(SpaceError, match=r"not valid YAML: a key must be a name, not a list \(line 2"):
        _load(tmp_path, "params:\n  {[a]: 1}\n")  # was "TypeError: unhashable type: 'list'"
    (tmp_path / "utf16.yaml").write_bytes("params: {}".encode("utf-16"))  # was a UnicodeDecodeError traceback
    with pytest.raises(SpaceError, match=r"utf16.yaml: not a text \(UTF-8\) file: invalid start byte at byte 0"):
        load_space(tmp_path / "utf16.yaml")
    with pytest.raises(FileNotFoundError, match="shipped spaces: default, smoke, vgg11"):
        search_spaces.resolve("nope")
    with pytest.raises(SpaceError, match=r"the file is empty \(expected a mapping"):  # was "got NoneType"
        _load(tmp_path, "# nothing but a comment\n")


def test_values_the_models_package_refuses_are_caught_before_any_trial(tmp_path):
    from tuner.space import check_against_models

    space = _load(tmp_path, {"params": {"dropout": {"low": 0.0, "high": 1.0}}})
    with pytest.raises(SpaceError, match=r"space.yaml: params.dropout: 1.0 is refused.*dropout"):
        check_against_models(space, (64, 64))
    space = _load(tmp_path, {"params": {"optimizer": {"choices": ["adam", "lion"]}}})
    with pytest.raises(SpaceError, match=r"params.optimizer: 'lion' is refused"):
        check_against_models(space, (64, 64))
    space = _load(tmp_path, {"params": {"backbone": {"choices": ["unet_scratch", "vgg11"]}}})
    check_against_models(space, (64, 64))
    with pytest.raises(SpaceError, match=r"^--image-size 48x48 does not fit every configuration of .*space.yaml "
                                         r"\(params.backbone: 'vgg11'\): .*multiples of 32 for backbone vgg11$"):
        check_against_models(space, (48, 48))  # fine for the scratch U-Net, not for smp encoders: the flag's fault


@pytest.mark.parametrize("raw, field, says", [
    ({"params": {"batch_size": {"low": 4, "high": 16}}}, "params.batch_size: 4.0",
     "expected an integer; the range is of floats: add `type: int` to it"),
    ({"params": {"scratch_depth": {"low": 2, "high": 4}}}, "params.scratch_depth: 2.0", "expected an integer"),
    ({"params": {"lr": {"low": 1e-3, "high": 1e-2}}, "fixed": {"augment": "off"}}, "fixed.augment: 'off'",
     "true or false"),
    # a fixed value at fault is named, whichever value was being checked when it showed
    ({"params": {"lr": {"low": 1e-3, "high": 1e-2}}, "fixed": {"backbone": "vgg11", "dropout": "high"}},
     "fixed.dropout: 'high'", "ModelConfig.dropout='high': expected a number"),
    ({"params": {"lr": {"low": 1e-3, "high": 1e-2}}, "fixed": {"nesterov": "yes"}}, "fixed.nesterov: 'yes'",
     "true or false"),
])
def test_values_of_the_wrong_type_are_refused_naming_the_field(tmp_path, raw, field, says):
    # each would otherwise have failed every trial three times (a float batch size) or silently done
    # something else ("off" is a true value: augmentation stayed on)
    from tuner.space import check_against_models

    with pytest.raises(SpaceError) as err:
        check_against_models(_load(tmp_path, {**raw, "fixed": {"backbone": "unet_scratch", **raw.get("fixed", {})}}),
                             (64, 64))
    assert f"space.yaml: {field}" in str(err.value) and says in str(err.value)


def test_each_value_is_checked_with_every_backbone_the_space_pairs_it_with(tmp_path):
    from tuner.space import check_against_models

    # the config's default backbone (vgg11, which needs multiples of 32) is not in this space: 48 is fine
    check_against_models(_load(tmp_path, {"params": {"backbone": {"choices": ["unet_scratch"]},
                                                     "lr": {"low": 1e-4, "high": 1e-2}}}), (48, 48))
    # a scratch U-Net 8 levels deep needs multiples of 128: its trials would all fail at 64
    space = _load(tmp_path, {"params": {"backbone": {"choices": ["unet_scratch", "vgg11"]},
                                        "scratch_depth": {"low": 3, "high": 8, "type": "int"}}})
    with pytest.raises(SpaceError, match=r"--image-size 64x64 does not fit every configuration of .*space.yaml "
                                         r"\(params.scratch_depth: 8\): .*multiples of 128 for backbone unet_scratch"):
        check_against_models(space, (64, 64))
    # encoder weights for a backbone without an encoder
    space = _load(tmp_path, {"params": {"backbone": {"choices": ["vgg11", "unet_scratch"]}},
                             "fixed": {"encoder_weights": "imagenet"}})
    with pytest.raises(SpaceError, match=r"fixed.encoder_weights: 'imagenet' is refused.*none for unet_scratch"):
        check_against_models(space, (64, 64))


def test_a_conditional_value_is_checked_only_where_its_condition_holds(tmp_path):
    """deeplabv3plus searched only with resnet18 was refused because it was checked with vgg11 (which cannot
    take it) although the `when` rules that pair out."""
    from tuner.space import check_against_models

    space = _load(tmp_path, {"params": {"backbone": {"choices": ["vgg11", "resnet18"]},
                                        "arch": {"choices": ["unet", "deeplabv3plus"], "when": {"backbone": "resnet18"}}}})
    check_against_models(space, (64, 64))
    # and down the chain: dropout searched only with deeplabv3plus, itself only with resnet18
    space = _load(tmp_path, {"params": {"backbone": {"choices": ["vgg11", "resnet18"]},
                                        "arch": {"choices": ["unet", "deeplabv3plus"], "when": {"backbone": "resnet18"}},
                                        "dropout": {"low": 0.0, "high": 0.5, "when": {"arch": "deeplabv3plus"}}}})
    check_against_models(space, (64, 64))
    space = _load(tmp_path, {"params": {"backbone": {"choices": ["vgg11", "resnet18"]},
                                        "arch": {"choices": ["unet", "deeplabv3plus"]}}})
    with pytest.raises(SpaceError, match=r"params.arch: 'deeplabv3plus' is refused"):
        check_against_models(space, (64, 64))


def test_two_values_refused_together_are_caught_though_each_passes_alone(tmp_path):
    """nesterov searched beside a momentum range from 0 passed the check (each value was checked with the
    other's default) and trials drawing both errored three times each, mid-sweep."""
    from tuner.space import check_against_models

    params = {"optimizer": {"choices": ["adam", "sgd"]},
              "momentum": {"low": 0.0, "high": 0.9, "when": {"optimizer": "sgd"}},
              "nesterov": {"choices": [False, True], "when": {"optimizer": "sgd"}}}
    space = _load(tmp_path, {"params": params})
    with pytest.raises(SpaceError, match=r"space.yaml: params.momentum: 0.0 with params.nesterov: True is refused: "
                                         r"TrainConfig.nesterov=True: expected momentum > 0 when nesterov is on"):
        check_against_models(space, (64, 64))
    check_against_models(_load(tmp_path, {"params": {**params, "momentum": {**params["momentum"], "low": 0.1}}}),
                         (64, 64))
    # never drawn together (momentum searched only with adam, nesterov only with sgd): no error
    apart = {**params, "momentum": {"low": 0.0, "high": 0.9, "when": {"optimizer": "adam"}}}
    check_against_models(_load(tmp_path, {"params": apart}), (64, 64))


def test_exponent_spellings_match_in_points_and_conditions(tmp_path):
    """lr choices [1e-3, 1.0e-2] with the point {lr: 1e-3} was "outside the space" (YAML reads 1e-3 as text)."""
    space = _load(tmp_path, "params:\n  lr: {choices: [1e-3, 1.0e-2]}\n  momentum: {low: 0.8, high: 0.9, when: {lr: 1e-3}}\n"
                            "points_to_evaluate:\n  - {lr: 1e-3, momentum: 0.85}\n")
    assert dict(space.points_to_evaluate[0]) == {"lr": 1e-3, "momentum": 0.85}
    assert dict(space.params[1].when) == {"lr": (1e-3,)}


def test_encoder_weights_files_are_read_and_fitted_before_any_trial(tmp_path):
    """A file that exists but is no state dict, or is another encoder's, would fail every trial at its start."""
    import torch

    from models import ModelConfig, build
    from tuner.space import check_against_models

    vgg11, resnet18, garbage = tmp_path / "vgg11.pt", tmp_path / "resnet18.pt", tmp_path / "garbage.pt"
    torch.save(build(ModelConfig(backbone="vgg11")).encoder.state_dict(), vgg11)
    torch.save(build(ModelConfig(backbone="resnet18")).encoder.state_dict(), resnet18)
    garbage.write_bytes(b"not a torch file")
    fixed = {"backbone": "vgg11"}
    check_against_models(_load(tmp_path, {"params": {"lr": {"low": 1e-3, "high": 1e-2}},
                                          "fixed": {**fixed, "encoder_weights": str(vgg11)}}), (64, 64))
    space = _load(tmp_path, {"params": {"encoder_weights": {"choices": ["none", str(resnet18)]}}, "fixed": fixed})
    with pytest.raises(SpaceError, match=rf"params.encoder_weights: '{resnet18}' is refused: {resnet18}: does not "
                                         r"fit the vgg11 encoder \(16 tensors\); missing keys: features.0.bias"):
        check_against_models(space, (64, 64))
    space = _load(tmp_path, {"params": {"lr": {"low": 1e-3, "high": 1e-2}},
                             "fixed": {**fixed, "encoder_weights": str(garbage)}})
    with pytest.raises(SpaceError, match=rf"fixed.encoder_weights: '{garbage}' is refused: {garbage}: cannot read "
                                         r"encoder weights \(not a torch file that loads with weights_only=True"):
        check_against_models(space, (64, 64))


@pytest.mark.parametrize("name", ["default", "vgg11", "smoke"])
def test_shipped_spaces_pass_the_models_checks_at_64(name):
    from tuner.space import check_against_models

    check_against_models(load_space(search_spaces.resolve(name)), (64, 64))
