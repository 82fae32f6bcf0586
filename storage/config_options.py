"""Command-line options generated from a stage's frozen config dataclass.

Defaults and help texts live in one place, the dataclass: each field declared with
``setting(default, "help")`` becomes a click option ``--field-name`` (booleans become
``--x/--no-x``; ``X | None`` fields default to None; ``tuple`` fields take comma lists such as
``90,120``; ``choices`` become a ``click.Choice``). ``config_file_option`` adds
``--config FILE`` (TOML or YAML): its keys (field names, ``-`` or ``_``) become the
command's defaults through click's ``default_map``, so explicit options still win.

Typical use::

    @main.command()
    @config_file_option
    @config_options(DistillConfig, exclude=("fresh",))
    def run(**params):
        cfg = config_from_params(DistillConfig, params)
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

import click

from storage.errors import UsageError, unknown_name

HELP = "help"
CHOICES = "choices"
CLI = "cli"
FLAG = "flag"


def setting(default: Any, help: str, *, choices: Sequence[str] | None = None, cli: bool = True,
            flag: str | None = None) -> Any:
    """A config field with its command-line help.

    Args:
        default: the default value (the one place it is written).
        help: the option's help text.
        choices: the allowed values of a ``str`` field.
        cli: False for fields that are not command-line options (set by other means).
        flag: the option name when it is not ``--field-name`` (e.g. ``--compile``).
    """
    return dataclasses.field(default=default, metadata={HELP: help, CHOICES: tuple(choices) if choices else None,
                                                        CLI: cli, FLAG: flag})


class CommaTuple(click.ParamType):
    """``"90,120"`` (or a list from a config file) -> ``tuple[int, ...]``; ``length`` fixes the count."""

    def __init__(self, element: type, length: int | None) -> None:
        self.element = element
        self.length = length
        self.name = f"{element.__name__},..." if length is None else ",".join([element.__name__] * length)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[Any, ...]:
        if isinstance(value, tuple) and all(isinstance(v, self.element) for v in value):
            return value
        items = list(value) if isinstance(value, (list, tuple)) else [v for v in str(value).split(",") if v.strip()]
        try:
            out = tuple(self.element(str(v).strip()) if self.element is not str else str(v).strip() for v in items)
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of {self.element.__name__}", param, ctx)
        if self.length is not None and len(out) != self.length:
            self.fail(f"{value!r} must have {self.length} comma-separated values", param, ctx)
        return out


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (tp, False)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _click_type(tp: Any, choices: tuple[str, ...] | None) -> Any:
    if choices:
        return click.Choice(list(choices))
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return CommaTuple(args[0], None)
        return CommaTuple(args[0], len(args))
    return tp


def option_name(field: dataclasses.Field[Any]) -> str:
    """The option of a config field: ``--lr-steps`` for ``lr_steps`` (or its declared ``flag``)."""
    return field.metadata.get(FLAG) or "--" + field.name.replace("_", "-")


def cli_fields(cls: type, exclude: Sequence[str] = ()) -> list[dataclasses.Field[Any]]:
    """The fields of config dataclass ``cls`` that are command-line options."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get(HELP) and f.metadata.get(CLI, True) and f.name not in exclude]


def config_options(cls: type, *, exclude: Sequence[str] = ()) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator adding one click option per ``setting`` field of ``cls`` (see the module doc)."""
    hints = typing.get_type_hints(cls)

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for field in reversed(cli_fields(cls, exclude)):
            tp, optional = _unwrap_optional(hints[field.name])
            name = option_name(field)
            help_text = field.metadata[HELP]
            if tp is bool:
                if field.metadata.get(FLAG) and "/" not in name:  # a plain switch: --compile sets True
                    option = click.option(name, field.name, is_flag=True, default=field.default, help=help_text)
                else:
                    decl = name if "/" in name else f"{name}/--no-{name[2:]}"
                    option = click.option(decl, field.name, default=field.default, show_default=True, help=help_text)
            else:
                option = click.option(name, field.name, type=_click_type(tp, field.metadata.get(CHOICES)),
                                      default=field.default, show_default=field.default is not None, help=help_text)
            command = option(command)
        return command

    return decorate


def config_from_params(cls: type, params: dict[str, Any], **overrides: Any) -> Any:
    """Build ``cls`` from a command's parsed options (keys that are not fields are ignored)."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in params.items() if k in names}
    values.update(overrides)
    cfg = cls(**values)
    if hasattr(cfg, "validate"):
        cfg.validate()
    return cfg


def read_config_file(path: str) -> dict[str, Any]:
    """The top-level table of a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file."""
    if not os.path.isfile(path):
        raise UsageError(f"--config: {path}: no such file")
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".toml":
            import tomllib

            with open(path, "rb") as f:
                data = tomllib.load(f)
        elif ext in (".yaml", ".yml"):
            import yaml

            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
        else:
            raise UsageError(f"--config: {path}: unknown config format {ext!r} (use .toml, .yaml or .yml)")
    except UsageError:
        raise
    except Exception as e:  # noqa: BLE001 - the parsers raise their own types
        raise UsageError(f"--config: {path}: cannot parse ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise UsageError(f"--config: {path}: expected a table of option names to values")
    return data


def _load_config(ctx: click.Context, param: click.Parameter, path: str | None) -> None:
    if not path:
        return
    data = read_config_file(path)
    known = {p.name for p in ctx.command.params if p.name and p.name != "config"}
    defaults: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in known:
            raise UsageError(f"--config: {path}: " + unknown_name("option", str(key), sorted(known)))
        defaults[name] = value
    ctx.default_map = {**(ctx.default_map or {}), **defaults}


def config_file_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator adding ``--config FILE`` (TOML/YAML defaults for the command's options)."""
    return click.option("--config", type=click.Path(dir_okay=False), default=None, is_eager=True, expose_value=False,
                        callback=_load_config,
                        help="TOML or YAML file of option values (keys as option names); options given on the "
                             "command line win.")(command)
