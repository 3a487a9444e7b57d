"""Production mode: Celery over RabbitMQ (``amqp://``) or Redis (``redis://``), when
``ADAPTER_BROKER_URL`` is set.

What runs where:

- ``python -m adapter serve --workers celery`` (any number of them) receives HL7 and
  FHIR, stores, acknowledges. It sends nothing itself.
- ``python -m adapter worker`` (any number of them) runs a Celery worker. Its main
  process also runs a *claim loop* (:class:`ClaimLoop`): it claims a batch of due
  notifications (``FOR UPDATE SKIP LOCKED``, with a lease) and publishes one
  ``adapter.dispatch.send_batch`` task for it; when inbound messages wait in the
  store (HL7 messages, FHIR versions), it publishes ``adapter.inbound.process_pending``;
  and when the way back has work (write-backs and application ACKs due to hospitals,
  provider callbacks to try again), it publishes ``adapter.way_back.send_pending``.

Why a claim loop in every worker rather than Celery beat: beat is a singleton. Run
two and every tick fires twice; run none and nothing is sent; and it is one more
process to deploy and watch. Claiming is already safe with any number of claimers
(``adapter/scheduler.py``), so each worker claims for itself: no leader, no single
point of failure, and capacity grows with the number of workers. The loop claims
only while the queue holds fewer than ``dispatch_queue_high_water`` batches, so
claimed work never waits long behind a slow provider (and its lease stays valid).

Why nothing is lost or sent twice:

- ``task_acks_late``: a task is acknowledged after it ran; ``task_reject_on_worker_lost``
  and the broker put it back when its worker dies (RabbitMQ at once, when the
  connection drops; Redis after ``broker_visibility_timeout_s``, even to a second worker
  while the first still runs it, so the settings require it longer than the claim lease:
  a dispatch batch handed over then finds its lease over and sends nothing). Prefetch is
  1, so a dead worker holds at most one task per pool process.
- A task is idempotent: a notification no longer ``claimed`` (already sent, or ended)
  is skipped, and so is one claimed again since the task was published (a task carries
  its claim's lease end, and a later claim sets another); an attempt starts only if it
  ends before the lease does, so no two workers have a notification on the wire at once.
- If a task is lost anyway (a broker without persistence), the claim's lease expires
  and the next claim loop takes the notification again.
- Inbound processing runs one worker at a time (a PostgreSQL advisory lock), oldest
  message first, so a feed's messages are applied in order; ``HL7Intake.process``
  locks each row, so a ``serve`` process processing too never applies one twice, and
  every transaction that applies stored work, in any process, waits for its turn
  (``adapter.stored_work.take_turn_applying``), so two messages about one new patient
  never both create them.
- The way back also runs one worker at a time (another advisory lock), so a hospital
  slow to answer holds one pool process, not all; each write-back and application ACK
  is moreover claimed with a lease (``FOR UPDATE SKIP LOCKED``, see
  ``adapter/writeback.py``), so no sender ever has one on the wire twice.

There is no result backend: nothing reads task results.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

from celery import Celery
from kombu import Connection

from adapter.errors import ConfigError
from adapter.settings import Settings

log = logging.getLogger(__name__)

SEND_BATCH = "adapter.dispatch.send_batch"
PROCESS_INBOUND = "adapter.inbound.process_pending"
SEND_WAY_BACK = "adapter.way_back.send_pending"


def make_celery(settings: Settings) -> Celery:
    """The Celery app for ``settings``; tasks from :mod:`adapter.tasks`."""
    url = settings.broker_url
    if not url:
        raise ConfigError("ADAPTER_BROKER_URL is not set: production mode needs amqp://... or redis://...")
    if not url.startswith(("amqp://", "amqps://", "pyamqp://", "redis://", "rediss://")):
        raise ConfigError(f"ADAPTER_BROKER_URL: use amqp:// (RabbitMQ) or redis://, not {url.split(':', 1)[0]}://")
    app = Celery("adapter", broker=url, set_as_current=False)
    transport_options: dict = {}
    if url.startswith("redis"):
        transport_options["visibility_timeout"] = settings.broker_visibility_timeout_s
    else:
        transport_options["confirm_publish"] = True  # a publish returns once the broker has it
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        result_backend=None,
        task_default_queue=settings.celery_queue,
        task_create_missing_queues=True,
        task_serializer="json",
        accept_content=["json"],
        worker_concurrency=settings.worker_concurrency,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_transport_options=transport_options,
        broker_heartbeat=10,
        # The broker redelivers a lost connection's unacknowledged tasks anyway.
        worker_cancel_long_running_tasks_on_connection_loss=True,
        enable_utc=True,
    )
    from adapter import tasks

    tasks.register(app)
    return app


def broker_status(url: str, timeout: float = 2.0) -> str:
    """``ok`` when the broker accepts a connection now; for ``/health/ready``."""
    try:
        with Connection(url, connect_timeout=timeout, transport_options={"max_retries": 0}) as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
        return "ok"
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return f"unavailable: {type(exc).__name__}"


class ClaimLoop(threading.Thread):
    """Claims due notifications and publishes them as ``send_batch`` tasks; asks a
    worker to process inbound messages when some wait. One per worker process tree
    (the Celery main process), any number per deployment."""

    def __init__(self, app: Celery, container, *, idle_s: float | None = None) -> None:  # noqa: ANN001
        super().__init__(name="claim-loop", daemon=True)
        self.app = app
        self.container = container
        self.settings: Settings = container.settings
        self.idle_s = idle_s if idle_s is not None else self.settings.worker_poll_interval_s
        self.stop_event = threading.Event()
        self._conn: Connection | None = None
        self._inbound_published = 0.0
        self._way_back_published = 0.0

    def stop(self) -> None:
        self.stop_event.set()

    def run(self) -> None:
        log.info("claim loop started", extra={"fields": {"queue": self.settings.celery_queue}})
        while not self.stop_event.is_set():
            try:
                busy = self.tick()
            except Exception:  # the database or the broker is away: try again shortly
                log.exception("claim loop round failed; retrying")
                self._drop_connection()
                busy = False
            if not busy:
                self.stop_event.wait(self.idle_s)
        self._drop_connection()

    def tick(self) -> bool:
        """One round; True when it published dispatch work (so go again at once)."""
        self._maybe_process_inbound()
        self._maybe_send_way_back()
        if self.backlog() >= self.settings.dispatch_queue_high_water:
            return False
        from adapter.db import transaction
        from adapter.scheduler import claim_due, release

        container = self.container
        now = container.clock.now()
        lease = timedelta(seconds=self.settings.claim_lease_s)
        with transaction(container.sessions) as session:
            ids = claim_due(session, now=now, limit=self.settings.claim_batch_size, lease=lease)
        if not ids:
            return False
        try:
            # With the lease's end, which tells this claim from a later one of the same ids.
            self.app.send_task(SEND_BATCH, args=(ids, (now + lease).isoformat()), queue=self.settings.celery_queue)
        except Exception:
            # Not published: give the claims back now rather than at lease expiry.
            with transaction(container.sessions) as session:
                for notification_id in ids:
                    release(session, notification_id, at=now, now=container.clock.now(), error="broker unavailable")
            raise
        return True

    def _maybe_process_inbound(self) -> None:
        if time.monotonic() - self._inbound_published < 1.0:
            return
        if not (self.container.intake.pending_ids(limit=1) or self.container.fhir.pending_ids(limit=1)):
            return
        self.app.send_task(PROCESS_INBOUND, queue=self.settings.celery_queue)
        self._inbound_published = time.monotonic()

    def _maybe_send_way_back(self) -> None:
        from adapter.webhooks import way_back_due

        if time.monotonic() - self._way_back_published < 1.0 or not way_back_due(self.container):
            return
        self.app.send_task(SEND_WAY_BACK, queue=self.settings.celery_queue)
        self._way_back_published = time.monotonic()

    def backlog(self) -> int:
        """Messages waiting in our queue (not counting those being worked on)."""
        if self._conn is None:
            self._conn = self.app.connection_for_read()
        try:
            declared = self._conn.default_channel.queue_declare(queue=self.settings.celery_queue, passive=True)
        except Exception:
            self._drop_connection()
            return 0  # not declared yet (no worker consumed) or broker away: publishing will tell
        return int(declared.message_count)

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.release()
            except Exception:  # noqa: BLE001
                pass
            self._conn = None
