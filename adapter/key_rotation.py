"""Master-key rotation without downtime, for a master key kept in a file.

The file named by ``ADAPTER_MASTER_KEY_FILE`` (default ``var/master.key``) always holds
the current key; a replaced key stays beside it as ``<file>.retired-<key id>`` and is
still accepted for unwrapping, so nothing sealed under it is ever lost.

Rotation, in this order, so that every process knows both keys before any row needs
the new one:

1. :func:`install_new_master` writes a new key into the file and keeps the old one as
   ``.retired-<id>`` (both 0600).
2. Each running adapter notices within seconds (:func:`adopt_master_key_if_changed`,
   from the housekeeping loop) and calls :meth:`Vault.rotate`: it learns the new key,
   wraps new data keys with it and rewraps what is left.
3. The rotating command waits that long, then rewraps too (idempotent) and records
   ``key_rotated`` in the audit log.

A process that meets a data key rewrapped under a key it has not adopted (a Celery
worker, which runs no housekeeping; a ``serve`` between two looks) reads that key from
the files there and then (:func:`find_master_key`), instead of failing to unwrap; and
before wrapping a new data key every process checks the file (:func:`master_key_watch`,
a ``stat``), so no key made after step 1 is wrapped under the retired master.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from adapter.db import transaction
from adapter.settings import Settings
from compliance.crypto import LocalMasterKey, RotationReport, write_secret_file
from compliance.errors import ConfigError

if TYPE_CHECKING:
    from adapter.bootstrap import Container

RETIRED_SUFFIX = ".retired-"


def master_key_path(settings: Settings) -> Path:
    if settings.master_key:
        raise ConfigError("rotation needs the master key in a file: set ADAPTER_MASTER_KEY_FILE, "
                          "not ADAPTER_MASTER_KEY")
    return Path(settings.master_key_file or settings.var_dir / "master.key")


def retired_master_keys(settings: Settings) -> list[LocalMasterKey]:
    """Keys replaced by rotation, still accepted for unwrapping."""
    if settings.master_key:
        return []
    path = master_key_path(settings)
    return [LocalMasterKey.from_file(p) for p in sorted(path.parent.glob(path.name + RETIRED_SUFFIX + "*"))]


def _key_in_file(settings: Settings) -> LocalMasterKey | None:
    """The master key in the key file; None when the key is given in the environment, or
    the file cannot be read (being rewritten, say: the next look finds it)."""
    if settings.master_key:
        return None
    try:
        return LocalMasterKey.from_file(master_key_path(settings))
    except (OSError, ConfigError, ValueError):
        return None


def master_key_watch(settings: Settings) -> Callable[[], LocalMasterKey | None]:
    """The master key in the key file now, read again only when the file changed (a
    ``stat`` otherwise): what a vault wraps new data keys with. A process that never
    looks at the file (a Celery worker mapping new patients) would otherwise wrap them
    under the retired key until it met a rewrapped one, and deleting the retired file
    after ``keys rotate`` would then lose them. None when the key is in the environment
    or the file cannot be read."""
    if settings.master_key:
        return lambda: None
    path = master_key_path(settings)
    seen: dict[tuple[int, int, int], LocalMasterKey | None] = {}

    def current() -> LocalMasterKey | None:
        try:
            stat = path.stat()
        except OSError:
            return None
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if stamp not in seen:
            seen.clear()
            seen[stamp] = _key_in_file(settings)
        return seen.get(stamp)

    return current


def find_master_key(settings: Settings, key_id: str) -> tuple[LocalMasterKey, bool] | None:
    """The master key ``key_id`` among the key file and the retired keys beside it, and
    whether it is the current one (in the file): what a process asks when it meets a
    data key rewrapped by another process's rotation before it noticed the new file
    itself (a Celery worker never looks; ``serve`` every few seconds)."""
    current = _key_in_file(settings)
    if current is None:
        return None
    if current.key_id == key_id:
        return current, True
    path = master_key_path(settings)
    retired = path.with_name(path.name + RETIRED_SUFFIX + key_id)
    if retired.exists():
        return LocalMasterKey.from_file(retired), False
    return None


def install_new_master(settings: Settings) -> tuple[LocalMasterKey, LocalMasterKey]:
    """Put a fresh key in the master key file, keeping the old one beside it; returns
    (old, new)."""
    path = master_key_path(settings)
    old = LocalMasterKey.from_file(path)
    retired = path.with_name(path.name + RETIRED_SUFFIX + old.key_id)
    write_secret_file(retired, path.read_bytes())
    fresh = LocalMasterKey.generate() + "\n"
    write_secret_file(path, fresh.encode())  # a reader sees the old key or the new one
    return old, LocalMasterKey.from_base64(fresh.strip())


def adopt_master_key_if_changed(container: Container) -> RotationReport | None:
    """When the key file holds a key this process has not rewrapped the data keys under
    yet, adopt it and rewrap (runs in every adapter's housekeeping loop; cheap when nothing
    changed). The vault may already wrap new keys with it (``Vault.rewrapped_under``)."""
    current = _key_in_file(container.settings)
    if current is None or current.key_id == container.vault.rewrapped_under:
        return None
    with transaction(container.sessions) as session:
        return container.vault.rotate(session, current)


