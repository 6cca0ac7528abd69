"""Search spaces: YAML file -> validated `SearchSpace` -> Optuna define-by-run function.

A space file has four top-level keys (see search_spaces/default.yaml for a commented example):

    description: free text
    params:                      # searched, in order; a `when` may only name a parameter above it
      lr: {low: 1.0e-4, high: 1.0e-2, log: true}          # float (int with `type: int`)
      optimizer: {choices: [adam, adamw, sgd]}            # categorical
      momentum: {low: 0.8, high: 0.99, when: {optimizer: sgd}}   # conditional
    fixed: {lr_schedule: cosine}  # constants every trial gets
    points_to_evaluate:          # tried first, in order (e.g. the reference's VGG11 + SGD setting)
      - {backbone: vgg11, optimizer: sgd, lr: 1.0e-3, momentum: 0.9}

The whole file is validated before anything starts; every problem raises `SpaceError` naming the file
and the field. The define-by-run function only calls `trial.suggest_*`: it computes nothing, so Optuna
can call it as often as it likes.
"""
from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterable

import yaml

from models.config import ModelConfig, TrainConfig

FLOAT, INT, CATEGORICAL = "float", "int", "categorical"
TOP_LEVEL_KEYS = frozenset({"description", "params", "fixed", "points_to_evaluate"})
PARAM_KEYS = frozenset({"type", "low", "high", "log", "step", "choices", "when"})
# Set by the sweep itself (per trial or from flags), so a space may not search or fix them.
_RESERVED = frozenset({"epochs", "seed", "device", "num_classes", "in_channels"})
# What a space may search or fix: the fields of the configs a trial builds (batch_size feeds both
# DataConfig and TrainConfig; augment is the only data field worth searching).
TUNABLE = frozenset(
    {f.name for f in fields(ModelConfig)} | {f.name for f in fields(TrainConfig)} | {"augment"}
) - _RESERVED
_SCALARS = (str, int, float, bool, type(None))
_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class SpaceError(ValueError):
    """A bad search space: the message names the file and the field, and what was expected."""


@dataclass(frozen=True)
class Param:
    """One searched hyperparameter."""

    name: str
    kind: str  # float | int | categorical
    low: float | int | None = None  # inclusive lower bound (float/int)
    high: float | int | None = None  # inclusive upper bound (float/int)
    log: bool = False  # sample uniformly in log space (float/int, needs low > 0)
    step: float | int | None = None  # discretisation step (float/int, not with log)
    choices: tuple = ()  # categorical values, in order
    when: tuple[tuple[str, tuple], ...] = ()  # ((param, allowed values), ...): all must hold

    def is_active(self, sampled: dict) -> bool:
        return all(sampled.get(name) in allowed for name, allowed in self.when)

    def contains(self, value: Any) -> bool:
        if self.kind == CATEGORICAL:
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        on_grid = self.step is None or math.isclose((value - self.low) / self.step,
                                                    round((value - self.low) / self.step), abs_tol=1e-9)
        return self.low <= value <= self.high and (self.kind == FLOAT or float(value).is_integer()) and on_grid


@dataclass(frozen=True)
class SearchSpace:
    """A validated space. Hashable pieces only, so it can travel in a frozen SweepConfig."""

    source: str  # the YAML file it came from
    description: str
    params: tuple[Param, ...]
    fixed: tuple[tuple[str, Any], ...]  # (name, value) constants
    points: tuple[tuple[tuple[str, Any], ...], ...]  # points_to_evaluate, each as (name, value) pairs

    @property
    def fixed_values(self) -> dict:
        return dict(self.fixed)

    @property
    def points_to_evaluate(self) -> list[dict]:
        return [dict(p) for p in self.points]

    @property
    def param_names(self) -> list[str]:
        return [p.name for p in self.params]

    def choices_of(self, name: str) -> tuple:
        """Values a parameter can take in this space (searched choices, or the fixed value)."""
        for p in self.params:
            if p.name == name:
                return p.choices
        return (self.fixed_values[name],) if name in self.fixed_values else ()


def define_by_run(space: SearchSpace):
    """The Optuna define-by-run function of `space` (a picklable partial: Ray saves the searcher)."""
    return functools.partial(_suggest, space)


def _suggest(space: SearchSpace, trial) -> dict:
    sampled: dict = {}
    for p in space.params:
        if not p.is_active(sampled):
            continue  # inactive conditional parameters are absent: the trial keeps the config default
        if p.kind == CATEGORICAL:
            sampled[p.name] = trial.suggest_categorical(p.name, list(p.choices))
        elif p.kind == INT:
            sampled[p.name] = trial.suggest_int(p.name, p.low, p.high, step=p.step or 1, log=p.log)
        else:
            sampled[p.name] = trial.suggest_float(p.name, p.low, p.high, step=p.step, log=p.log)
    return space.fixed_values  # Ray merges these constants into every trial's config


# ---------------------------------------------------------------------------------------------
# Loading and validation
# ---------------------------------------------------------------------------------------------

class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping: YAML keeps the last silently, so a second
    `lr:` further down would replace the range the user reads first."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (list, dict)):  # YAML allows `? [a]: 1`; Python cannot hash it (a traceback)
                raise yaml.constructor.ConstructorError(None, None, f"a key must be a name, not a {type(key).__name__}",
                                                        key_node.start_mark)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's error on one line: what is wrong and where (its own text quotes the line over several)."""
    mark = getattr(err, "problem_mark", None)
    what = " ".join(p for p in (getattr(err, "context", None), getattr(err, "problem", None)) if p) or str(err)
    return f"{what} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else what


def load_space(path: str | Path, known_backbones: Iterable[str] | None = None) -> SearchSpace:
    """Read and validate a space file. `known_backbones` defaults to models.registry's list."""
    path = Path(path)
    where = str(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except OSError as err:
        raise SpaceError(f"{where}: cannot read the search space ({err.strerror})") from None
    except UnicodeDecodeError as err:
        raise SpaceError(f"{where}: not a text (UTF-8) file: {err.reason} at byte {err.start}") from None
    except yaml.YAMLError as err:
        raise SpaceError(f"{where}: not valid YAML: {_yaml_problem(err)}") from None
    if known_backbones is None:
        from models import ALIASES, available_backbones  # torch import: only when really loading
        known_backbones = [*available_backbones(), *ALIASES]
    return parse_space(raw, where, frozenset(known_backbones))


def parse_space(raw: Any, where: str, known_backbones: frozenset[str]) -> SearchSpace:
    """Validate the parsed YAML `raw` of file `where` into a SearchSpace."""
    if raw is None:
        raise SpaceError(f"{where}: the file is empty (expected a mapping with keys {sorted(TOP_LEVEL_KEYS)})")
    if not isinstance(raw, dict):
        raise SpaceError(f"{where}: expected a mapping with keys {sorted(TOP_LEVEL_KEYS)}, "
                         f"got {type(raw).__name__}")
    _no_unknown(raw, TOP_LEVEL_KEYS, where, "top level")
    params = _parse_params(raw.get("params"), where)
    fixed = _parse_fixed(raw.get("fixed") or {}, where, {p.name for p in params})
    space = SearchSpace(source=where, description=str(raw.get("description") or "").strip(),
                        params=params, fixed=fixed, points=())
    _check_backbones(space, where, known_backbones)
    points = _parse_points(raw.get("points_to_evaluate") or [], where, space)
    return SearchSpace(space.source, space.description, space.params, space.fixed, points)


def _no_unknown(mapping: dict, allowed: Iterable[str], where: str, field: str) -> None:
    unknown = sorted(set(map(str, mapping)) - set(allowed))
    if unknown:
        raise SpaceError(f"{where}: {field}: unknown key(s) {unknown}; expected some of {sorted(allowed)}")


def _parse_params(raw: Any, where: str) -> tuple[Param, ...]:
    if not isinstance(raw, dict) or not raw:
        raise SpaceError(f"{where}: params: expected a non-empty mapping of parameter -> range or choices")
    params: list[Param] = []
    for name, spec in raw.items():
        field = f"params.{name}"
        if name not in TUNABLE:
            raise SpaceError(f"{where}: {field}: unknown hyperparameter; expected one of {sorted(TUNABLE)}")
        if not isinstance(spec, dict):
            raise SpaceError(f"{where}: {field}: expected a mapping like {{low: .., high: ..}} or "
                             f"{{choices: [...]}}, got {spec!r}")
        _no_unknown(spec, PARAM_KEYS, where, field)
        when = _parse_when(spec.get("when"), where, field, params)
        params.append(_parse_one(name, spec, when, where, field))
    return tuple(params)


def _parse_one(name: str, spec: dict, when: tuple, where: str, field: str) -> Param:
    kind = spec.get("type") or (CATEGORICAL if "choices" in spec else FLOAT)
    if kind not in (FLOAT, INT, CATEGORICAL):
        raise SpaceError(f"{where}: {field}.type: expected float, int or categorical, got {kind!r}")
    if kind == CATEGORICAL:
        extra = sorted(set(spec) & {"low", "high", "log", "step"})
        if extra:
            raise SpaceError(f"{where}: {field}: {extra} do not apply to a categorical parameter")
        return Param(name, kind, choices=_parse_choices(spec.get("choices"), where, field), when=when)
    if "choices" in spec:
        raise SpaceError(f"{where}: {field}: 'choices' does not apply to a {kind} range (use low/high)")
    low, high = (_number(spec.get(k), kind, where, f"{field}.{k}") for k in ("low", "high"))
    log = spec.get("log", False)
    step = None if spec.get("step") is None else _number(spec["step"], kind, where, f"{field}.step")
    _check_range(low, high, log, step, where, field)
    return Param(name, kind, low=low, high=high, log=log, step=step, when=when)


def _yaml_float(value: Any) -> Any:
    """YAML 1.1 reads 1e-4 (no dot) as the string "1e-4": that one spelling is taken as the number meant."""
    return float(value) if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()) else value


def _number(value: Any, kind: str, where: str, field: str) -> float | int:
    if isinstance(value, str):  # ranges take any number written as text ("1e-4", "0.5")
        try:
            value = float(value)
        except ValueError:
            pass
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpaceError(f"{where}: {field}: expected a finite number, got {value!r}")
    if kind == INT:
        if not float(value).is_integer():
            raise SpaceError(f"{where}: {field}: expected an integer for an int parameter, got {value!r}")
        return int(value)
    return float(value)


def _check_range(low, high, log, step, where: str, field: str) -> None:
    if not isinstance(log, bool):
        raise SpaceError(f"{where}: {field}.log: expected true or false, got {log!r}")
    if low >= high:
        raise SpaceError(f"{where}: {field}: low ({low}) must be < high ({high})")
    if log and low <= 0:
        raise SpaceError(f"{where}: {field}: a log range needs low > 0, got low={low}")
    if step is not None and (log or step <= 0):
        raise SpaceError(f"{where}: {field}.step: expected a positive step without log, got step={step}, log={log}")


def _parse_choices(raw: Any, where: str, field: str) -> tuple:
    if not isinstance(raw, list) or not raw:
        raise SpaceError(f"{where}: {field}.choices: expected a non-empty list, got {raw!r}")
    bad = [c for c in raw if not isinstance(c, _SCALARS)]
    if bad:
        raise SpaceError(f"{where}: {field}.choices: expected scalars (str, number, bool, null), got {bad[0]!r}")
    raw = [_yaml_float(c) for c in raw]
    if len(set(map(repr, raw))) != len(raw):
        raise SpaceError(f"{where}: {field}.choices: duplicate values in {raw}")
    return tuple(raw)


def _parse_when(raw: Any, where: str, field: str, earlier: list[Param]) -> tuple:
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not raw:
        raise SpaceError(f"{where}: {field}.when: expected a mapping like {{optimizer: sgd}}, got {raw!r}")
    by_name = {p.name: p for p in earlier}
    conditions = []
    for name, allowed in raw.items():
        parent = by_name.get(name)
        if parent is None or parent.kind != CATEGORICAL:
            raise SpaceError(f"{where}: {field}.when.{name}: must name a categorical parameter listed above "
                             f"it in params (have {sorted(p.name for p in earlier if p.kind == CATEGORICAL)})")
        values = tuple(map(_yaml_float, allowed)) if isinstance(allowed, list) else (_yaml_float(allowed),)
        missing = [v for v in values if v not in parent.choices]
        if not values or missing:
            raise SpaceError(f"{where}: {field}.when.{name}: {missing or allowed!r} not among the choices "
                             f"{list(parent.choices)}")
        conditions.append((name, values))
    return tuple(conditions)


def _parse_fixed(raw: Any, where: str, searched: set[str]) -> tuple:
    if not isinstance(raw, dict):
        raise SpaceError(f"{where}: fixed: expected a mapping of hyperparameter -> value, got {raw!r}")
    for name, value in raw.items():
        if name not in TUNABLE:
            raise SpaceError(f"{where}: fixed.{name}: unknown hyperparameter; expected one of {sorted(TUNABLE)}")
        if name in searched:
            raise SpaceError(f"{where}: fixed.{name}: also listed in params; keep it in one of them")
        if not isinstance(value, _SCALARS):
            raise SpaceError(f"{where}: fixed.{name}: expected a scalar, got {value!r}")
    return tuple((name, _yaml_float(value)) for name, value in raw.items())


def _check_backbones(space: SearchSpace, where: str, known: frozenset[str]) -> None:
    field = "params.backbone.choices" if "backbone" in space.param_names else "fixed.backbone"
    unknown = [b for b in space.choices_of("backbone") if b not in known]
    if unknown:
        raise SpaceError(f"{where}: {field}: unknown backbone(s) {unknown}; expected some of {sorted(known)}")


def _parse_points(raw: Any, where: str, space: SearchSpace) -> tuple:
    if not isinstance(raw, list):
        raise SpaceError(f"{where}: points_to_evaluate: expected a list of mappings, got {raw!r}")
    by_name = {p.name: p for p in space.params}
    points = []
    for i, point in enumerate(raw):
        field = f"points_to_evaluate[{i}]"
        if not isinstance(point, dict) or not point:
            raise SpaceError(f"{where}: {field}: expected a non-empty mapping of searched parameter -> value")
        _no_unknown(point, by_name, where, field)
        for name, value in point.items():
            param = by_name[name]
            value = _yaml_float(value) if param.kind == CATEGORICAL else _number(value, param.kind, where,
                                                                                  f"{field}.{name}")
            if not param.contains(value):
                expected = (list(param.choices) if param.kind == CATEGORICAL else f"[{param.low}, {param.high}]"
                            + (f" in steps of {param.step} from {param.low}" if param.step else ""))
                raise SpaceError(f"{where}: {field}.{name}: {value!r} is outside the space ({expected})")
            if not param.is_active(point):
                raise SpaceError(f"{where}: {field}.{name}: only searched when {dict(param.when)}, "
                                 f"which this point does not satisfy")
            point[name] = value
        points.append(tuple(point.items()))
    return tuple(points)



def check_against_models(space: SearchSpace, image_size: tuple[int, int]) -> None:
    """SpaceError naming the file and field for values the models package refuses (an unknown optimizer,
    dropout >= 1, an image size a backbone cannot take, an encoder weights file that is unreadable or made
    for another encoder), checked before any trial starts."""
    from models import (ConfigError, WeightsError, check_weights_file, validate, validate_image_size,
                        validate_train)

    weights_checked = set()  # a weights file is read once per encoder it may go with, not once per value
    for name, value, field, context in _values_to_check(space):
        if name == "augment" and not isinstance(value, bool):  # DataConfig's only searchable field
            raise SpaceError(f"{space.source}: {field}: {value!r} is refused: augment=true or false expected")
        fixed = {k: v for k, v in space.fixed if k != name}
        values = {**fixed, **context, name: value}
        try:
            model = validate(ModelConfig(**{k: v for k, v in values.items() if k in _MODEL_FIELDS}))
            validate_train(TrainConfig(**{k: v for k, v in values.items() if k in _TRAIN_FIELDS}))
            validate_image_size(model, image_size)
            encoder = (model.backbone, model.arch, model.in_channels, model.encoder_weights)
            if encoder not in weights_checked:
                check_weights_file(model)
                weights_checked.add(encoder)
        except ConfigError as err:
            culprit = err.field.rpartition(".")[2]  # a fixed value may be the one at fault, whichever was checked
            if culprit == "image_size":  # the flag, not the space, sets the size: name it, not the backbone
                raise SpaceError(f"--image-size {'x'.join(map(str, image_size))} does not fit every configuration "
                                 f"of {space.source} ({field}: {value!r}): {err}") from None
            if culprit != name and culprit in fixed:
                field, value = f"fixed.{culprit}", fixed[culprit]
            hint = ("; the range is of floats: add `type: int` to it" if field.startswith("params.")
                    and isinstance(value, float) and str(err).endswith("expected an integer") else "")
            raise SpaceError(f"{space.source}: {field}: {value!r} is refused: {err}{hint}") from None
        except WeightsError as err:  # the file's fault, whichever value was being checked
            where = field if name == "encoder_weights" else "fixed.encoder_weights"
            raise SpaceError(f"{space.source}: {where}: {model.encoder_weights!r} is refused: {err}") from None
    _check_pairs(space)


def _check_pairs(space: SearchSpace) -> None:
    """SpaceError for two searched values a trial may draw together that the configs refuse together
    (`nesterov: true` with a `momentum` range from 0), though each passes on its own: else such trials
    error, three tries each, mid-sweep."""
    from models import ConfigError, validate, validate_train

    fixed, by_name = dict(space.fixed), {p.name: p for p in space.params}
    searched_values = dict.fromkeys((name, value, field) for name, value, field, _ in _values_to_check(space)
                                    if field.startswith("params."))  # once each, not once per context
    for name, value, field, context in _values_to_check(space):
        if not field.startswith("params."):
            continue
        drawn = {**context, name: value}
        for other, other_value, other_field in searched_values:
            if other in drawn or not by_name[other].is_active(drawn):
                continue
            values = {**fixed, **drawn, other: other_value}
            try:
                validate(ModelConfig(**{k: v for k, v in values.items() if k in _MODEL_FIELDS}))
                validate_train(TrainConfig(**{k: v for k, v in values.items() if k in _TRAIN_FIELDS}))
            except ConfigError as err:
                raise SpaceError(f"{space.source}: {field}: {value!r} with {other_field}: {other_value!r} is "
                                 f"refused: {err}") from None


_MODEL_FIELDS = frozenset(f.name for f in fields(ModelConfig))
_TRAIN_FIELDS = frozenset(f.name for f in fields(TrainConfig))


def _values_to_check(space: SearchSpace):
    """(name, value, field, context) for each fixed value, each choice and both ends of each range, once in
    each context a trial may draw it in: with each backbone the space may pair it with (whether an image size,
    a scratch depth or encoder weights can work depends on the backbone, and the config's default backbone
    may not even be in the space), and for a conditional parameter with each combination of the values its
    `when` chain requires (arch searched only with resnet18 is not checked with vgg11)."""
    searched = {p.name: p for p in space.params}
    candidates = [(name, value, f"fixed.{name}", None) for name, value in space.fixed]
    for p in space.params:
        candidates += [(p.name, value, f"params.{p.name}", p)
                       for value in (p.choices if p.kind == CATEGORICAL else (p.low, p.high))]
    for name, value, field, param in candidates:
        for context in _drawn_with(param, name, searched):
            yield name, value, field, context


def _drawn_with(param: Param | None, name: str, searched: dict) -> list[dict]:
    """The combinations of the backbone (when searched) and of the parameters `param`'s `when` names, and
    theirs in turn, under which a trial draws `param` (None: a fixed value, drawn with every backbone)."""
    needed, todo = set(), [param] if param is not None else []
    while todo:
        for parent, _ in todo.pop().when:
            if parent not in needed:
                needed.add(parent)
                todo.append(searched[parent])
    if "backbone" in searched and name != "backbone":
        needed.add("backbone")
    contexts = [{}]
    for parent in sorted(needed):
        contexts = [{**c, parent: v} for c in contexts for v in searched[parent].choices]
    return [c for c in contexts if all(searched[n].is_active(c) for n in c) and (param is None or param.is_active(c))]
