"""The shape ruff cannot hold: how long a module may grow, and that every test module which
starts a service says so with the ``integration`` marker (and the fault suite with
``faults``), so ``-m "not integration"`` runs without a broker, a server or a browser."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support import REPO

# Lines per module. A source module past 600 lines holds more than one subject for a
# reader; a test module reads flatter (one case per function, tables of cases), so 800.
LIMITS = {"schemas": 600, "producers": 600, "processors": 600, "tests": 800}

# The few modules allowed past their limit, each up to a ceiling, with the reason. A module
# back under its limit fails the test until its entry goes, so the list cannot go stale.
EXCEPTIONS: dict[str, tuple[int, str]] = {
    "processors/correlation/engine.py": (
        950,
        "the pure correlation state machine: every rule folds into the one tree state, and "
        "a reader checks a rule against the others beside it",
    ),
    "processors/cli.py": (
        760,
        "the custody command: one typer app, each subcommand's options and output",
    ),
    "producers/simulator.py": (
        640,
        "the workload simulator: the three scenarios and each misbehaviour planted in them, "
        "one deterministic plan",
    ),
}

# What a test module imports to start a service (None: anything from that module).
HARNESSES: dict[str, set[str] | None] = {
    "tests.support.broker": {
        "RunningBroker",
        "broker",
        "local_broker",
        "run_custody",
        "CUSTODY",
        "read_to_end",
        "consume",
    },
    "tests.support.stack": {"Stack", "WatchedStack", "watched"},
    "tests.support.correlator": {"Worker", "AlertReader"},
    "tests.support.clickhouse_server": {"ClickHouseServer"},
    "tests.support.pipeline": {"Publisher"},
    "processors.storage.backend": {"ChdbBackend", "ServerBackend", "open_backend"},
    "processors.broker": {"start_broker"},
    "playwright.sync_api": None,
}


def _modules() -> list[Path]:
    return sorted(path for top in LIMITS for path in (REPO / top).rglob("*.py"))


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines())


def _name(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def _test_modules(under: str) -> list[Path]:
    return sorted((REPO / under).rglob("test_*.py"))


def _markers(tree: ast.Module) -> set[str]:
    """The marks a module's ``pytestmark`` applies (``pytest.mark.<name>``)."""
    marks: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "pytestmark" for target in node.targets
        ):
            marks.update(
                part.attr
                for part in ast.walk(node.value)
                if isinstance(part, ast.Attribute)
                and isinstance(part.value, ast.Attribute)
                and part.value.attr == "mark"
            )
    return marks


def _harnesses(tree: ast.Module) -> set[str]:
    """The service-starting names a module imports."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in HARNESSES:
            wanted = HARNESSES[node.module]
            found.update(
                f"{node.module}.{alias.name}"
                for alias in node.names
                if wanted is None or alias.name in wanted
            )
    return found


def test_every_module_is_within_its_limit() -> None:
    over = []
    for path in _modules():
        name = _name(path)
        ceiling = EXCEPTIONS.get(name, (LIMITS[name.split("/")[0]], ""))[0]
        if _lines(path) > ceiling:
            over.append(f"{name}: {_lines(path)} lines, at most {ceiling}")
    assert over == [], "split these modules (a reader follows one subject per module)"


@pytest.mark.parametrize("name", sorted(EXCEPTIONS))
def test_each_exception_is_still_needed(name: str) -> None:
    path = REPO / name
    assert path.is_file(), f"{name} is gone: remove its exception"
    limit = LIMITS[name.split("/")[0]]
    assert _lines(path) > limit, f"{name} is within {limit} lines now: remove its exception"
    assert EXCEPTIONS[name][1], f"{name}: an exception says why"


def test_the_limits_are_checked_on_something() -> None:
    counted = {_name(path).split("/")[0] for path in _modules()}
    assert counted == set(LIMITS)
    assert (REPO / "tests" / "unit" / "test_code_shape.py") in _modules()


@pytest.mark.parametrize(
    ("source", "marks", "harnesses"),
    [
        (
            "import pytest\npytestmark = [pytest.mark.integration, pytest.mark.faults]\n",
            {"integration", "faults"},
            set(),
        ),
        ("import pytest\npytestmark = pytest.mark.skipif(True, reason='x')\n", {"skipif"}, set()),
        (
            "from tests.support.stack import Stack, api_query\nmark = 'integration'\n",
            set(),
            {"tests.support.stack.Stack"},
        ),
    ],
)
def test_the_marker_and_harness_readers_see_what_a_module_says(
    source: str, marks: set[str], harnesses: set[str]
) -> None:
    tree = ast.parse(source)
    assert _markers(tree) == marks
    assert _harnesses(tree) == harnesses


def test_every_service_starting_test_module_is_marked_integration() -> None:
    unmarked = []
    for path in _test_modules("tests"):
        tree = ast.parse(path.read_text())
        starts = _harnesses(tree)
        if path.is_relative_to(REPO / "tests" / "integration"):
            starts.add("tests/integration (every module there)")
        if starts and "integration" not in _markers(tree):
            unmarked.append(f"{_name(path)}: {sorted(starts)}")
    assert unmarked == [], "add pytestmark = pytest.mark.integration"


def test_every_fault_module_is_marked_faults() -> None:
    unmarked = [
        _name(path)
        for path in _test_modules("tests/faults")
        if "faults" not in _markers(ast.parse(path.read_text()))
    ]
    assert unmarked == [], "add pytest.mark.faults to the module's pytestmark"
