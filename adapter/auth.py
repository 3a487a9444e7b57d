"""API tokens: random bearer tokens, stored only as SHA-256 hashes, each with a role.

Roles (INTERFACES.md): ``ehr`` pushes data, ``officer`` reads audit, notifications
and consent and runs exports, ``admin`` may do everything.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from adapter.db import hold_until_commit
from adapter.models import ApiToken

Role = Literal["ehr", "officer", "admin"]
ROLES: tuple[Role, ...] = ("ehr", "officer", "admin")
TOKEN_PREFIX = "adp_"


@dataclass(frozen=True)
class Principal:
    token_id: int
    name: str
    role: Role

    def may(self, *roles: Role) -> bool:
        return self.role == "admin" or self.role in roles


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, *, role: Role, name: str, now: datetime) -> str:
    """A new token; the plaintext is returned once and never stored."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; choose one of {', '.join(ROLES)}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(name=name[:80], role=role, token_hash=hash_token(token), created_at=now))
    session.flush()
    return token


def authenticate(session: Session, token: str) -> Principal | None:
    row = session.scalar(
        select(ApiToken).where(ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_(None))
    )
    return None if row is None else Principal(row.id, row.name, row.role)  # type: ignore[arg-type]


def has_tokens(session: Session) -> bool:
    return session.scalar(select(ApiToken.id).limit(1)) is not None


def create_first_admin_token(session: Session, *, now: datetime) -> str | None:
    """An admin token when there is no token at all yet (a new database), else None.
    Several ``serve`` processes starting together on a new database take turns here,
    so one of them makes it; the others find it when their turn comes."""
    hold_until_commit(session, "adapter.auth.first_admin_token")
    if has_tokens(session):
        return None
    return create_token(session, role="admin", name="local-admin", now=now)
