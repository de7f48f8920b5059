"""The mapping file: the OPA and Vault adapters' defaults, overridden per deployment.

A YAML file with ``opa:``, ``vault:`` and ``otlp:`` sections, holding fields of
:class:`~processors.collect.opa.OpaMapping`, :class:`~processors.collect.vault.VaultMapping`
and :class:`~processors.collect.otlp.OtlpMapping`
(docs/collect.md, "The mapping file"); a field not given keeps its default, an unknown
field is an error naming it.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from processors.collect.opa import OpaMapping
from processors.collect.otlp import OtlpMapping
from processors.collect.vault import VaultMapping


class MappingError(ValueError):
    """A mapping file that cannot be read or does not fit the adapters' fields."""


class CollectMapping(BaseModel):
    """Every adapter's mapping settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    opa: OpaMapping = Field(default_factory=OpaMapping)
    vault: VaultMapping = Field(default_factory=VaultMapping)
    otlp: OtlpMapping = Field(default_factory=OtlpMapping)


def load_mapping(path: Path | None) -> CollectMapping:
    """The mapping of ``path``, or the defaults when None."""
    if path is None:
        return CollectMapping()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return CollectMapping.model_validate(raw)
    except (OSError, yaml.YAMLError) as exc:
        raise MappingError(f"{path}: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False)
        )
        raise MappingError(f"{path}: {problems}") from None
