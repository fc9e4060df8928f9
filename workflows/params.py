"""Luigi parameters declared from the library's config dataclasses, so each setting is defined once.

    @config_parameters(ModelConfig, exclude=("img_dim",))
    class ModelParams: ...

adds one Luigi parameter per field (type, help and choices from `pipeline.config_flags.describe_fields`)
and remembers how they are named; `config_of(task, ModelConfig, presets)` turns the task's values back
into the dataclass. Parameters default to None ("not set by the user") so that the dataset's presets
(`pipeline.presets`) fill in what the user did not override; the dataclass default applies last.
`luigi --module workflows TrainSCAN --help` lists every parameter with its help.
"""
from __future__ import annotations

import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, TypeVar

import luigi

from pipeline.config_flags import FieldInfo, build_config, describe_fields

T = TypeVar("T", bound=type)
EMPTY: Mapping[str, Any] = types.MappingProxyType({})
_OPTIONAL_PARAMETERS: dict[Any, type[luigi.Parameter]] = {
    int: luigi.OptionalIntParameter,
    float: luigi.OptionalFloatParameter,
    str: luigi.OptionalParameter,
    Path: luigi.OptionalPathParameter,
}


@dataclass(frozen=True)
class Binding:
    """Which fields of a config a task declares, and how they are named: `prefix + field`, or `rename[field]`."""

    fields: tuple[str, ...]
    prefix: str
    rename: Mapping[str, str]

    def parameter_name(self, field_name: str) -> str:
        return self.rename.get(field_name, self.prefix + field_name)


def _parameter(info: FieldInfo, owner: str, significant: bool) -> luigi.Parameter:
    common = {"default": None, "description": info.help_with_default(owner), "significant": significant}
    if info.choices is not None:
        return luigi.OptionalChoiceParameter(choices=info.choices, var_type=info.kind, **common)
    if info.is_tuple:
        return luigi.OptionalTupleParameter(**common)
    if info.kind is bool:
        return luigi.OptionalBoolParameter(parsing=luigi.BoolParameter.EXPLICIT_PARSING, **common)
    if info.kind not in _OPTIONAL_PARAMETERS:
        raise TypeError(f"{owner}.{info.name}: no luigi parameter for type {info.kind!r}; keep config fields simple")
    return _OPTIONAL_PARAMETERS[info.kind](**common)


def config_parameters(config_cls: type, *, prefix: str = "", rename: Mapping[str, str] = EMPTY,
                      insignificant: Iterable[str] = (), exclude: Iterable[str] = ()) -> Callable[[T], T]:
    """Class decorator: a Luigi parameter per field of `config_cls` (but `exclude`), named `prefix + field`.

    A prefix keeps fields of different configs apart on one task (`demo_seed` vs `seed`); `rename` gives
    single fields another name (TrainConfig.workers would clash with luigi's --workers). Insignificant
    parameters (device, batch sizes, worker counts) do not enter the task's hash.
    """
    described = describe_fields(config_cls, exclude)
    binding = Binding(tuple(info.name for info in described), prefix, dict(rename))
    quiet = set(insignificant)

    def declare(task_cls: T) -> T:
        for info in described:
            parameter, name = (_parameter(info, config_cls.__name__, info.name not in quiet),
                               binding.parameter_name(info.name))
            setattr(task_cls, name, parameter)
            parameter.__set_name__(task_cls, name)  # a descriptor set after the class body is not named by Python
        own = dict(vars(task_cls).get("config_bindings", {}))  # this class's own: bases keep theirs
        own[config_cls] = binding
        task_cls.config_bindings = own
        return task_cls

    return declare


def _binding(task_cls: type, config_cls: type) -> Binding:
    """The binding declared for `config_cls` on the task class or the nearest base (mixins each keep their own)."""
    for klass in task_cls.__mro__:
        binding = vars(klass).get("config_bindings", {}).get(config_cls)
        if binding is not None:
            return binding
    raise TypeError(f"{task_cls.__name__} declares no parameters for {config_cls.__name__} (@config_parameters)")


def user_values(task: luigi.Task, config_cls: type) -> dict[str, Any]:
    """The fields of `config_cls` that the user (command line or luigi.cfg) actually set on `task`."""
    binding = _binding(type(task), config_cls)
    values = {}
    for name in binding.fields:
        value = getattr(task, binding.parameter_name(name))
        if value is not None:
            values[name] = tuple(value) if isinstance(value, (list, tuple)) else value
    return values


def config_of(task: luigi.Task, config_cls: type, presets: Mapping[str, Any] = EMPTY) -> Any:
    """The dataclass from, in priority order: the user's values, `presets`, the dataclass defaults."""
    return build_config(config_cls, presets, user_values(task, config_cls))
