"""The Italian rules for report notices, end to end (Garante, referti on-line, 2009; DPCM
8 Aug 2013): consent to online delivery first, excluded results never, no clinical field
in a notice template (refused at start-up)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime

import pytest

from adapter.errors import ConfigError
from adapter.settings import CONFIG_DIR
from tests.core.test_compliance_surfaces import internal_id, rich_patient
from tests.core.test_end_to_end import FHIR, notifications, outbox_count, wait_for
from tests.harness import migrated_container, running_adapter, settings_for


def report(rid: str, pid: str, code: str, display: str) -> dict:
    return {"resourceType": "DiagnosticReport", "id": rid, "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
            "subject": {"reference": f"Patient/{pid}"},
            "issued": datetime.now(UTC).isoformat()}


def report_notices(officer, patient: str) -> list[dict]:
    return [n for n in notifications(officer, patient=patient) if n["kind"] == "report_ready"]


def test_a_report_notice_is_sent_only_after_explicit_consent_to_online_delivery(tmp_path):
    with running_adapter(settings_for(tmp_path)) as adapter:
        ehr, officer = adapter.client("ehr"), adapter.client("officer")
        ehr.put("/fhir/R4/Patient/p1", json=rich_patient("p1"), headers=FHIR).raise_for_status()
        adapter.fhir_processed()
        patient = internal_id(adapter, "p1")

        ehr.put("/fhir/R4/DiagnosticReport/r1", json=report("r1", "p1", "58410-2", "CBC panel"), headers=FHIR).raise_for_status()
        first = wait_for(lambda: report_notices(officer, patient))
        assert [n["status"] for n in first] == ["suppressed"]
        assert "consent" in first[0]["reason"]
        assert outbox_count(adapter) == 0

        officer.post("/api/consents", json={"patient": patient, "purpose": "report_notice", "decision": "permit"}).raise_for_status()
        ehr.put("/fhir/R4/DiagnosticReport/r2", json=report("r2", "p1", "58410-2", "CBC panel"), headers=FHIR).raise_for_status()
        wait_for(lambda: [n for n in report_notices(officer, patient) if n["status"] == "sent"])
        exported = officer.get(f"/api/patients/{patient}/export").json()
        bodies = [m["body"] for m in exported["messages_sent_in_sandbox"]]
        assert len(bodies) == 1
        assert "CBC" not in bodies[0] and "58410" not in bodies[0]  # never the kind of exam


@pytest.mark.parametrize("code,display", [("7917-8", "HIV 1 Ab"), ("51969-4", "Genetic analysis report")])
def test_an_excluded_result_never_produces_a_notice_even_with_consent(tmp_path, code, display):
    with running_adapter(settings_for(tmp_path)) as adapter:
        ehr, officer = adapter.client("ehr"), adapter.client("officer")
        ehr.put("/fhir/R4/Patient/p2", json=rich_patient("p2"), headers=FHIR).raise_for_status()
        adapter.fhir_processed()
        patient = internal_id(adapter, "p2")
        officer.post("/api/consents", json={"patient": patient, "purpose": "report_notice", "decision": "permit"}).raise_for_status()

        ehr.put("/fhir/R4/DiagnosticReport/r3", json=report("r3", "p2", code, display), headers=FHIR).raise_for_status()

        notices = wait_for(lambda: report_notices(officer, patient))
        assert all(n["status"] == "suppressed" for n in notices)
        assert outbox_count(adapter) == 0


def test_a_notice_template_naming_a_clinical_field_is_refused_at_start_up(tmp_path):
    config = tmp_path / "config"
    shutil.copytree(CONFIG_DIR, config)
    template = config / "templates" / "it" / "report_ready.txt.j2"
    template.write_text(template.read_text() + "Esito: {{ report.result }}\n")
    settings = settings_for(tmp_path, config_dir=config)

    with pytest.raises(ConfigError) as refused:
        migrated_container(settings)

    assert "it/report_ready" in str(refused.value) and "report.result" in str(refused.value)


def test_a_report_final_again_after_a_preliminary_version_is_announced_once(tmp_path):
    """final → preliminary → final (a report reopened and signed again): the patient was
    told when it was first final; a second "your report is ready" would be a duplicate.
    (An amended report is announced again: that is its own, switchable, notice.)"""
    with running_adapter(settings_for(tmp_path)) as adapter:
        ehr, officer = adapter.client("ehr"), adapter.client("officer")
        ehr.put("/fhir/R4/Patient/p5", json=rich_patient("p5"), headers=FHIR).raise_for_status()
        adapter.fhir_processed()
        patient = internal_id(adapter, "p5")
        officer.post("/api/consents", json={"patient": patient, "purpose": "report_notice", "decision": "permit"}).raise_for_status()
        final = report("r5", "p5", "58410-2", "CBC panel")
        for status in ("final", "preliminary", "final"):
            ehr.put("/fhir/R4/DiagnosticReport/r5", json={**final, "status": status}, headers=FHIR).raise_for_status()
            adapter.fhir_processed()
        wait_for(lambda: [n for n in report_notices(officer, patient) if n["status"] == "sent"])
        adapter.fhir_processed()
        live = [n for n in report_notices(officer, patient) if n["status"] not in ("cancelled", "suppressed")]
        assert len(live) == 1, live
