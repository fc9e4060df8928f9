"""Luigi parameters generated from the library's frozen config dataclasses, so each setting is defined once.

`config_params(ModelConfig, ...)` gives a dict of typed luigi parameters to splice into a task
class body; `build_config(task, ModelConfig, overrides)` turns the task's values back into the
dataclass. Generated parameters default to None ("not set by the user") so that per-dataset
presets can fill in what the user did not override; the dataclass default applies last.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import luigi

_OPTIONAL_PARAMETERS: dict[type, type[luigi.Parameter]] = {
    int: luigi.OptionalIntParameter,
    float: luigi.OptionalFloatParameter,
    bool: luigi.OptionalBoolParameter,
    str: luigi.OptionalParameter,
    Path: luigi.OptionalPathParameter,
}


def _unwrap_optional(hint: Any) -> Any:
    """`Optional[X]` / `X | None` -> X; anything else unchanged."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        others = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(others) == 1:
            return others[0]
    return hint


def _parameter_for(hint: Any, help_text: str, choices: Optional[Iterable[Any]], significant: bool) -> luigi.Parameter:
    kind = _unwrap_optional(hint)
    common = {"default": None, "description": help_text, "significant": significant}
    if choices is not None:
        return luigi.OptionalChoiceParameter(choices=tuple(choices), var_type=kind, **common)
    if typing.get_origin(kind) is tuple or kind is tuple:
        return luigi.OptionalTupleParameter(**common)
    if kind is bool:
        return luigi.OptionalBoolParameter(parsing=luigi.BoolParameter.EXPLICIT_PARSING, **common)
    if kind not in _OPTIONAL_PARAMETERS:
        raise TypeError(f"no luigi parameter for field type {hint!r}; keep config fields simple")
    return _OPTIONAL_PARAMETERS[kind](**common)


def parameter_name(field_name: str, prefix: str, rename: Mapping[str, str]) -> str:
    return rename.get(field_name, prefix + field_name)


def config_params(config_cls: type, *, prefix: str = "", rename: Mapping[str, str] = types.MappingProxyType({}),
                  choices: Optional[Mapping[str, Iterable[Any]]] = None, insignificant: Iterable[str] = (),
                  exclude: Iterable[str] = ()) -> dict[str, luigi.Parameter]:
    """One luigi parameter per dataclass field, named `prefix + field`, help = metadata['help'] + default.

    A prefix keeps fields of different configs apart on one task (`demo_seed` vs `seed`); `rename`
    gives single fields another name (TrainConfig.workers would clash with luigi's --workers).
    """
    choices = dict(choices or {})
    insignificant, exclude = set(insignificant), set(exclude)
    hints = typing.get_type_hints(config_cls)
    params = {}
    for spec in dataclasses.fields(config_cls):
        if spec.name in exclude:
            continue
        default = spec.default if spec.default is not dataclasses.MISSING else None
        field_choices = choices.get(spec.name, spec.metadata.get("choices"))
        help_text = f"{spec.metadata.get('help', '')} [{config_cls.__name__}; default {default!r}]".strip()
        params[parameter_name(spec.name, prefix, rename)] = _parameter_for(hints[spec.name], help_text, field_choices, spec.name not in insignificant)
    return params


def user_values(task: luigi.Task, config_cls: type, prefix: str = "",
                rename: Mapping[str, str] = types.MappingProxyType({})) -> dict[str, Any]:
    """The fields of `config_cls` that the user (command line or luigi.cfg) actually set on `task`."""
    values = {}
    for spec in dataclasses.fields(config_cls):
        value = getattr(task, parameter_name(spec.name, prefix, rename), None)
        if value is not None:
            values[spec.name] = tuple(value) if isinstance(value, (list, tuple)) else value
    return values


def build_config(task: luigi.Task, config_cls: type, presets: Mapping[str, Any] = types.MappingProxyType({}),
                 prefix: str = "", rename: Mapping[str, str] = types.MappingProxyType({})) -> Any:
    """Dataclass from, in priority order: the user's values, `presets`, the dataclass defaults."""
    names = {spec.name for spec in dataclasses.fields(config_cls)}
    merged = {name: value for name, value in presets.items() if name in names}
    merged.update(user_values(task, config_cls, prefix, rename))
    return config_cls(**merged)
