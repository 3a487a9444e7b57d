"""Prometheus metrics. Labels carry sources, outcomes and channels, never
personal data. Database-derived gauges are read at scrape time."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from adapter.db import read_transaction
from adapter.models import ApplicationAck, InboundMessage, Notification
from adapter.reply_models import Writeback

if TYPE_CHECKING:  # the FHIR models cost ~0.4 s to import: every CLI command imports this module
    from adapter.storage_full import SpaceWatch
    from fhir.validation_pool import ValidationPool
    from hl7.mllp import MLLPServer, ServerTLS

REGISTRY = CollectorRegistry()
_FIVE_MINUTES = timedelta(minutes=5)

MESSAGES_RECEIVED = Counter(
    "adapter_messages_received_total", "Inbound messages by source and ACK outcome", ["source", "outcome"],
    registry=REGISTRY,
)
ACK_LATENCY = Histogram(
    "adapter_ack_latency_seconds", "Time from a message read to its ACK", ["source"], registry=REGISTRY,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0),
)
STORE_BATCH = Histogram(
    "adapter_hl7_store_batch_messages", "HL7 messages stored (and then acknowledged) per group commit",
    registry=REGISTRY, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
STORE_SECONDS = Histogram(
    "adapter_hl7_store_seconds",
    "A group commit of HL7 messages before their ACKs, by phase: lock_wait (for the background transaction"
    " in progress, with SQLite), write (insert and durable commit)",
    ["phase"], registry=REGISTRY,
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)
GC_PAUSES = Histogram(
    "adapter_gc_pause_seconds", "Python garbage collection pauses by generation (every thread waits meanwhile)",
    ["generation"], registry=REGISTRY,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)
FROZEN = Gauge(
    "adapter_gc_frozen_objects", "Objects made at start-up that garbage collection no longer scans",
    registry=REGISTRY,
)
FROZEN.set_function(gc.get_freeze_count)
_gc_started: list[float] = []


def _time_gc(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _gc_started[:] = [time.perf_counter()]
    elif _gc_started:
        GC_PAUSES.labels(str(info["generation"])).observe(time.perf_counter() - _gc_started[0])


def watch_gc() -> None:
    """Time every garbage collection of this process (idempotent)."""
    if _time_gc not in gc.callbacks:
        gc.callbacks.append(_time_gc)


DISPATCH_OUTCOMES = Counter(
    "adapter_dispatch_total", "Send attempts by channel and outcome", ["channel", "outcome"], registry=REGISTRY,
)


class ValidationHelpersCollector(Collector):
    """The helper processes that validate large FHIR Bundles (fhir/validation_pool.py):
    how many run, and how many were found dead (Bundles are then validated in the
    serving process for a while, more slowly)."""

    def __init__(self, pool: ValidationPool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield GaugeMetricFamily("adapter_fhir_validation_helpers",
                                f"Helper processes validating large FHIR Bundles ({self.pool.processes} configured)",
                                value=len(self.pool.helper_pids()))
        yield CounterMetricFamily("adapter_fhir_validation_helper_failures",
                                  "FHIR validation helper processes found dead", value=self.pool.failures)


class DatabaseSpaceCollector(Collector):
    """Whether the database refuses writes for want of space now (its disk is full:
    nothing is stored or acknowledged; alert on it), and how many writes it refused
    so (adapter/storage_full.py)."""

    def __init__(self, watch: SpaceWatch) -> None:
        self.watch = watch

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield GaugeMetricFamily("adapter_database_full",
                                "1 while the database refuses writes for want of space (nothing is stored or"
                                " acknowledged), else 0", value=int(self.watch.full))
        yield CounterMetricFamily("adapter_database_full_refusals",
                                  "Writes the database refused for want of space", value=self.watch.refused_total)


class MllpListenerCollector(Collector):
    """The MLLP listener as last started in this process: connections open now, and
    when its TLS certificate expires (as last (re)loaded), which an operator alerts on
    weeks ahead. Nothing before a listener starts; no expiry without TLS."""

    def __init__(self) -> None:
        self.server: MLLPServer | None = None
        self.tls: ServerTLS | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self.server is not None:
            yield GaugeMetricFamily("adapter_mllp_connections", "MLLP connections open",
                                    value=self.server.connection_count)
        if self.tls is not None:
            yield GaugeMetricFamily("adapter_mllp_tls_certificate_expiry_timestamp_seconds",
                                    "When the MLLP listener's TLS certificate expires (Unix time)",
                                    value=self.tls.not_after.timestamp())


MLLP_LISTENER = MllpListenerCollector()
REGISTRY.register(MLLP_LISTENER)
HL7_LAST_STORED = Gauge(
    "adapter_hl7_last_message_timestamp_seconds",
    "When this process last stored an HL7 message from each sending facility (MSH-4 as configured in"
    " facilities.yaml, 'other' for the rest; Unix time): alert on a feed gone silent",
    ["facility"], registry=REGISTRY,
)


class StoreCollector(Collector):
    """Queue depth (inbound messages not yet processed) and the age of the oldest,
    due and overdue notifications, notifications by status."""

    def __init__(self, sessions: sessionmaker[Session], now: Callable[[], datetime]) -> None:
        self.sessions = sessions
        self.now = now

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from fhir.subscriptions import silent_subscriptions  # see TYPE_CHECKING above

        now = self.now()
        with read_transaction(self.sessions) as session:
            stored = session.scalar(select(func.count()).where(InboundMessage.status == "stored")) or 0
            oldest = session.scalar(select(InboundMessage.received_at).where(InboundMessage.status == "stored")
                                    .order_by(InboundMessage.id).limit(1))
            due = session.scalar(
                select(func.count()).where(Notification.status == "scheduled", Notification.scheduled_for <= now)
            ) or 0
            overdue = session.scalar(
                select(func.count()).where(
                    Notification.status.in_(("scheduled", "claimed")),
                    Notification.scheduled_for <= now.replace(microsecond=0) - _FIVE_MINUTES,
                )
            ) or 0
            by_status = session.execute(select(Notification.status, func.count()).group_by(Notification.status)).all()
            silent = len(silent_subscriptions(session, now))
            # Messages to the hospital that gave up after every retry need a person.
            given_up = {
                "writeback": session.scalar(select(func.count()).where(Writeback.status == "failed")) or 0,
                "application_ack": session.scalar(select(func.count()).where(ApplicationAck.status == "failed")) or 0,
            }
        yield GaugeMetricFamily(
            "adapter_fhir_subscriptions_silent", "FHIR subscriptions with no heartbeat or event in their period", value=silent
        )
        failed = GaugeMetricFamily(
            "adapter_hospital_messages_failed", "Write-backs and application ACKs that gave up", labels=["kind"]
        )
        for kind, count in given_up.items():
            failed.add_metric([kind], count)
        yield failed
        yield GaugeMetricFamily("adapter_inbound_queue_depth", "Stored inbound messages not yet processed", value=stored)
        # A backlog that drains is normal after a burst; one whose oldest message keeps
        # ageing means processing has stopped or cannot keep up.
        yield GaugeMetricFamily(
            "adapter_inbound_oldest_waiting_seconds",
            "Age of the oldest stored inbound message not yet processed (0 when none waits)",
            value=max(0.0, (now - oldest).total_seconds()) if oldest else 0.0,
        )
        yield GaugeMetricFamily("adapter_notifications_due", "Scheduled notifications whose time has come", value=due)
        yield GaugeMetricFamily("adapter_notifications_overdue", "Notifications due for more than five minutes", value=overdue)
        family = GaugeMetricFamily("adapter_notifications", "Notifications by status", labels=["status"])
        for status, count in by_status:
            family.add_metric([status], count)
        yield family

