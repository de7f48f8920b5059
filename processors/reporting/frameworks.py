"""The framework mapping of the auditor's report: which framework items each control and
each alert type answers to.

The mapping is data, ``frameworks.yaml`` beside this module (installed with the package),
so an organisation can extend it without touching code: a list of items, each with its
framework, the framework's own id and title, the URL of the page that defines it, and the
report's controls (:mod:`processors.reporting.controls_catalog`) and alert types
(:class:`schemas.models.AlertType`) it is mapped to. :func:`load_mapping` reads and checks
it; a file naming an unknown control or alert type, or an item twice, is refused as a
whole, with the offending item named, rather than reported half right.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails

from processors.reporting.controls_catalog import CONTROL_IDS
from schemas.models import AlertType

MAPPING_FILE = "frameworks.yaml"
ALERT_TYPES: tuple[str, ...] = tuple(kind.value for kind in AlertType)


class MappingError(ValueError):
    """A mapping file that is not a valid list of framework items."""


class FrameworkItem(BaseModel):
    """One item of a framework, and the controls and alert types mapped to it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    framework: str = Field(min_length=1)
    id: str = Field(min_length=1)
    title: str = Field(min_length=1)
    # The page that defines the item: an auditor follows it, so only https.
    source: str = Field(pattern=r"^https://\S+$")
    controls: tuple[str, ...] = ()
    alert_types: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _known_names(self) -> FrameworkItem:
        unknown_controls = [c for c in self.controls if c not in CONTROL_IDS]
        if unknown_controls:
            raise ValueError(
                f"{self.name}: unknown control {', '.join(unknown_controls)}"
                f" (known: {', '.join(CONTROL_IDS)})"
            )
        unknown_alerts = [a for a in self.alert_types if a not in ALERT_TYPES]
        if unknown_alerts:
            raise ValueError(
                f"{self.name}: unknown alert type {', '.join(unknown_alerts)}"
                f" (known: {', '.join(ALERT_TYPES)})"
            )
        if not self.controls and not self.alert_types:
            raise ValueError(f"{self.name}: maps to no control and no alert type")
        return self

    @property
    def name(self) -> str:
        """The item as a reader names it: its framework and its id."""
        return f"{self.framework} {self.id}"


class Mapping(BaseModel):
    """Every framework item of the mapping, in the file's order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    items: tuple[FrameworkItem, ...]

    @model_validator(mode="after")
    def _unique(self) -> Mapping:
        seen: set[tuple[str, str]] = set()
        for item in self.items:
            key = (item.framework, item.id)
            if key in seen:
                raise ValueError(f"{item.name}: listed twice")
            seen.add(key)
        return self

    def items_for_control(self, control_id: str) -> tuple[FrameworkItem, ...]:
        """The items mapped to a control; an id that is no control is an error, not an
        empty answer, so a typo cannot pass for an unmapped control."""
        if control_id not in CONTROL_IDS:
            raise ValueError(f"unknown control {control_id!r}")
        return tuple(item for item in self.items if control_id in item.controls)

    def items_for_alert(self, alert_type: AlertType | str) -> tuple[FrameworkItem, ...]:
        """The items mapped to an alert type (an :class:`AlertType` or its name)."""
        if alert_type not in ALERT_TYPES:
            raise ValueError(f"unknown alert type {alert_type!r}")
        return tuple(item for item in self.items if alert_type in item.alert_types)


def load_mapping(path: Path | None = None) -> Mapping:
    """Read and check a framework mapping: the one installed with the package, or the
    file at ``path``. Raises :class:`MappingError` naming the file and the items at fault.
    """
    if path is None:
        where = f"processors/reporting/{MAPPING_FILE}"
        text = files("processors.reporting").joinpath(MAPPING_FILE).read_text(encoding="utf-8")
    else:
        where = str(path)
        text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise MappingError(f"{where}: not YAML: {exc}") from exc
    if not isinstance(data, list):
        raise MappingError(f"{where}: expected a list of framework items")
    try:
        return Mapping.model_validate({"items": data})
    except ValidationError as exc:
        problems = "; ".join(_problem(error, data) for error in exc.errors())
        raise MappingError(f"{where}: {problems}") from exc


def _problem(error: ErrorDetails, data: list[Any]) -> str:
    """One validation error, told by the item it is about (the validators above already
    name theirs; a missing or malformed field gets its item's name here)."""
    location = error["loc"]
    message = error["msg"].removeprefix("Value error, ")
    if len(location) < 2 or not isinstance(location[1], int):
        return message
    entry = data[location[1]]
    named = (
        f"{entry.get('framework', '?')} {entry.get('id', '?')}"
        if isinstance(entry, dict)
        else f"item {location[1] + 1}"
    )
    if message.startswith(named):
        return message
    field = ".".join(str(part) for part in location[2:])
    return f"{named}: {field + ': ' if field else ''}{message}"
