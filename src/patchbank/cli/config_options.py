"""Config fields as command-line options, built from :data:`patchbank.config.FIELD_SPECS`.

Every :class:`~patchbank.config.Config` field becomes ``--field-name`` with the field's metadata
help, its choices (validated while parsing) and a parser for its type (:class:`ConfigValue`).
Option defaults are None, meaning "keep the preset's value": only options given on the command
line override the preset (:func:`given_overrides`).  Range and cross-field checks are Config's;
:func:`build_config` reports its :class:`~patchbank.errors.ConfigError` against the option
named by ``ConfigError.field``.

The word ``none`` (any case) means what the field's metadata says (:func:`none_meaning`): the
string choice ``"none"`` where the field has one (``--sampler none``: keep every patch), None where
the field is optional (``--crop-size none``), and a usage error naming the option otherwise.
"""
from __future__ import annotations

import functools
import math
import re
import typing
from typing import Any

import click
from click.core import ParameterSource

from patchbank.config import DEFAULT_PRESET, FIELD_SPECS, PRESETS, Config, parse_size, value_kind
from patchbank.errors import ConfigError

CFG_PREFIX = "cfg_"   # click parameter names of config options: cfg_<field>

_INT_RE = re.compile(r"^[+-]?\d+$")
_TRUE = {"1", "true", "yes", "on", "y"}
_FALSE = {"0", "false", "no", "off", "n"}
_METAVARS = {"bool": "BOOL", "int": "INT", "float": "FLOAT", "str": "TEXT", "size": "N|HxW",
             "list": "A,B,..."}
_EXPECTED = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "text",
             "size": "N or HxW", "list": "a comma-separated list"}
NONE_WORD = "none"
NONE_CHOICE, NONE_IS_NULL, NONE_REFUSED = "choice", "null", "refused"


def option_name(field_name: str) -> str:
    """``coreset_ratio`` -> ``--coreset-ratio``."""
    return "--" + field_name.replace("_", "-")


def is_int_text(text: str) -> bool:
    """True for an optionally signed run of digits (``"3"``, ``"-1"``), as the options accept."""
    return bool(_INT_RE.match(text))


def format_value(value: Any, kind: str = "") -> str:
    """A Config value the way it is typed on the command line (``none``, ``320x768``, ``2,4``).

    ``kind`` is the field's :attr:`~patchbank.config.FieldSpec.kind`; ``"size"`` writes a square
    size as one number.
    """
    if value is None:
        return "none"
    if kind == "size" and isinstance(value, (tuple, list)) and len(value) == 2:
        return f"{value[0]}x{value[1]}" if value[0] != value[1] else str(value[0])
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def none_meaning(optional: bool, choices: tuple[str, ...] | None) -> str:
    """What the command-line word ``none`` (any case) means for a field, from its metadata only
    (:class:`~patchbank.config.FieldSpec` ``optional`` and ``choices``); the one place this is decided.

    Returns:
        :data:`NONE_CHOICE` where ``"none"`` is one of the field's choices: the word is that string
        (``sampler="none"``, keep every patch; for a list field, the one-member subset).  A choice
        wins over None, so a field that had both would reach None only from Python.
        :data:`NONE_IS_NULL` where the field is optional (``X | None``): the word is None.
        :data:`NONE_REFUSED` otherwise: the word is a usage error naming the option.
    """
    if choices and NONE_WORD in choices:
        return NONE_CHOICE
    return NONE_IS_NULL if optional else NONE_REFUSED


def field_kind(field_name: str) -> str:
    """The :attr:`~patchbank.config.FieldSpec.kind` of a Config field, ``""`` for unknown names."""
    spec = FIELD_SPECS.get(field_name)
    return spec.kind if spec is not None else ""


class ConfigValue(click.ParamType):
    """Parses one Config field's value from its command-line text.

    Args:
        field_name: the Config field (its choices come from its metadata; none for other names).
        tp: the field's annotation; gives the kind (see :func:`patchbank.config.value_kind`).
        default: unused, kept for callers that pass the dataclass default.

    ``none`` (any case) is read by :func:`none_meaning`: the choice ``"none"`` where the field has
    one, None for optional fields, refused otherwise; int / float / bool / str by the kind;
    ``size`` fields are ``N`` or ``HxW``; ``list`` fields are comma lists whose items are ints
    where they look like ints.  A ``str`` field with choices accepts only those.  Ranges and
    cross-field rules are left to :class:`~patchbank.config.Config` (see :func:`build_config`).
    """

    def __init__(self, field_name: str, tp: Any, default: Any = None):
        self.field_name = field_name
        self.kind, self.optional = value_kind(tp)
        spec = FIELD_SPECS.get(field_name)
        self.choices = spec.choices if spec is not None else None
        self.name = self.kind

    def get_metavar(self, param, ctx=None) -> str:  # noqa: D401 - click API
        """The value's shape for --help: the choices, or INT / FLOAT / N|HxW ... (``|none``)."""
        text = "|".join(self.choices) if self.choices else _METAVARS[self.kind]
        return f"{text}|none" if none_meaning(self.optional, self.choices) == NONE_IS_NULL else text

    def convert(self, value: Any, param, ctx) -> Any:
        """The parsed value; ``self.fail`` (a one-line BadParameter) for text that does not parse."""
        if not isinstance(value, str):
            return value  # already converted (defaults, programmatic calls)
        text = value.strip()
        if text.lower() == NONE_WORD:
            meaning = none_meaning(self.optional, self.choices)
            if meaning == NONE_IS_NULL:
                return None
            if meaning == NONE_REFUSED:
                self.fail(f"{value!r}: this setting cannot be none; expected {self._expected()}",
                          param, ctx)
            text = NONE_WORD   # the choice, spelled as the choices spell it
        if not text:
            self.fail("empty value", param, ctx)
        return getattr(self, f"_parse_{self.kind}")(text, value, param, ctx)

    def _expected(self) -> str:
        """What the field takes, for error messages: ``one of a, b`` or ``an integer`` ..."""
        if self.choices:
            what = "a comma list of" if self.kind == "list" else "one of"
            return f"{what} {', '.join(self.choices)}"
        return _EXPECTED[self.kind]

    def _parse_int(self, text, value, param, ctx):
        if not is_int_text(text):
            self.fail(f"expected an integer, got {value!r}", param, ctx)
        return int(text)

    def _parse_float(self, text, value, param, ctx):
        try:
            number = float(text)
        except ValueError:
            self.fail(f"expected a number, got {value!r}", param, ctx)
        if not math.isfinite(number):
            self.fail(f"expected a finite number, got {value!r}", param, ctx)
        return number

    def _parse_bool(self, text, value, param, ctx):
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        self.fail(f"expected true or false, got {value!r}", param, ctx)

    def _parse_size(self, text, value, param, ctx):
        try:
            return parse_size(text, self.field_name)
        except ConfigError as exc:
            self.fail(exc.message, param, ctx)

    def _parse_list(self, text, value, param, ctx):
        items = [p.strip() for p in text.split(",")]
        if any(not p for p in items):
            self.fail(f"expected a comma-separated list like 2,3, got {value!r}", param, ctx)
        return tuple(int(p) if is_int_text(p) else p for p in items)

    def _parse_str(self, text, value, param, ctx):
        if self.choices and text not in self.choices:
            self.fail(f"not one of {', '.join(self.choices)}, got {value!r}", param, ctx)
        return text


@functools.cache
def _annotations() -> dict[str, Any]:
    return typing.get_type_hints(Config)


def field_value_type(field_name: str) -> ConfigValue:
    """The :class:`ConfigValue` of a Config field (KeyError for an unknown field)."""
    return ConfigValue(field_name, _annotations()[field_name], FIELD_SPECS[field_name].default)


def option_help(field_name: str) -> str:
    """--help text of a config option: the field's metadata help and the default preset's value."""
    spec = FIELD_SPECS[field_name]
    default = format_value(getattr(PRESETS[DEFAULT_PRESET], field_name), spec.kind)
    return f"{spec.help} [{DEFAULT_PRESET}: {default}]"


def config_field_options() -> list[click.Option]:
    """One click option per Config field, named ``--field-name``; default None = 'keep preset'."""
    return [click.Option([option_name(name), CFG_PREFIX + name], type=field_value_type(name),
                         default=None, help=option_help(name))
            for name in FIELD_SPECS]


def with_config_options(command: click.Command) -> click.Command:
    """Add the config options (:func:`config_field_options`) to ``command``; returns it."""
    command.params.extend(config_field_options())
    return command


def given_overrides(ctx: click.Context, params: dict[str, Any]) -> dict[str, Any]:
    """The Config fields given explicitly on the command line (or via env), field -> value."""
    out = {}
    for name in FIELD_SPECS:
        key = CFG_PREFIX + name
        if ctx.get_parameter_source(key) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            out[name] = params[key]
    return out


def describe_config_error(exc: ConfigError) -> str:
    """A ConfigError in option terms: ``invalid value for --kappa: must be in (0, 1], got 2.0``."""
    with_ = f" (with {', '.join(option_name(r) for r in exc.related)})" if exc.related else ""
    return f"invalid value for {option_name(exc.field)}{with_}: {exc.message}"


def build_config(preset: str, overrides: dict[str, Any]) -> Config:
    """``Config.preset(preset, **overrides)``; a ConfigError becomes a one-line usage error
    naming the option (:func:`describe_config_error`)."""
    try:
        return Config.preset(preset, **overrides)
    except ConfigError as exc:
        raise click.UsageError(describe_config_error(exc)) from None
