"""Config dataclasses as command-line flags: each field described once, read by both adapters.

`describe_fields(ModelConfig)` gives each field's type, default, help and choices from the dataclass
itself; `add_config_flags` turns them into argparse flags (used by `python -m extractors` and
`python -m models`), and `workflows.params` turns the same descriptions into Luigi parameters.
Flags default to None ("not set"), so `build_config` can layer: the user's values over presets over
the dataclass defaults.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

EMPTY: Mapping[str, Any] = types.MappingProxyType({})


@dataclass(frozen=True)
class FieldInfo:
    """One config field as a flag sees it: `kind` is the type with Optional removed."""

    name: str
    kind: Any
    default: Any
    help: str
    choices: Optional[tuple[Any, ...]]

    @property
    def is_tuple(self) -> bool:
        return self.kind is tuple or typing.get_origin(self.kind) is tuple

    @property
    def element_kind(self) -> Any:
        """The element type of a tuple field (tuple[float, ...] -> float)."""
        args = [arg for arg in typing.get_args(self.kind) if arg is not Ellipsis]
        return args[0] if args else str

    def help_with_default(self, owner: str) -> str:
        shown = "the config's own" if self.default is None else repr(self.default)
        return f"{self.help} [{owner}; default {shown}]".strip()


def _without_optional(hint: Any) -> Any:
    """`Optional[X]` / `X | None` -> X; anything else unchanged."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        others = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(others) == 1:
            return others[0]
    return hint


def describe_fields(config_cls: type, exclude: Iterable[str] = ()) -> list[FieldInfo]:
    """The fields of a config dataclass, in declaration order, minus `exclude`."""
    hints = typing.get_type_hints(config_cls)
    skipped = set(exclude)
    described = []
    for spec in dataclasses.fields(config_cls):
        if spec.name in skipped:
            continue
        default = spec.default if spec.default is not dataclasses.MISSING else None
        choices = spec.metadata.get("choices")
        described.append(FieldInfo(spec.name, _without_optional(hints[spec.name]), default,
                                   spec.metadata.get("help", ""), tuple(choices) if choices is not None else None))
    return described


def build_config(config_cls: type, presets: Mapping[str, Any], given: Mapping[str, Any]) -> Any:
    """`config_cls` from, in priority order: `given` (what the user set), `presets`, the dataclass defaults."""
    names = {spec.name for spec in dataclasses.fields(config_cls)}
    unknown = sorted(set(presets) - names)
    if unknown:
        raise ValueError(f"preset values {unknown} are not fields of {config_cls.__name__}")
    return config_cls(**{**presets, **given})


def _dest(config_cls: type, name: str) -> str:
    return f"{config_cls.__name__}.{name}"


def add_config_flags(parser: argparse.ArgumentParser, config_cls: type, *, flags: Mapping[str, str] = EMPTY,
                     exclude: Iterable[str] = ()) -> None:
    """One `--field-name` flag per field (`flags` renames some), grouped under the class name; unset = None."""
    group = parser.add_argument_group(config_cls.__name__, (config_cls.__doc__ or "").strip().splitlines()[0])
    for info in describe_fields(config_cls, exclude):
        flag = flags.get(info.name, "--" + info.name.replace("_", "-"))
        options: dict[str, Any] = {"dest": _dest(config_cls, info.name), "default": None,
                                   "help": info.help_with_default(config_cls.__name__)}
        if info.kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **options)
        elif info.is_tuple:
            group.add_argument(flag, nargs="+", type=info.element_kind, **options)
        else:
            kind = info.kind if info.kind in (int, float, Path) else str
            group.add_argument(flag, type=kind, choices=info.choices, **options)


def given_values(args: argparse.Namespace, config_cls: type) -> dict[str, Any]:
    """The fields of `config_cls` the user set on the command line (tuples as tuples)."""
    values = {}
    for spec in dataclasses.fields(config_cls):
        value = getattr(args, _dest(config_cls, spec.name), None)
        if value is not None:
            values[spec.name] = tuple(value) if isinstance(value, list) else value
    return values


def config_from_args(args: argparse.Namespace, config_cls: type,
                     presets: Mapping[str, Any] = EMPTY) -> Any:
    """The dataclass the command line asks for: given flags over `presets` over the defaults."""
    return build_config(config_cls, presets, given_values(args, config_cls))
