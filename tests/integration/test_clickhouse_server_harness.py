"""The private ClickHouse server harness: it starts, takes a columnar batch, and keeps the rows
across a clean restart and across a crash on the same port."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.support.clickhouse_server import ClickHouseServer, server_binary

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(server_binary() is None, reason="clickhouse-server is not installed"),
]

ROWS = 10_000

# Written for 18.16: ReplacingMergeTree with the ORDER BY form, no TTL / LowCardinality.
CREATE = """
CREATE TABLE t (id String, ts DateTime, tags Array(String))
ENGINE = ReplacingMergeTree() ORDER BY id
"""


def count(server: ClickHouseServer) -> int:
    return int(server.execute("SELECT count() FROM t")[0][0])


def test_rows_survive_restart_and_kill(tmp_path: Path) -> None:
    server = ClickHouseServer(tmp_path / "clickhouse")
    started = time.monotonic()
    server.start()
    try:
        print(f"clickhouse-server ready in {time.monotonic() - started:.3f}s")
        assert server.version().startswith("18.16.")
        assert server.url == f"clickhouse://default:@127.0.0.1:{server.tcp_port}/default"

        base = datetime(2024, 1, 1)
        columns = [
            [f"id-{i:05d}" for i in range(ROWS)],
            [base + timedelta(seconds=i) for i in range(ROWS)],
            [[f"tag-{i % 7}", "all"] for i in range(ROWS)],
        ]
        client = server.client()
        try:
            client.execute(CREATE)
            client.execute("INSERT INTO t (id, ts, tags) VALUES", columns, columnar=True)
            assert client.execute("SELECT ts, tags FROM t WHERE id = 'id-00042'") == [
                (base + timedelta(seconds=42), ["tag-0", "all"])
            ]
        finally:
            client.disconnect()
        assert count(server) == ROWS

        port = server.tcp_port
        server.restart()
        assert server.tcp_port == port
        assert count(server) == ROWS

        server.kill()
        server.start()
        assert server.tcp_port == port
        assert count(server) == ROWS
    finally:
        server.stop()
    assert not server.running
