"""The console's words, in Italian and English. A missing key shows as itself, so a
gap is visible on the page rather than an error."""

from __future__ import annotations

from collections.abc import Callable

LANGUAGES = ("it", "en")

TEXT: dict[str, dict[str, str]] = {
    "it": {
        "title": "Console per il responsabile della protezione dei dati",
        "login": "Accedi", "logout": "Esci", "token": "Token di accesso",
        "login_hint": "Incolli un token con ruolo officer o admin.",
        "login_failed": "Token non valido.", "login_role": "Questo token non ha il ruolo officer o admin.",
        "home": "Ricerca", "audit": "Registro di audit", "find_patient": "Trova un paziente",
        "silent_subscriptions": "Sottoscrizioni FHIR silenziose (nessun heartbeat né evento nel periodo atteso)",
        "by_id": "ID interno", "by_phone": "Telefono", "by_identifier": "Identificativo (sistema|valore)",
        "search": "Cerca", "not_found": "Nessun paziente trovato.",
        "erased": "Paziente cancellato: chiavi distrutte, dati eliminati.",
        "patient": "Paziente", "notifications": "Notifiche", "no_notifications": "Nessuna notifica.",
        "kind": "Tipo", "status": "Stato", "scheduled_for": "Programmata per", "channel": "Canale",
        "reason": "Motivo", "why": "Perché", "consents": "Storico dei consensi", "no_consents": "Nessun consenso registrato.",
        "purpose": "Finalità", "decision": "Decisione", "source": "Fonte", "recorded_at": "Registrato il",
        "recorded_by": "Registrato da", "record_consent": "Registra un consenso", "permit": "consente", "deny": "nega",
        "consent_recorded": "Consenso registrato.", "any": "qualsiasi",
        "export": "Esportazione (art. 15, 20)", "export_json": "Scarica JSON", "export_fhir": "Scarica Bundle FHIR",
        "erase": "Cancellazione (art. 17)", "erase_hint": "Scriva l'ID del paziente per confermare. Irreversibile.",
        "erase_button": "Cancella il paziente", "why_title": "Perché questa notifica",
        "event": "Evento", "rule": "Regola", "consent_record": "Record di consenso", "lawful_basis": "Base giuridica",
        "template": "Modello", "decision_record": "Record della decisione",
        "verification": "Verifica dell'integrità", "intact": "Integro", "not_intact": "NON integro",
        "entries": "voci", "signed_heads": "tree head firmate", "unsigned_tail": "voci dopo l'ultima firma",
        "problems": "Problemi", "where": "Dove", "seq": "N.", "at": "Quando", "action": "Azione",
        "actor": "Attore", "subject": "Soggetto", "outcome": "Esito", "next": "Successive", "previous": "Precedenti",
        "last_head": "Ultima tree head firmata", "filter_patient": "Filtra per paziente (ID interno)",
        "filter": "Filtra", "language": "Lingua", "forbidden": "Operazione non consentita per il suo ruolo.",
    },
    "en": {
        "title": "Compliance officer console",
        "login": "Log in", "logout": "Log out", "token": "Access token",
        "login_hint": "Paste a token with the officer or admin role.",
        "login_failed": "That token is not valid.", "login_role": "This token does not have the officer or admin role.",
        "home": "Search", "audit": "Audit trail", "find_patient": "Find a patient",
        "silent_subscriptions": "Silent FHIR subscriptions (no heartbeat or event within the expected period)",
        "by_id": "Internal id", "by_phone": "Phone", "by_identifier": "Identifier (system|value)",
        "search": "Search", "not_found": "No patient found.",
        "erased": "Patient erased: keys destroyed, data deleted.",
        "patient": "Patient", "notifications": "Notifications", "no_notifications": "No notifications.",
        "kind": "Kind", "status": "Status", "scheduled_for": "Scheduled for", "channel": "Channel",
        "reason": "Reason", "why": "Why", "consents": "Consent history", "no_consents": "No consent recorded.",
        "purpose": "Purpose", "decision": "Decision", "source": "Source", "recorded_at": "Recorded at",
        "recorded_by": "Recorded by", "record_consent": "Record a consent", "permit": "permit", "deny": "deny",
        "consent_recorded": "Consent recorded.", "any": "any",
        "export": "Export (art. 15, 20)", "export_json": "Download JSON", "export_fhir": "Download FHIR Bundle",
        "erase": "Erasure (art. 17)", "erase_hint": "Type the patient's id to confirm. This cannot be undone.",
        "erase_button": "Erase the patient", "why_title": "Why this notification",
        "event": "Event", "rule": "Rule", "consent_record": "Consent record", "lawful_basis": "Lawful basis",
        "template": "Template", "decision_record": "Decision record",
        "verification": "Integrity check", "intact": "Intact", "not_intact": "NOT intact",
        "entries": "entries", "signed_heads": "signed tree heads", "unsigned_tail": "entries after the last signature",
        "problems": "Problems", "where": "Where", "seq": "No.", "at": "At", "action": "Action",
        "actor": "Actor", "subject": "Subject", "outcome": "Outcome", "next": "Next", "previous": "Previous",
        "last_head": "Last signed tree head", "filter_patient": "Filter by patient (internal id)",
        "filter": "Filter", "language": "Language", "forbidden": "Your role may not do this.",
    },
}


def text_for(lang: str) -> Callable[[str], str]:
    table = TEXT.get(lang, TEXT["en"])
    return lambda key: table.get(key, key)
