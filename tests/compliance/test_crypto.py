from __future__ import annotations

import base64
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, LargeBinary, MetaData, String, Table, insert, select, text

from adapter.db import transaction
from compliance.crypto import LocalMasterKey, Vault, VaultCodec, master_key_from_settings, wrapped_key_id
from compliance.errors import ConfigError, CryptoError, KeyDestroyed, TamperedCiphertext, UnknownKey
from compliance.models import DataKey

NAME, PHONE, EMAIL, FISCAL = "Mariangela Rossetti", "+393471234567", "mariangela.rossetti@example.org", "RSSMNG80A41H501X"


def test_a_sealed_value_opens_in_a_later_transaction(vault, sessions):
    with transaction(sessions) as session:
        blob = vault.encrypt_str(session, "patient:a1", NAME)
        assert vault.decrypt_str(session, blob) == NAME
    with transaction(sessions) as session:
        assert Vault.open(sessions, vault.master).decrypt_str(session, blob) == NAME


def test_sealing_without_a_session_works_only_while_the_subjects_key_is_cached(vault, sessions):
    # The ACK path seals with the system key without opening a transaction for it.
    assert vault.encrypt_if_cached("system", b"MSH|^~\\&|...") is None  # not read yet
    with transaction(sessions) as session:
        vault.encrypt(session, "system", b"x")  # creates (or reads) and caches it
    blob = vault.encrypt_if_cached("system", b"MSH|^~\\&|...", aad=b"raw")
    assert blob is not None and blob != vault.encrypt_if_cached("system", b"MSH|^~\\&|...", aad=b"raw")  # fresh nonce
    with transaction(sessions) as session:
        assert Vault.open(sessions, vault.master).decrypt(session, blob, aad=b"raw") == b"MSH|^~\\&|..."
    assert vault.encrypt_if_cached("patient:never-seen", b"x") is None
    expiring = Vault.open(sessions, vault.master, cache_ttl_s=0)
    with transaction(sessions) as session:
        expiring.encrypt(session, "system", b"x")
    assert expiring.encrypt_if_cached("system", b"x") is None  # expired: read again, in a transaction


def test_each_subject_gets_its_own_data_key_created_once(vault, sessions):
    with transaction(sessions) as session:
        for subject in ["patient:a1", "patient:a2", "patient:a1", "system"]:
            vault.encrypt(session, subject, b"x")
        subjects = sorted(session.scalars(select(DataKey.subject)))
    assert subjects == ["patient:a1", "patient:a2", "system", "system:blind-index"]


def test_associated_data_and_every_byte_of_the_blob_are_authenticated(vault, sessions):
    with transaction(sessions) as session:
        blob = vault.encrypt(session, "patient:a1", b"secret", aad=b"contact:7")
        with pytest.raises(TamperedCiphertext):
            vault.decrypt(session, blob, aad=b"contact:8")
        for i in [0, 9, 20, len(blob) - 1]:
            bad = bytearray(blob)
            bad[i] ^= 1
            with pytest.raises(CryptoError):
                vault.decrypt(session, bytes(bad), aad=b"contact:7")


def test_a_key_created_in_a_rolled_back_transaction_is_never_used_again(vault, sessions):
    with pytest.raises(RuntimeError), transaction(sessions) as session:
        vault.encrypt(session, "patient:gone", b"x")
        raise RuntimeError("rollback")
    with transaction(sessions) as session:
        blob = vault.encrypt(session, "patient:gone", b"kept")
    with transaction(sessions) as session:
        assert Vault.open(sessions, vault.master).decrypt(session, blob) == b"kept"


def test_destroying_a_subject_shreds_its_data_but_not_others(vault, sessions):
    with transaction(sessions) as session:
        mine = vault.encrypt_str(session, "patient:a1", NAME)
        other = vault.encrypt_str(session, "patient:a2", NAME)
    with transaction(sessions) as session:
        assert vault.destroy(session, "patient:a1") is True
    fresh = Vault.open(sessions, vault.master)
    for v in (vault, fresh):
        with transaction(sessions) as session:
            with pytest.raises(KeyDestroyed):
                v.decrypt(session, mine)
            with pytest.raises(KeyDestroyed):
                v.encrypt(session, "patient:a1", b"new data for an erased patient")
            assert v.decrypt_str(session, other) == NAME
    with transaction(sessions) as session:
        row = session.scalars(select(DataKey).where(DataKey.subject == "patient:a1")).one()
        assert row.wrapped is None and row.destroyed_at is not None


def test_the_system_keys_cannot_be_destroyed(vault, sessions):
    with pytest.raises(CryptoError), transaction(sessions) as session:
        vault.destroy(session, "system:blind-index")


def test_rotation_rewraps_every_key_while_old_and_new_masters_both_read(vault, sessions, master):
    with transaction(sessions) as session:
        blobs = [vault.encrypt_str(session, f"patient:{i}", NAME) for i in range(5)]
        vault.destroy(session, "patient:4")
    new = LocalMasterKey.from_base64(LocalMasterKey.generate())
    during = Vault.open(sessions, master, previous=[new])  # a process still on the old key
    with transaction(sessions) as session:
        report = vault.rotate(session, new)
        assert (report.rewrapped, report.destroyed_skipped) == (5, 1)  # 4 patients + index key
        assert vault.count_wrapped_by(session, master.key_id) == 0
    with transaction(sessions) as session:
        assert during.decrypt_str(session, blobs[0]) == NAME
    after = Vault.open(sessions, new)
    with transaction(sessions) as session:
        assert [after.decrypt_str(session, b) for b in blobs[:4]] == [NAME] * 4
        assert after.blind_index("phone", PHONE) == vault.blind_index("phone", PHONE)
        wrapped = session.scalars(select(DataKey.wrapped).where(DataKey.subject == "patient:0")).one()
        assert wrapped_key_id(wrapped) == new.key_id
    with transaction(sessions) as session:
        assert vault.rotate(session, new).already_current == 5
    old_only = Vault(sessions, master, b"k" * 32)
    with pytest.raises(UnknownKey), transaction(sessions) as session:
        old_only.decrypt(session, blobs[0])



def test_a_vault_meeting_a_key_rewrapped_by_another_process_learns_the_new_master_and_wraps_with_it(
        vault, sessions, master):
    with transaction(sessions) as session:
        blob = vault.encrypt_str(session, "patient:1", NAME)
    new = LocalMasterKey.from_base64(LocalMasterKey.generate())
    other = Vault.open(sessions, master, find_master=lambda key_id: (new, True) if key_id == new.key_id else None)
    with transaction(sessions) as session:
        vault.rotate(session, new)  # another process: this one has not read the new key file yet
    with transaction(sessions) as session:
        assert other.decrypt_str(session, blob) == NAME
        other.encrypt_str(session, "patient:2", NAME)
        wrapped = session.scalars(select(DataKey.wrapped).where(DataKey.subject == "patient:2")).one()
    assert wrapped_key_id(wrapped) == new.key_id

def test_blind_indexes_are_stable_across_spellings_and_differ_by_kind(vault):
    assert vault.blind_index("phone", "347 123 4567") == vault.blind_index("phone", "+39 347-123-4567")
    assert vault.blind_index("email", " Mariangela.Rossetti@Example.ORG") == vault.blind_index("email", EMAIL)
    assert vault.blind_index("fiscal_code", "rssmng80a41h501x") == vault.blind_index("fiscal_code", FISCAL)
    assert vault.blind_index("identifier", "urn:oid:cf|rssmng80a41h501x") == vault.blind_index(
        "identifier", "urn:oid:cf|RSSMNG80A41H501X")
    assert vault.blind_index("phone", PHONE) != vault.blind_index("sms_other", PHONE)
    assert len(vault.blind_index("phone", PHONE)) == 64


def test_a_custom_normaliser_replaces_the_default_for_its_kind(sessions, master):
    vault = Vault(sessions, master, b"i" * 32, normalisers={"mrn": lambda v: v.lstrip("0")})
    assert vault.blind_index("mrn", "000123") == vault.blind_index("mrn", "123")


def test_the_codec_opens_its_own_transaction(vault):
    codec = VaultCodec(vault)
    blob = codec.encrypt(b"raw HL7 message", subject="system")
    assert codec.decrypt(blob) == b"raw HL7 message"


def test_a_master_key_file_is_created_once_with_owner_only_permissions(tmp_path):
    path = tmp_path / "keys" / "master.key"
    first = LocalMasterKey.from_file(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert LocalMasterKey.from_file(path).key_id == first.key_id
    assert master_key_from_settings(None, path).key_id == first.key_id
    assert master_key_from_settings(path.read_text(), None).key_id == first.key_id


@pytest.mark.parametrize("value", ["not base64!", base64.b64encode(b"short").decode()])
def test_a_bad_master_key_is_refused_with_a_clear_error(value):
    with pytest.raises(ConfigError):
        LocalMasterKey.from_base64(value)


def test_missing_master_key_settings_are_refused():
    with pytest.raises(ConfigError, match="ADAPTER_MASTER_KEY"):
        master_key_from_settings(None, None)


# -- what an attacker with the database finds ----------------------------------------------

secrets_meta = MetaData()
patient_secrets = Table(
    "test_compliance_patient_secret", secrets_meta,
    Column("id", Integer, primary_key=True),
    Column("given_name_enc", LargeBinary), Column("phone_enc", LargeBinary),
    Column("email_enc", LargeBinary), Column("fiscal_code_enc", LargeBinary),
    Column("phone_index", String(64)), Column("fiscal_code_index", String(64)),
    Column("body_enc", LargeBinary),
)
PLAINTEXTS = [NAME, "Mariangela", "Rossetti", PHONE, "3471234567", EMAIL, FISCAL, FISCAL.lower(),
              "appuntamento di cardiologia"]


def test_the_raw_database_holds_no_plaintext_personal_data(engine, vault, sessions, tmp_path):
    secrets_meta.create_all(engine)
    try:
        with transaction(sessions) as session:
            for i in range(20):
                s = f"patient:{i}"
                session.execute(patient_secrets.insert().values(
                    given_name_enc=vault.encrypt_str(session, s, NAME),
                    phone_enc=vault.encrypt_str(session, s, PHONE),
                    email_enc=vault.encrypt_str(session, s, EMAIL),
                    fiscal_code_enc=vault.encrypt_str(session, s, FISCAL),
                    phone_index=vault.blind_index("phone", PHONE),
                    fiscal_code_index=vault.blind_index("fiscal_code", FISCAL),
                    body_enc=vault.encrypt_str(session, s, "Promemoria: appuntamento di cardiologia"),
                ))
        raw = _raw_bytes(engine)
        assert len(raw) > 4096
        for plain in PLAINTEXTS:
            for encoding in ("utf-8", "utf-16-le"):
                assert plain.encode(encoding) not in raw, f"{plain!r} found in the raw database"
        with transaction(sessions) as session:
            row = session.execute(select(patient_secrets)).first()
            assert vault.decrypt_str(session, row.email_enc) == EMAIL
    finally:
        secrets_meta.drop_all(engine)


def _raw_bytes(engine) -> bytes:
    if engine.dialect.name == "sqlite":
        path = Path(engine.url.database)
        files = [path, path.with_name(path.name + "-wal")]
        return b"".join(f.read_bytes() for f in files if f.exists())
    with engine.connect() as conn:
        conn.execute(text("CHECKPOINT"))
        out = b""
        for table in ["test_compliance_patient_secret", "data_key"]:
            filepath = conn.execute(text("SELECT pg_relation_filepath(:t)"), {"t": table}).scalar()
            out += conn.execute(text("SELECT pg_read_binary_file(:p)"), {"p": filepath}).scalar()
            out += "".join(str(r) for r in conn.execute(text(f"SELECT * FROM {table}"))).encode()
        return out


def test_a_key_created_for_a_new_subject_seals_and_is_the_only_key_it_ever_gets(vault, sessions):
    with transaction(sessions) as session:
        vault.create_keys(session, ["patient:new"])
        blob = vault.encrypt_str(session, "patient:new", NAME)
        vault.create_keys(session, ["patient:new"])  # again: the first key stands
        assert vault.decrypt_str(session, blob) == NAME
    fresh = Vault.open(sessions, vault.master)
    with transaction(sessions) as session:
        assert fresh.decrypt_str(session, blob) == NAME
        fresh.create_keys(session, ["patient:new"])
        assert len(session.scalars(select(DataKey).where(DataKey.subject == "patient:new")).all()) == 1
        assert vault.decrypt_str(session, vault.encrypt_str(session, "patient:new", NAME)) == NAME


def test_no_key_is_created_for_a_destroyed_subject(vault, sessions):
    with transaction(sessions) as session:
        vault.destroy(session, "patient:erased")
    fresh = Vault.open(sessions, vault.master)
    for v in (vault, fresh):
        with transaction(sessions) as session, pytest.raises(KeyDestroyed):
            v.create_keys(session, ["patient:erased"])


def test_keys_for_several_new_subjects_come_from_one_call_and_an_existing_key_stands(vault, sessions):
    with transaction(sessions) as session:
        old = vault.encrypt_str(session, "patient:old", NAME)
    fresh = Vault.open(sessions, vault.master)
    with transaction(sessions) as session:
        fresh.create_keys(session, ["patient:n1", "patient:old", "patient:n2"])
        fresh.create_keys(session, [])
        blobs = {s: fresh.encrypt_str(session, s, NAME) for s in ("patient:n1", "patient:n2")}
        assert fresh.decrypt_str(session, old) == NAME
    with transaction(sessions) as session:
        assert sorted(session.scalars(select(DataKey.subject).where(DataKey.subject.like("patient:%")))) == [
            "patient:n1", "patient:n2", "patient:old"]
        assert all(vault.decrypt_str(session, blob) == NAME for blob in blobs.values())


def test_keys_made_for_new_subjects_without_the_database_seal_at_once_and_last_once_inserted(vault, sessions):
    with transaction(sessions) as session:
        rows = vault.key_rows_for_new(session, ["patient:b1", "patient:b2"])
        blob = vault.encrypt_str(session, "patient:b1", NAME)  # usable before its row is written
        assert sorted(r["subject"] for r in rows) == ["patient:b1", "patient:b2"]
        assert session.scalars(select(DataKey).where(DataKey.subject.like("patient:b%"))).all() == []
        session.execute(insert(DataKey), rows)
    fresh = Vault.open(sessions, vault.master)
    with transaction(sessions) as session:
        assert fresh.decrypt_str(session, blob) == NAME
        assert all(row["wrapped"] != b"" and NAME.encode() not in row["wrapped"] for row in rows)


def test_a_key_made_for_a_new_subject_is_forgotten_when_its_transaction_rolls_back(vault, sessions):
    with pytest.raises(RuntimeError), transaction(sessions) as session:
        vault.key_rows_for_new(session, ["patient:gone"])
        raise RuntimeError("the Bundle failed")
    with transaction(sessions) as session:  # a key is made for it again, and kept
        blob = vault.encrypt_str(session, "patient:gone", NAME)
    with transaction(sessions) as session:
        assert Vault.open(sessions, vault.master).decrypt_str(session, blob) == NAME


def test_a_key_created_in_a_rolled_back_savepoint_is_not_used_by_the_rest_of_its_transaction(vault, sessions):
    """A batch undone by its savepoint and done again item by item (the pipeline, the
    dispatcher): the key made the first time went with the savepoint; sealing again makes
    and stores another, which a fresh vault finds."""
    with transaction(sessions) as session:
        with pytest.raises(RuntimeError), session.begin_nested():
            vault.create_keys(session, ["patient:again"])
            vault.encrypt_str(session, "patient:again", NAME)
            raise RuntimeError("one item of the batch failed")
        kept_before = vault.encrypt_str(session, "patient:kept", NAME)  # a key staged outside the savepoint stands
        blob = vault.encrypt_str(session, "patient:again", NAME)
    fresh = Vault.open(sessions, vault.master)
    with transaction(sessions) as session:
        assert fresh.decrypt_str(session, blob) == NAME
        assert fresh.decrypt_str(session, kept_before) == NAME
        assert len(session.scalars(select(DataKey).where(DataKey.subject == "patient:again")).all()) == 1


def test_a_key_destroyed_through_another_vault_is_not_used_from_the_next_transaction(vault, sessions):
    """Each process has its own vault and cache: the one that held the key cached does not
    use it once the destruction has committed, neither to open nor to seal."""
    other = Vault.open(sessions, vault.master)
    with transaction(sessions) as session:
        blob = vault.encrypt_str(session, "patient:c1", NAME)
        kept = vault.encrypt_str(session, "patient:c2", NAME)
    with transaction(sessions) as session:
        assert other.decrypt_str(session, blob) == NAME  # cached by the other vault
    with transaction(sessions) as session:
        vault.destroy(session, "patient:c1")
    with transaction(sessions) as session:
        with pytest.raises(KeyDestroyed):
            other.decrypt_str(session, blob)
        with pytest.raises(KeyDestroyed):
            other.encrypt_str(session, "patient:c1", NAME)
        assert other.decrypt_str(session, kept) == NAME


def _key_id_of_new_file(path: str, start: float) -> str:
    import time as clock

    while clock.time() < start:  # every process reads and creates at the same moment
        pass
    return LocalMasterKey.from_file(Path(path)).key_id


def test_processes_starting_together_on_a_new_key_file_all_read_the_one_key_made(tmp_path):
    """Several processes starting at once (two `serve`s, a worker) each create the key
    file when none is there: one makes it, and every one reads that key, never a file
    another has created but not yet written (which read as an empty key, or as a key
    of its own that then failed everything the others had sealed)."""
    import time
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(8) as pool:
        for round_ in range(10):
            path = str(tmp_path / f"master-{round_}.key")
            start = time.time() + 0.3
            key_ids = list(pool.map(_key_id_of_new_file, [path] * 8, [start] * 8))
            assert len(set(key_ids)) == 1, key_ids
            assert LocalMasterKey.from_file(Path(path)).key_id == key_ids[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"master-{r}.key" for r in range(10)]  # nothing staged left


def test_a_secret_file_written_again_is_replaced_whole_and_stays_owner_only(tmp_path):
    from compliance.crypto import write_secret_file

    path = tmp_path / "admin-token"
    write_secret_file(path, b"first\n", exclusive=True)
    with pytest.raises(FileExistsError):
        write_secret_file(path, b"second\n", exclusive=True)
    assert path.read_bytes() == b"first\n"
    write_secret_file(path, b"second\n")
    assert path.read_bytes() == b"second\n" and path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["admin-token"]
