"""Ed25519 (RFC 8032) signatures over audit tree heads.

What is signed is RFC 6962 §3.5's ``TreeHeadSignature``::

    version v1 (0) | signature_type tree_hash (1) | uint64 timestamp (ms) | uint64 tree_size
    | sha256_root_hash (32 bytes)
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from compliance.crypto import write_secret_file

_TREE_HEAD = struct.Struct(">BBQQ")


def tree_head_bytes(tree_size: int, timestamp_ms: int, root_hash: bytes) -> bytes:
    return _TREE_HEAD.pack(0, 1, timestamp_ms, tree_size) + root_hash


def public_key_id(public: Ed25519PublicKey) -> str:
    """First 16 hex digits of SHA-256 over the raw 32-byte public key."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class AuditSigner:
    """Signs tree heads; the private key never leaves this object."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private = private_key
        self.public_key = private_key.public_key()
        self.key_id = public_key_id(self.public_key)

    @classmethod
    def generate(cls) -> AuditSigner:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_file(cls, path: Path) -> AuditSigner:
        """Loads a PKCS#8 PEM key; creates it (mode 0600) on first use."""
        path = Path(path)
        if not path.exists():
            private = Ed25519PrivateKey.generate()
            pem = private.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
            try:
                write_secret_file(path, pem, exclusive=True)
                return cls(private)
            except FileExistsError:
                pass  # made meanwhile by another process: use theirs
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path}: not an Ed25519 private key") from None
        return cls(key)

    def public_key_pem(self) -> str:
        """The public key (SubjectPublicKeyInfo PEM) for officers and external verifiers."""
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()

    def sign(self, tree_size: int, timestamp_ms: int, root_hash: bytes) -> bytes:
        return self._private.sign(tree_head_bytes(tree_size, timestamp_ms, root_hash))


def verify_tree_head(
    public: Ed25519PublicKey, tree_size: int, timestamp_ms: int, root_hash: bytes, signature: bytes
) -> bool:
    try:
        public.verify(signature, tree_head_bytes(tree_size, timestamp_ms, root_hash))
    except InvalidSignature:
        return False
    return True


def load_public_key(pem: str) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(pem.encode())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key
