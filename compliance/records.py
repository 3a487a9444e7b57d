"""The record of processing activities (GDPR art. 30(1)) and retention cut-offs, generated
from ``config/purposes.yaml`` so the record and the running system can't drift apart."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from compliance.purposes import CompliancePolicy


@dataclass(frozen=True)
class ProcessingActivity:
    purpose: str
    description: str
    lawful_basis: str
    articles: str
    explicit_consent: bool
    message_kinds: list[str]


@dataclass(frozen=True)
class RecordOfProcessing:
    controller: str
    dpo_contact: str
    activities: list[ProcessingActivity]
    data_subjects: list[str]
    data_categories: list[dict[str, str]]
    special_categories: str
    recipients: dict[str, str]
    transfers: str
    retention: dict[str, int]
    security_measures: list[str]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False)

    def to_markdown(self) -> str:
        lines = ["# Record of processing activities (GDPR art. 30)", "",
                 f"- **Controller:** {self.controller}", f"- **DPO:** {self.dpo_contact}",
                 f"- **Data subjects:** {'; '.join(self.data_subjects)}",
                 f"- **Special categories:** {self.special_categories}", "",
                 "## Purposes and lawful bases", "",
                 "| purpose | what | lawful basis | references | explicit consent | message kinds |",
                 "|---|---|---|---|---|---|"]
        for a in self.activities:
            lines.append(f"| {a.purpose} | {a.description} | {a.lawful_basis} | {a.articles} | "
                         f"{'yes' if a.explicit_consent else 'no'} | {', '.join(a.message_kinds) or '-'} |")
        lines += ["", "## Categories of personal data", ""]
        lines += [f"- **{k}:** {v}" for c in self.data_categories for k, v in c.items()]
        lines += ["", "## Recipients (channels)", ""]
        lines += [f"- **{k}:** {v}" for k, v in self.recipients.items()]
        lines += ["", f"**Transfers outside the EEA:** {self.transfers}", "", "## Retention", ""]
        lines += [f"- {k.replace('_', ' ')}: {v}" for k, v in self.retention.items()]
        lines += ["", "## Security measures (art. 32)", ""]
        lines += [f"- {m}" for m in self.security_measures]
        return "\n".join(lines) + "\n"


def record_of_processing(policy: CompliancePolicy, *, channels: list[str] | None = None) -> RecordOfProcessing:
    """``channels``: the channels enabled in settings; recipients are limited to them."""
    p = policy.processing
    activities = [
        ProcessingActivity(name, purpose.description, purpose.lawful_basis, purpose.articles,
                           purpose.explicit_consent, sorted(k for k, v in policy.kinds.items() if v == name))
        for name, purpose in policy.purposes.items()
    ]
    recipients = {k: v for k, v in p.recipients.items() if channels is None or k in channels}
    return RecordOfProcessing(
        controller=p.controller, dpo_contact=p.dpo_contact, activities=activities,
        data_subjects=p.data_subjects, data_categories=p.data_categories,
        special_categories=p.special_categories, recipients=recipients, transfers=p.transfers,
        retention=policy.retention.model_dump(), security_measures=p.security_measures,
    )


@dataclass(frozen=True)
class RetentionCutoffs:
    """Rows older than these instants are due for purging by the scheduled retention job."""

    inbound_raw_before: datetime
    sent_body_before: datetime
    notification_before: datetime
    settled_invoice_before: datetime


def retention_cutoffs(policy: CompliancePolicy, now: datetime) -> RetentionCutoffs:
    r = policy.retention
    return RetentionCutoffs(now - timedelta(days=r.inbound_raw_days), now - timedelta(days=r.sent_body_days),
                            now - timedelta(days=r.notification_days), now - timedelta(days=r.settled_invoice_days))
