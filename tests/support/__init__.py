"""What the unit, integration, fault and benchmark code share; test modules import from
here, never from each other.

- :mod:`tests.support.events`: ``T0``, the actors, and one builder per event type with the
  defaults of a custody tree (``declare``, ``allow``, ``issue``, ``use``, ``revoke``, ...).
- :mod:`tests.support.trees`: the clean three-level :class:`~tests.support.trees.Tree`,
  trees with chosen misbehaviours, mixed traffic, and the pure correlator run over them.
- :mod:`tests.support.samples`: one valid event of each type, stamping, the JSON form, and
  the hash chain of a producer instance.
- :mod:`tests.support.stored`: a simulation stored in ClickHouse without a broker.
- :mod:`tests.support.sdk`: what the SDK's tests share: a credential's expiry, the shape of
  what a task published, and the export task of the crash case.
- :mod:`tests.support.polling`: waiting for a condition with a deadline.
- :mod:`tests.support.broker`: a private Tansu broker, its fixtures, reading topics back.
- :mod:`tests.support.stack`: a local stack (``custody up``) in a directory of its own.
- :mod:`tests.support.correlator`: a ``custody correlate`` worker process and a reader of
  the alerts it writes.
- :mod:`tests.support.clickhouse_server`: a private ClickHouse 18.16 server and its
  reduced tables.
- :mod:`tests.support.measure`: percentiles and py-spy sampling for the benchmarks.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
"""The repository's root directory."""
