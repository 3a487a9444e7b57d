"""WhatsApp through the adapter: approved templates outside the 24-hour window,
free text inside it (WhatsApp Cloud API rules), against a fake Cloud API."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from channels.fakes import FakeWhatsApp
from tests.core.test_end_to_end import FHIR, appointment, notifications, patient, wait_for
from tests.harness import running_adapter, settings_for


def test_outside_the_window_whatsapp_gets_the_approved_template_and_inside_it_free_text(tmp_path):
    with FakeWhatsApp(approved_templates={"booking_confirmation", "reschedule_notice"}) as fake:
        settings = settings_for(
            tmp_path, channels=["whatsapp"], whatsapp_api_base=fake.base_url,
            whatsapp_phone_number_id=fake.phone_number_id, whatsapp_token=fake.access_token,
            whatsapp_app_secret=fake.app_secret, whatsapp_verify_token="verify-me",
        )
        with running_adapter(settings) as adapter:
            ehr, officer = adapter.client("ehr"), adapter.client("officer")
            ehr.put("/fhir/R4/Patient/w1", json=patient("w1"), headers=FHIR).raise_for_status()
            start = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
            ehr.put("/fhir/R4/Appointment/wa1", json=appointment("wa1", "w1", start), headers=FHIR).raise_for_status()
            wait_for(lambda: len(fake.messages) == 1)
            (first,) = fake.messages.values()
            assert first.kind == "template" and first.template["name"] == "booking_confirmation"
            assert first.template["language"]["code"] == "it"
            params = [p["text"] for p in first.template["components"][0]["parameters"]]
            assert params[0] == "Nicolò" and "alle" in params[2]

            # The patient writes: the 24-hour customer-service window opens.
            response = asyncio.run(fake.post_inbound("+393331234567", "grazie", url=f"{adapter.base_url}/webhooks/whatsapp/inbound"))
            assert response.status_code == 200
            moved = start + timedelta(days=1)
            ehr.put("/fhir/R4/Appointment/wa1", json=appointment("wa1", "w1", moved), headers=FHIR).raise_for_status()
            wait_for(lambda: len(fake.messages) == 2)
            second = [m for m in fake.messages.values() if m is not first][0]
            assert second.kind == "text" and "spostato" in second.text
            # Recorded once the provider has answered, just after the fake counted it.
            wait_for(lambda: {i["status"] for i in notifications(officer)
                              if i["kind"] in ("booking_confirmation", "reschedule_notice")} == {"sent"})


def test_a_payment_reminder_outside_the_window_goes_as_the_approved_template_with_the_amount(tmp_path):
    from adapter.clock import FrozenClock
    from tests.core.test_payment_reminders import FIRST, NOW, invoice

    with FakeWhatsApp(approved_templates={"payment_reminder"}) as fake:
        settings = settings_for(
            tmp_path, channels=["whatsapp"], whatsapp_api_base=fake.base_url,
            whatsapp_phone_number_id=fake.phone_number_id, whatsapp_token=fake.access_token,
            whatsapp_app_secret=fake.app_secret, whatsapp_verify_token="verify-me",
        )
        clock = FrozenClock(NOW)
        with running_adapter(settings, clock=clock) as adapter:
            ehr = adapter.client("ehr")
            ehr.put("/fhir/R4/Patient/w1", json=patient("w1"), headers=FHIR).raise_for_status()
            ehr.put("/fhir/R4/Invoice/i1", json=invoice("i1", "w1"), headers=FHIR).raise_for_status()
            adapter.fhir_processed()
            clock.set(FIRST)
            wait_for(lambda: len(fake.messages) == 1)
            (sent,) = fake.messages.values()
            assert sent.kind == "template" and sent.template["name"] == "payment_reminder"
            params = [p["text"] for p in sent.template["components"][0]["parameters"]]
            assert params[0] == "Nicolò" and params[2].replace("\xa0", " ") == "35,00 €"
