"""Option schemas: what a model family lets a user set, declared once.

An architecture declares its **run options** (settings of one prediction that are not part of
the trained model: a sampler's steps, a class, a guidance model) in
:attr:`~zarrstain.models.Architecture.run_schema`, and its own **training settings** in
:attr:`~zarrstain.models.Architecture.train_schema`, as :class:`Option` s. From them:

- ``predict(options={...})``, ``plan_prediction(options=...)`` and ``train`` refuse a name the
  model's family does not declare, and convert values to the declared type;
- the CLI generates one flag per option (``--steps``, ``--class-map``), so neither the engine
  nor the CLI names any family's setting.

The family's :meth:`~zarrstain.models.Architecture.configure` still checks what only it can
check (a class the model knows, steps within its schedule) and fills in its defaults.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from zarrstain.errors import ParameterError, option
from zarrstain.models.plugins import OPTIONS_GROUP, PluginRegistry

__all__ = [
    "FAMILY_OPTIONS",
    "TYPES",
    "FamilyOptions",
    "Option",
    "check_options",
    "declared",
    "merge_schemas",
]

#: option types: how a value is read (from Python, a file or a flag) and checked
TYPES = ("str", "int", "float", "floats", "bool", "path", "model")


@dataclass(frozen=True)
class Option:
    """One setting a family declares.

    Attributes
    ----------
    name
        The keyword (``"steps"``); the flag is ``--steps`` unless :attr:`flag` says otherwise.
    type
        One of :data:`TYPES`. ``"bool"`` is an on/off flag; ``"floats"`` numbers (a sequence,
        or text ``"0.5,0.999"``), a tuple; ``"path"`` a file that must exist;
        ``"model"`` a model (a loaded :class:`~zarrstain.models.Model`, or a path the engine
        loads once per run).
    help
        One line for ``--help``, ending with the default in brackets (``[the model's: 50]``).
    choices
        The values allowed, when there is a fixed set.
    minimum
        The smallest number allowed (``"int"``/``"float"``).
    flag
        The CLI spelling, when not ``--`` + the name with dashes.
    scene
        The value may differ per scene (a class map): the family resolves it for each scene
        in :meth:`~zarrstain.models.Architecture.scene_options`, and plates are planned scene
        by scene when it is given.
    """

    name: str
    type: str = "str"
    help: str = ""
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    flag: str = ""
    scene: bool = False

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"option {self.name!r}: type {self.type!r} is not one of {TYPES}")

    @property
    def cli_flag(self) -> str:
        """``--steps`` for ``steps``."""
        return self.flag or "--" + self.name.replace("_", "-")

    def convert(self, value: Any) -> Any:
        """``value`` as this option's type (strings from files and flags too), checked.

        Raises
        ------
        ParameterError
            A value of another type, below :attr:`minimum` or not one of :attr:`choices`;
            the message names the keyword, or under the CLI the flag.
        """
        name = option(self.name, self.cli_flag)
        kind = self.type
        if kind in ("int", "float"):
            number = _number(value, kind == "int")
            if number is None or (self.minimum is not None and number < self.minimum):
                low = "" if self.minimum is None else f" ≥ {self.minimum:g}"
                whole = "a whole number" if kind == "int" else "a number"
                raise ParameterError(f"{name} must be {whole}{low}, not {value!r}")
            value = number
        elif kind == "floats":
            value = _numbers(value, self.minimum, name)
        elif kind == "bool":
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
                value = value.lower() in ("true", "yes")
            if not isinstance(value, bool):
                raise ParameterError(f"{name} is on or off (True/False), not {value!r}")
        elif kind in ("str", "path") and not isinstance(value, str):
            if kind == "str" and isinstance(value, int | float) and not isinstance(value, bool):
                value = str(value)
            elif kind == "path" and not isinstance(value, os.PathLike):
                raise ParameterError(f"{name} must be a path, not {value!r}")
        if kind == "path" and not os.path.exists(value):
            raise ParameterError(f"{name}: no file {os.fspath(value)!r}")
        if self.choices and value not in self.choices:
            raise ParameterError(f"{name} must be one of {', '.join(self.choices)}, not {value!r}")
        return value


@dataclass(frozen=True)
class FamilyOptions:
    """A family's option schemas, declared in a light module (no torch) as an entry point of
    the group ``zarrstain.options`` under the family's name, so the CLI can make their flags
    without importing the family (:attr:`Architecture.run_schema` reads them from there).

    Attributes
    ----------
    run
        Run options of one prediction.
    train
        Training settings beyond the common ones.
    """

    run: tuple[Option, ...] = ()
    train: tuple[Option, ...] = ()


#: family name → its declared option schemas (entry points, loaded when asked for)
FAMILY_OPTIONS: PluginRegistry[FamilyOptions] = PluginRegistry(
    OPTIONS_GROUP, FamilyOptions, "option schema", named=False
)


def declared(name: str) -> FamilyOptions:
    """The option schemas the family ``name`` declares (none declared: empty)."""
    return FAMILY_OPTIONS[name] if name in FAMILY_OPTIONS else FamilyOptions()


def _numbers(value: Any, minimum: float | None, name: str) -> tuple[float, ...]:
    """A ``"floats"`` option's value: numbers from a sequence or from ``"0.5,0.999"``."""
    items = value.split(",") if isinstance(value, str) else value
    try:
        numbers = tuple(_number(v, False) for v in items)
    except TypeError:  # not a sequence
        numbers = (None,)
    if not numbers or any(n is None or (minimum is not None and n < minimum) for n in numbers):
        low = "" if minimum is None else f", each ≥ {minimum:g}"
        raise ParameterError(f"{name} must be numbers like 0.5,0.999{low}, not {value!r}")
    return numbers


def _number(value: Any, whole: bool) -> int | float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if whole:
        return int(number) if number.is_integer() else None
    return number


def check_options(
    schema: Sequence[Option],
    options: Mapping[str, Any] | None,
    *,
    owner: str,
    load_model: Callable[[Any], Any] | None = None,
) -> dict[str, Any]:
    """The options given (None values dropped), each declared by ``schema`` and converted.

    Parameters
    ----------
    schema
        The family's options.
    options
        What the user gave.
    owner
        Who declares the schema, for messages (``"architecture 'fnet'"``).
    load_model
        Turns a ``"model"`` option given as a path into a model (loaded here, once).

    Raises
    ------
    ParameterError
        A name the schema does not declare (the message lists those it does), or a bad value.
    """
    given = {k: v for k, v in (options or {}).items() if v is not None}
    by_name = {o.name: o for o in schema}
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        takes = f"it takes {', '.join(by_name)}" if by_name else "it takes none"
        flags = ", ".join(option(n, _flag_of(n)) for n in unknown)
        raise ParameterError(f"{owner} takes no option {flags}; {takes}")
    out = {}
    for name, value in given.items():
        spec = by_name[name]
        if spec.type == "model" and not _is_model(value):
            if load_model is None or not isinstance(value, str | os.PathLike):
                raise ParameterError(f"{option(name, spec.cli_flag)} must be a model or its path")
            value = load_model(value)
        elif spec.type != "model":
            value = spec.convert(value)
        out[name] = value
    return out


def _flag_of(name: str) -> str:
    """The CLI flag of an option some installed family declares (``classes``: --class-map)."""
    for family in FAMILY_OPTIONS.values():
        for spec in (*family.run, *family.train):
            if spec.name == name:
                return spec.cli_flag
    return "--" + name.replace("_", "-")


def _is_model(value: Any) -> bool:
    return hasattr(value, "spec") and hasattr(value, "module")


def merge_schemas(
    schemas: Iterable[tuple[str, Sequence[Option]]],
) -> dict[str, tuple[Option, list[str]]]:
    """One option per name across families (``(owner, schema)`` pairs), for the CLI's flags:
    name → (the option, the owners that declare it).

    Families may share an option (two samplers' ``steps``) when they declare it alike; the
    first declaration's help is kept.

    Raises
    ------
    ValueError
        Two families declare one name with different types or flags.
    """
    merged: dict[str, tuple[Option, list[str]]] = {}
    for owner, schema in schemas:
        for spec in schema:
            if spec.name in merged:
                first, owners = merged[spec.name]
                if (first.type, first.cli_flag) != (spec.type, spec.cli_flag):
                    raise ValueError(
                        f"{owner} and {owners[0]} both declare the option {spec.name!r}, "
                        f"as {spec.type} {spec.cli_flag} and {first.type} {first.cli_flag}"
                    )
                owners.append(owner)
                continue
            merged[spec.name] = (spec, [owner])
    return merged
