"""Per sending facility settings, as data in ``config/facilities.yaml``.

Hospitals differ in where they put things; these differences are configuration,
not code. Entries are keyed by MSH-4 (HD-1, the namespace id); ``default``
applies to any other sender, and every named entry inherits from ``default``
the keys it does not set.

>>> cfg = FacilityConfig.model_validate({"facilities": {"default": {}}})
>>> cfg.for_facility("ANY").start_time
['SCH-11', 'AIS-4', 'TQ1-7']
"""

from __future__ import annotations

import ipaddress
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, IPvAnyNetwork, ValidationError, field_validator,
                      model_validator)

from hl7.errors import FacilityConfigError
from hl7.mllp import Peer

StartTimeField = Literal["SCH-11", "AIS-4", "TQ1-7"]


def _month_day(value: Any) -> tuple[int, int]:
    """``"MM-DD"`` as (month, day), a day that exists in some year (``02-29`` does)."""
    if isinstance(value, str):
        month, _, day = value.partition("-")
        if len(month) == 2 and len(day) == 2 and month.isdigit() and day.isdigit():
            try:
                date(2000, int(month), int(day))
            except ValueError:
                raise ValueError(f"{value!r} is not a day of the year") from None
            return int(month), int(day)
    raise ValueError(f"{value!r}: write the day as MM-DD, e.g. '06-29'")


MonthDay = Annotated[tuple[int, int], BeforeValidator(_month_day)]


class PatientKeyRule(BaseModel):
    """Picks one PID-3 repetition (CX): by identifier type code (CX-5, HL7
    table 0203: ``MR``, ``NN``, ``NNITA``...) and/or by assigning authority
    (CX-4, namespace id or universal id: ``NNITA``, ``MEF``, ``2.16.840.1...``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    identifier_type: str | None = None
    assigning_authority: str | None = None

    @model_validator(mode="after")
    def _one_criterion(self) -> PatientKeyRule:
        if not (self.identifier_type or self.assigning_authority):
            raise ValueError("set identifier_type, assigning_authority or both")
        return self


class SenderRule(BaseModel):
    """One way a facility's messages may arrive; every field set must match.

    >>> rule = SenderRule(address="10.20.0.0/16", certificate="cup.sanluca.example")
    >>> rule.admits(Peer("10.20.3.4", frozenset({"cup.sanluca.example"})))
    True
    >>> rule.admits(Peer("10.20.3.4"))  # no client certificate
    False
    >>> SenderRule(address="10.20.3.4").admits(Peer("::ffff:10.20.3.4"))  # IPv4 on a dual-stack socket
    True
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: IPvAnyNetwork | None = None
    """The peer's address, or the network it is in (``10.20.0.0/16``)."""
    certificate: str | None = None
    """MLLP with mutual TLS: a DNS name or the common name of the client certificate."""
    token: str | None = None
    """HTTP ``POST /hl7/v2``: the name of the API token (``tokens create --name``)."""

    @model_validator(mode="after")
    def _one_criterion(self) -> SenderRule:
        if self.address is None and not self.certificate and not self.token:
            raise ValueError("set address, certificate, token or several of them")
        return self

    def admits(self, peer: Peer) -> bool:
        if self.token and peer.token != self.token:
            return False
        if self.certificate and self.certificate not in peer.certificate_names:
            return False
        if self.address is not None:
            try:
                address = ipaddress.ip_address(peer.address)
            except ValueError:
                return False
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                address = address.ipv4_mapped
            if address not in self.address:
                return False
        return True


class WritebackEndpoint(BaseModel):
    """The hospital's MLLP listener for messages we send back."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str
    port: int = Field(ge=1, le=65535)
    tls: bool = False


class FacilityRule(BaseModel):
    """How to read one sender's messages."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    patient_key: list[PatientKeyRule] = Field(
        default_factory=lambda: [PatientKeyRule(identifier_type="MR"), PatientKeyRule(identifier_type="PI")],
        min_length=1,
    )
    """PID-3 repetitions to use as the patient key, tried in order. By default the sender's own
    record number: MR, else PI (the patient identifier IHE PAM/PIX senders write)."""
    start_time: list[StartTimeField] = Field(default_factory=lambda: ["SCH-11", "AIS-4", "TQ1-7"], min_length=1)
    """Where the appointment start is, tried in order (SCH-11.4 TQ start, AIS-4 of the earliest
    AIS, TQ1-7)."""
    appointment_id: Literal["filler", "placer"] = "filler"
    """Which id names an appointment: SCH-2 filler (falls back to SCH-1) or SCH-1 placer
    (falls back to SCH-2)."""
    timezone: str = "Europe/Rome"
    """For timestamps sent without a UTC offset."""
    ack_timing: Literal["stored", "processed"] = "stored"
    """Original mode: AA once stored (mapping errors go to the error store) or after mapping."""
    cancellation_writeback: Literal["SRM^S04", "SIU^S15", "none"] = "none"
    """What we send back when a patient cancels by reply."""
    writeback: WritebackEndpoint | None = None
    phone_region: str = "IT"
    """Region for phone numbers written without a country code."""
    validate_with_hl7apy: bool = False
    """Validate structure with hl7apy before mapping: about 100 messages/s (hl7/PARSING.md)."""
    null_deletes: bool = True
    """The HL7 null ``""`` (v2.5 §2.5.3) deletes the names, language and contacts held. False
    for a sender that writes ``""`` for every value it lacks: its ``""`` then reads as not
    sent, and what the adapter holds stays."""
    processing_ids: list[Literal["P", "T", "D"]] = Field(default_factory=lambda: ["P"], min_length=1)
    """MSH-11 values taken (P production, T training, D debugging; an empty MSH-11 reads
    as P). Any other is answered AR, error 202, and not stored (HL7 v2.5 §2.9.2): a test
    system's feed pointed at this adapter must not message real patients."""
    senders: list[SenderRule] = Field(default_factory=list)
    """Where this facility's messages may come from (empty: from any connection the
    listener takes). A message whose MSH-4 names the facility from any other peer is
    answered AR (error 207) and not stored: one hospital's interface cannot send as
    another, nor can a machine that merely reaches the port."""
    local_holidays: list[MonthDay] = Field(default_factory=list)
    """Days the facility's clinics close besides the national holidays, as ``MM-DD``: the
    city's patron saint (Rome ``06-29``, Milan ``12-07``). Non-urgent messages about what
    it sent do not go out on them."""

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def admits(self, peer: Peer | None) -> bool:
        """Whether a message naming this facility may come from ``peer`` (``None``: unknown)."""
        return not self.senders or (peer is not None and any(rule.admits(peer) for rule in self.senders))


class FacilityConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    facilities: dict[str, FacilityRule]

    @model_validator(mode="before")
    @classmethod
    def _inherit_default(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("facilities"), dict):
            return data
        entries = data["facilities"]
        if "default" not in entries:
            raise ValueError("facilities.default is required")
        base = entries["default"] or {}
        merged = {
            name: (
                {**base, **(entry or {})}
                if name != "default" and isinstance(entry, dict) and isinstance(base, dict)
                else entry if entry is not None else {}
            )
            for name, entry in entries.items()
        }
        return {**data, "facilities": merged}

    def for_facility(self, facility: str) -> FacilityRule:
        """The rule for an MSH-4 namespace id, or ``default``."""
        return self.facilities.get(facility) or self.facilities["default"]

    def local_holidays(self) -> dict[str, frozenset[tuple[int, int]]]:
        """Each entry's local holidays (``default``'s for any other sender)."""
        return {name: frozenset(rule.local_holidays) for name, rule in self.facilities.items()}


def facility_of(sender: str) -> str:
    """The sending facility (MSH-4 namespace id) of a sender as
    :attr:`hl7.header.MessageHeader.sender` writes it, ``MSH-3^MSH-4``.

    >>> facility_of("CUP^OSP_SLUCA")
    'OSP_SLUCA'
    """
    return sender.partition("^")[2]


def load_facilities(path: str | Path) -> FacilityConfig:
    """Read and validate a facilities file. Raises ``FacilityConfigError``
    naming the file and the field at fault."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise FacilityConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise FacilityConfigError(f"{path}: not valid YAML: {exc}") from None
    try:
        return FacilityConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise FacilityConfigError(f"{path}: {problems}") from None


def default_facilities() -> FacilityConfig:
    """Only the ``default`` entry, with every setting at its default."""
    return FacilityConfig.model_validate({"facilities": {"default": {}}})
