"""Compliance commands (INTERFACES.md): ``audit verify|export|sign``, ``keys rotate``,
``gdpr export|erase``. Each one audits itself as the ``cli`` actor."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Annotated

import typer
from rich.console import Console


def parse_since(text: str) -> datetime:
    """``--since`` as an officer types it (compliance.audit_export.parse_since, imported
    when a command runs: every CLI command imports this module, few need compliance)."""
    from compliance.audit_export import parse_since as parse

    return parse(text)

console = Console()
err = Console(stderr=True)
CLI_ACTOR = "cli"

audit_app = typer.Typer(no_args_is_help=True, rich_markup_mode="markdown", help="The tamper-evident audit log: verify, export, sign.")
keys_app = typer.Typer(no_args_is_help=True, rich_markup_mode="markdown", help="Encryption keys.")
gdpr_app = typer.Typer(no_args_is_help=True, rich_markup_mode="markdown", help="Data-subject rights: export (art. 15, 20) and erasure (art. 17).")


def _container():
    from adapter.cli import _container as build

    return build()


@audit_app.command("verify")
def audit_verify() -> None:
    """Check every entry, stored tree node and signed tree head. Exit 0 only when the log
    is intact; otherwise print what was changed (modified, deleted, inserted, reordered)
    and where, and exit 1."""
    from adapter.compliance_api import record_verification, verify_view
    from adapter.db import transaction

    container = _container()
    with transaction(container.sessions) as session:
        report = container.audit.verify(session)
        record_verification(container.audit, session, report, actor=CLI_ACTOR, now=container.clock.now())
    view = verify_view(report)
    if report.ok:
        console.print(f"audit log intact: {report.entries} entries, {report.heads_checked} signed heads checked, "
                      f"{report.unsigned_tail} entries after the last signed head")
        raise typer.Exit(0)
    err.print(f"[red]audit log NOT intact[/red]: {len(report.problems)} problems, first at entry {view['first_bad_seq']}")
    for problem in report.problems:
        where = f"entry {problem.seq}" if problem.last_seq is None else f"entries {problem.seq}..{problem.last_seq}"
        err.print(f"  {problem.kind} at {where}: {problem.detail}")
    raise typer.Exit(1)


@audit_app.command("export")
def audit_export(
    since: Annotated[datetime, typer.Option(parser=parse_since, metavar="DATE",
                                            help="entries at or after this date or time, e.g. 2026-11-28 or "
                                                 "2026-11-28T10:00:00+01:00 (UTC unless an offset is given)")],
    format: Annotated[str, typer.Option(help="jsonl, or fhir for FHIR AuditEvent (IHE BALP) lines")] = "jsonl",  # noqa: A002
) -> None:
    """Print audit entries since DATE, one JSON document a line, oldest first."""
    from adapter.db import transaction

    if format not in ("jsonl", "fhir"):
        err.print("[red]--format must be jsonl or fhir[/red]")
        raise typer.Exit(2)
    container = _container()
    with transaction(container.sessions) as session:
        count = 0
        for line in container.audit.export(session, since, format):
            print(line)
            count += 1
        container.audit.append(session, action="audit_read", actor=CLI_ACTOR, subject_pseudonym="",
                               reason=f"audit export ({format})", details={"entries": count},
                               at=container.clock.now())


@audit_app.command("sign")
def audit_sign() -> None:
    """Sign a tree head now (the adapter also signs one every minute while entries arrive)."""
    from adapter.db import transaction
    from compliance.errors import AuditIntegrityError

    container = _container()
    try:
        with transaction(container.sessions) as session:
            head = container.audit.sign_tree_head(session, container.clock.now())
    except AuditIntegrityError as exc:
        err.print(f"[red]not signed[/red]: {exc}; run `audit verify`")
        raise typer.Exit(1) from exc
    console.print(f"signed tree head: size {head.tree_size}, root {head.root_hash.hex()}, key {head.key_id}")


@keys_app.command("rotate")
def keys_rotate(
    grace: Annotated[float, typer.Option(help="seconds running adapters get to adopt the new key first")] = 10.0,
) -> None:
    """Rotate the master key that wraps every patient's data key, without downtime.

    Where the new key goes: into the file named by ADAPTER_MASTER_KEY_FILE
    (default var/master.key), replacing the old key, which is kept beside it
    as `<file>.retired-<key id>` and still accepted for reading.

    Running adapters notice the new file within seconds and start wrapping
    with it; after --grace seconds this command rewraps every data key (the
    data itself is not re-encrypted) and records key_rotated in the audit log.

    Back up the new key file now. Delete the retired one only when no backup
    made before the rotation is kept. Needs the key in a file, not in
    ADAPTER_MASTER_KEY."""
    from adapter.db import transaction
    from adapter.key_rotation import install_new_master
    from compliance.errors import ConfigError

    container = _container()
    try:
        old, new = install_new_master(container.settings)
    except ConfigError as exc:
        err.print(f"[red]cannot rotate[/red]: {exc}")
        raise typer.Exit(2) from exc
    console.print(f"new master key {new.key_id} installed; old key {old.key_id} retired, still readable")
    time.sleep(max(0.0, grace))
    with transaction(container.sessions) as session:
        report = container.vault.rotate(session, new)
        container.audit.append(session, action="key_rotated", actor=CLI_ACTOR, subject_pseudonym="",
                               reason="master key rotated",
                               details={"old_key": old.key_id, "new_key": new.key_id, "rewrapped": report.rewrapped,
                                        "already_current": report.already_current},
                               at=container.clock.now())
    console.print(f"rewrapped {report.rewrapped} data keys ({report.already_current} already under the new key, "
                  f"{report.destroyed_skipped} destroyed)")


PATIENT_HELP = "the patient: their internal id, or what --by names"
BY_HELP = ("id (the internal id, default); identifier: system|value as the hospital sends it "
           "(HL7 assigning authority|ID, e.g. OSP_DEMO|DEMO001; FHIR Identifier system|value) or a FHIR "
           "Patient id; phone: a number of theirs, as dialled")


def _check_by(by: str) -> None:
    if by not in ("id", "identifier", "phone"):
        err.print("[red]--by must be id, identifier or phone[/red]")
        raise typer.Exit(2)


@gdpr_app.command("export")
def gdpr_export(
    patient: Annotated[str, typer.Argument(help=PATIENT_HELP)],
    format: Annotated[str, typer.Option(help="json, or fhir for a FHIR Bundle")] = "json",  # noqa: A002
    by: Annotated[str, typer.Option(help=BY_HELP)] = "id",
) -> None:
    """Print everything held on the patient, decrypted (audited `exported`)."""
    from adapter import subject_rights as rights
    from adapter.db import transaction

    if format not in ("json", "fhir"):
        err.print("[red]--format must be json or fhir[/red]")
        raise typer.Exit(2)
    _check_by(by)
    container = _container()
    try:
        with transaction(container.sessions) as session:
            patient_id = rights.patient_id_by(session, container, patient, by=by)  # type: ignore[arg-type]
            data = rights.export_patient(session, container, patient_id, actor=CLI_ACTOR, now=container.clock.now(),
                                         fmt=format)
    except rights.UnknownPatient as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    print(json.dumps(rights.export_bundle(data) if format == "fhir" else data, indent=2, ensure_ascii=False))


@gdpr_app.command("erase")
def gdpr_erase(
    patient: Annotated[str, typer.Argument(help=PATIENT_HELP)],
    yes: Annotated[bool, typer.Option("--yes", help="do not ask for confirmation")] = False,
    by: Annotated[str, typer.Option(help=BY_HELP)] = "id",
) -> None:
    """Erase the patient: destroy their data keys and delete their rows; the audit log
    keeps its pseudonymous entries and still verifies (audited `erased`)."""
    from adapter import subject_rights as rights
    from adapter.db import transaction

    _check_by(by)
    container = _container()
    try:
        with transaction(container.sessions) as session:
            patient_id = rights.patient_id_by(session, container, patient, by=by)  # type: ignore[arg-type]
    except rights.UnknownPatient as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    if not yes and not typer.confirm(f"erase patient {patient_id} for good?"):
        raise typer.Exit(1)
    try:
        with transaction(container.sessions) as session:
            report = rights.erase_patient(session, container, patient_id, actor=CLI_ACTOR, now=container.clock.now())
    except rights.UnknownPatient as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    console.print(f"erased {patient_id}: {report.keys_destroyed} keys destroyed, rows deleted: "
                  + ", ".join(f"{k} {v}" for k, v in sorted(report.rows_deleted.items())))
    for kept in report.kept:
        console.print(f"kept: {kept}")
