"""``custody up`` / ``status`` / ``down`` start and stop a real broker under ``.custody/``."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from schemas import topics
from tests.support.broker import free_port, run_custody

pytestmark = pytest.mark.integration


def _custody(home: Path, bootstrap: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_custody(bootstrap, *args, cwd=home)


def _status(home: Path, bootstrap: str) -> tuple[int, dict[str, dict[str, object]]]:
    result = _custody(home, bootstrap, "status", "--json")
    processes = json.loads(result.stdout)["processes"]
    return result.returncode, {p["name"]: p for p in processes}


def test_up_is_idempotent_and_down_stops_everything(tmp_path: Path) -> None:
    bootstrap = f"127.0.0.1:{free_port()}"
    try:
        first = _custody(tmp_path, bootstrap, "up")
        assert first.returncode == 0, first.stderr
        code, processes = _status(tmp_path, bootstrap)
        broker, correlate = processes["broker"], processes["correlate"]
        assert code == 0
        assert broker["running"]
        assert broker["healthy"]
        assert correlate["running"]
        assert isinstance(correlate["pid"], int)
        ingest = processes["ingest"]
        assert ingest["running"]
        assert ingest["healthy"]
        assert isinstance(ingest["pid"], int)
        assert str(ingest["address"]).startswith("http://127.0.0.1:")
        assert isinstance(broker["pid"], int)
        assert (tmp_path / ".custody" / "logs" / "broker.log").exists()
        existing = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics
        assert set(topics.ALL) <= set(existing)
        assert len(existing[topics.EVENTS].partitions) == 6

        again = _custody(tmp_path, bootstrap, "up")
        assert again.returncode == 0, again.stderr
        again_status = _status(tmp_path, bootstrap)[1]
        assert again_status["broker"]["pid"] == broker["pid"]
        assert again_status["correlate"]["pid"] == correlate["pid"]
        assert again_status["ingest"]["pid"] == ingest["pid"]
    finally:
        down = _custody(tmp_path, bootstrap, "down")
    assert down.returncode == 0
    assert all(name in down.stdout for name in ("broker", "correlate", "ingest"))
    code, processes = _status(tmp_path, bootstrap)
    assert code == 3
    assert not processes["broker"]["running"]
    assert not processes["correlate"]["running"]
    assert not processes["ingest"]["running"]
    assert (
        not Path(f"/proc/{broker['pid']}").exists()
        or b"tansu" not in Path(f"/proc/{broker['pid']}/cmdline").read_bytes()
    )


def test_up_refuses_a_port_taken_by_something_else(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        bootstrap = f"127.0.0.1:{taken.getsockname()[1]}"
        result = _custody(tmp_path, bootstrap, "up")
    assert result.returncode == 1
    assert "already in use" in result.stderr
