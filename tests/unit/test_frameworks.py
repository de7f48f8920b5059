"""The framework mapping of the auditor's report: the shipped file and its checks."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import yaml

from processors.reporting.controls_catalog import CONTROL_IDS
from processors.reporting.frameworks import MappingError, load_mapping
from schemas.models import AlertType

SHIPPED = Path(__file__).resolve().parents[2] / "processors" / "reporting" / "frameworks.yaml"
FRAMEWORKS = {
    "OWASP Top 10 for Agentic Applications",
    "OWASP Non-Human Identities Top 10",
    "CSA MAESTRO",
    "NIST AI RMF 1.0",
    "NIST CSF 2.0",
    "MITRE ATLAS",
}


def test_the_packaged_mapping_is_the_shipped_file() -> None:
    packaged = load_mapping()
    assert packaged == load_mapping(SHIPPED)
    assert len(packaged.items) == len(yaml.safe_load(SHIPPED.read_text(encoding="utf-8")))


@pytest.mark.parametrize("control_id", CONTROL_IDS)
def test_every_control_maps_to_an_item(control_id: str) -> None:
    items = load_mapping().items_for_control(control_id)
    assert items
    assert all(control_id in item.controls for item in items)


@pytest.mark.parametrize("alert_type", list(AlertType))
def test_every_alert_type_maps_to_an_item(alert_type: AlertType) -> None:
    items = load_mapping().items_for_alert(alert_type)
    assert items
    assert all(alert_type.value in item.alert_types for item in items)


def test_every_item_cites_an_https_source_and_each_framework_has_two_items() -> None:
    items = load_mapping().items
    assert all(item.source.startswith("https://") for item in items)
    per_framework = Counter(item.framework for item in items)
    assert set(per_framework) == FRAMEWORKS
    assert min(per_framework.values()) >= 2


def _bad_copy(tmp_path: Path, **changes: object) -> Path:
    """The shipped mapping with its first item changed."""
    items = yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))
    items[0] |= changes
    path = tmp_path / "frameworks.yaml"
    path.write_text(yaml.safe_dump(items), encoding="utf-8")
    return path


def test_an_unknown_control_is_refused_naming_it_and_its_item(tmp_path: Path) -> None:
    path = _bad_copy(tmp_path, controls=["workload_identity", "quantum_shield"])
    with pytest.raises(MappingError, match=r"ASI02: unknown control quantum_shield") as err:
        load_mapping(path)
    assert str(path) in str(err.value)


def test_an_unknown_alert_type_is_refused_naming_it_and_its_item(tmp_path: Path) -> None:
    path = _bad_copy(tmp_path, alert_types=["SHARED_CREDENTIAL", "TOKEN_LOST"])
    with pytest.raises(MappingError, match=r"ASI02: unknown alert type TOKEN_LOST"):
        load_mapping(path)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"source": "http://example.org/item"}, r"ASI02: source: String should match"),
        ({"controls": [], "alert_types": []}, r"ASI02: maps to no control and no alert type"),
        ({"id": "ASI03"}, r"ASI03: listed twice"),
    ],
)
def test_a_malformed_item_is_refused_naming_it(
    tmp_path: Path, changes: dict[str, object], expected: str
) -> None:
    with pytest.raises(MappingError, match=expected):
        load_mapping(_bad_copy(tmp_path, **changes))


def test_a_lookup_of_an_unknown_name_is_an_error() -> None:
    mapping = load_mapping()
    with pytest.raises(ValueError, match="unknown control"):
        mapping.items_for_control("workload_identities")
    with pytest.raises(ValueError, match="unknown alert type"):
        mapping.items_for_alert("SHARED_CREDENTIALS")
