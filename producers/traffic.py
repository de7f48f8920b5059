"""Publishing a simulation (:mod:`producers.simulator`) to Kafka, shaped to a rate.

The generator is pure; this is the part with a producer, a clock and a progress bar, shared
by ``custody simulate`` and ``custody demo``.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from producers import simulator
from producers.producer import CustodyProducer, PublishError
from producers.settings import Settings
from schemas.models import Envelope


@dataclass(slots=True)
class SimulationRun:
    """What was published: counts by event type, the trees reached, and the plan."""

    trees: dict[str, simulator.TreePlan]
    planned_events: int
    producer_instance: str
    by_type: Counter[str] = field(default_factory=Counter)
    published_roots: set[str] = field(default_factory=set)
    elapsed_seconds: float = 0.0

    @property
    def published(self) -> int:
        return sum(self.by_type.values())

    def misbehaviours(self) -> Counter[str]:
        """Misbehaving trees reached, by kind."""
        return Counter(
            str(plan.misbehaviour)
            for root in self.published_roots
            if (plan := self.trees[root]).misbehaviour
        )

    def expected_alerts(self) -> dict[str, str]:
        """root task id -> the alert type its misbehaviour must raise."""
        return {
            root: str(simulator.EXPECTED_ALERT[plan.misbehaviour])
            for root in self.published_roots
            if (plan := self.trees[root]).misbehaviour
        }


def publish_simulation(
    settings: Settings,
    config: simulator.SimulationConfig,
    rate: float = 0.0,
    duration: float | None = None,
    console: Console | None = None,
) -> SimulationRun:
    """Publish ``config``'s events (at most ``rate`` per second when > 0, for at most
    ``duration`` seconds) and wait until the broker acknowledged every one.

    Raises :class:`producers.admin.TopicSetupError` and
    :class:`producers.producer.PublishError` as the producer does.
    """
    stream = list(simulator.simulate(config))
    producer = CustodyProducer(settings)
    run = SimulationRun(
        trees={tree.root_task_id: tree for tree in simulator.plan(config)},
        planned_events=len(stream),
        producer_instance=producer.producer_instance,
    )
    progress = Progress(
        TextColumn("simulating"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console or Console(stderr=True),
        transient=True,
    )
    started = time.monotonic()
    deadline = started + duration if duration is not None else float("inf")
    with progress:
        bar = progress.add_task("simulate", total=len(stream))
        try:
            _publish(producer, stream, rate, started, deadline, run, progress, bar)
        except PublishError as exc:
            raise PublishError(
                f"{exc} ({producer.delivered} events were acknowledged before it)"
            ) from None
    run.elapsed_seconds = time.monotonic() - started
    return run


def _publish(
    producer: CustodyProducer,
    stream: list[Envelope],
    rate: float,
    started: float,
    deadline: float,
    run: SimulationRun,
    progress: Progress,
    bar: TaskID,
) -> None:
    for sent, event in enumerate(stream):
        # Traffic shaping: the n-th event is due n/rate seconds after the start.
        due = started + sent / rate if rate else started
        now = time.monotonic()
        if max(due, now) >= deadline:
            break
        if due > now:
            time.sleep(due - now)
        producer.publish(event)
        run.by_type[str(event.event_type)] += 1
        run.published_roots.add(event.root_task_id)
        # Redrawing per event would cost more than publishing it.
        if sent % 100 == 0:
            progress.update(bar, completed=sent + 1)
    progress.update(bar, completed=run.published)
    producer.close()
