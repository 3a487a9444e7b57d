"""Reading the YAML files of ``config/`` into their pydantic models, and the one check
their link templates share. Errors are :class:`ConfigError` naming the file, what it
holds and each field at fault, as start-up prints them."""

from __future__ import annotations

import string
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

import yaml
from pydantic import BaseModel, ValidationError

from adapter.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def dotted(_data: object, loc: tuple) -> str:
    """A validation error's place as pydantic gives it: ``payment_link.by_issuer``."""
    return ".".join(str(part) for part in loc)


def load_yaml_config(path: Path, model: type[M], what: str, *, missing: M | None = None,
                     place: Callable[[object, tuple], str] = dotted) -> M:
    """``path`` validated as ``model``; a missing file is ``missing`` when one is given.
    ``what`` names the content in errors ("rules", "services"); ``place`` writes a field's
    place from the data and the error's location (the rules name a rule by its id)."""
    if missing is not None and not path.exists():
        return missing
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc}") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{place(data, err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ConfigError(f"{path}: invalid {what}: {problems}") from exc


def foreign_placeholder(template: str, allowed: frozenset[str]) -> str | None:
    """The first placeholder of a link template that is not one of ``allowed`` written as
    ``{name}`` (a conversion or format spec would change what goes into the URL), or None.
    A stray brace raises ValueError.

    >>> foreign_placeholder("https://x.example/{id}?l={language}", frozenset({"id", "language"})) is None
    True
    >>> foreign_placeholder("https://x.example/{id!r}", frozenset({"id"}))
    'id'
    """
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template)
                  if name is not None]
    except ValueError as exc:
        raise ValueError(f"a stray brace in the link: {exc}") from None
    return next((name for name, spec, conversion in fields if name not in allowed or spec or conversion), None)


def fill_link(template: str, **values: str) -> str:
    """A link template checked by :func:`foreign_placeholder`, filled with ``values``, each
    URL-quoted whole (a ``/`` or ``&`` in a value cannot change the link's path or query).

    >>> fill_link("https://x.example/q?id={id}", id="FL 1/2")
    'https://x.example/q?id=FL%201%2F2'
    """
    return template.format(**{name: quote(value, safe="") for name, value in values.items()})
