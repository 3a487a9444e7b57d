"""Fake providers of the same shape as the real ones, for tests and benchmarks.

Each HTTP fake is a small FastAPI app (``fake.app``) with the provider's paths, auth,
signatures and error modes; ``fake.start()`` serves it on 127.0.0.1 (or use
:func:`start_fake` on any app) and ``fake.deliveries`` counts deliveries per idempotency
key, so a test can prove exactly-once. :class:`FakeSmtp` is an aiosmtpd server requiring
STARTTLS.
"""

from channels.fakes._faults import FakeProvider, Fault
from channels.fakes._server import start_fake
from channels.fakes.smtp import FakeSmtp, self_signed_certificate
from channels.fakes.telegram import FakeTelegram
from channels.fakes.twilio import FakeTwilio
from channels.fakes.whatsapp import FakeWhatsApp

__all__ = [
    "FakeProvider",
    "FakeSmtp",
    "FakeTelegram",
    "FakeTwilio",
    "FakeWhatsApp",
    "Fault",
    "self_signed_certificate",
    "start_fake",
]
