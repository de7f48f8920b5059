"""``custody import opa|vault``: a one-shot backfill of saved logs through the adapters.

The records are mapped and published in batches, each waited for until Kafka acked it;
what was published, skipped and dead-lettered is tallied by reason. The event ids are
derived from the records, so importing a log twice stores its events once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any, Literal

from processors.collect import opa, opa_files
from processors.collect.mapping_file import CollectMapping
from processors.collect.publisher import CollectPublisher, Tally
from processors.collect.records import Origin, Outcome
from processors.collect.vault import VaultAuditMapper
from processors.collect.vault_lines import outcomes_of_lines

Kind = Literal["opa", "vault"]
BATCH = 1_000


def _opa_outcomes(
    text: str, origin: Origin, mapping: CollectMapping
) -> Iterator[tuple[Outcome, bytes | None]]:
    return opa.decision_outcomes(opa_files.read_decisions(text), origin, mapping.opa)


def _vault_outcomes(
    text: str, origin: Origin, mapping: CollectMapping
) -> Iterator[tuple[Outcome, bytes | None]]:
    mapper = VaultAuditMapper(origin, mapping.vault)
    yield from outcomes_of_lines(mapper, (line.encode() for line in text.splitlines()))
    # Requests whose response is not in the log: mapped with what their request says.
    for outcome in mapper.drain():
        yield outcome, None


def import_log(
    kind: Kind,
    text: str,
    origin: Origin,
    mapping: CollectMapping,
    publisher: CollectPublisher,
    progress: Callable[[int], Any] | None = None,
) -> Tally:
    """Map and publish every record of ``text``; the tally of what became of them.
    Raises :class:`~processors.collect.publisher.Unavailable` when Kafka does not take a
    batch (the batches before it are stored; importing again is safe)."""
    outcomes = (_opa_outcomes if kind == "opa" else _vault_outcomes)(text, origin, mapping)
    tally = Tally()
    for batch in _batches(outcomes):
        tally.add(publisher.publish(origin, batch))
        if progress is not None:
            progress(len(batch))
    return tally


def _batches(
    outcomes: Iterable[tuple[Outcome, bytes | None]],
) -> Iterator[list[tuple[Outcome, bytes | None]]]:
    iterator = iter(outcomes)
    while batch := list(islice(iterator, BATCH)):
        yield batch
