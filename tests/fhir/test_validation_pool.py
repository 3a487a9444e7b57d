"""Validating a Bundle's resources in helper processes (fhir/validation_pool.py):
the same answers as in the request's thread, a dead helper replaced, helpers
that leave with the process that started them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fhir.validate import verdicts
from fhir.validation_pool import ValidationPool
from tests.fhir.conftest import started

ROOT = Path(__file__).resolve().parents[2]


def _resources() -> list[dict]:
    good_patient = {"resourceType": "Patient", "name": [{"family": "D'Alò", "given": ["Nicolò"]}]}
    good_appointment = {"resourceType": "Appointment", "status": "booked",
                        "start": "2030-01-02T09:00:00Z", "end": "2030-01-02T09:30:00Z",
                        "participant": [{"actor": {"reference": "Patient/p1"}, "status": "accepted"}]}
    return [
        good_patient,
        {**good_appointment, "status": "bogus"},  # binding: 400
        good_appointment,
        {**good_patient, "shoeSize": 42},  # unknown element: 400
        {**good_appointment, "participant": [{"actor": {"reference": "Location/1"},
                                              "status": "accepted"}]},  # adapter rule: 422
        good_patient, good_appointment, good_patient, good_appointment,
    ]


def _plain(errors: list) -> list:
    return [None if e is None else (e.status, e.issues) for e in errors]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited: only its parent has not collected it yet.
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"


def _wait_gone(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def pool() -> Iterator[ValidationPool]:
    pool = ValidationPool(1, min_resources=2)
    yield pool
    pool.close()


def test_the_first_large_bundle_starts_the_helpers_without_waiting_for_them(pool):
    resources = _resources()
    assert pool.helper_pids() == []
    # Validated here while the helper starts (importing the models takes about a second).
    assert _plain(pool.validate(resources)) == verdicts(resources)
    assert len(pool.helper_pids()) == 1
    started(pool)
    assert _plain(pool.validate(resources)) == verdicts(resources)


def test_a_helper_process_gives_the_answers_the_request_thread_would(pool):
    started(pool)
    resources = _resources()
    found = _plain(pool.validate(resources))
    assert found == verdicts(resources)
    assert [v and v[0] for v in found] == [None, 400, None, 400, 422, None, None, None, None]
    assert [e.expression for e in found[1][1]] == ["Appointment.status"]
    helpers = pool.helper_pids()
    assert len(helpers) == 1 and helpers[0] != os.getpid()


def test_a_list_shorter_than_the_threshold_is_validated_in_the_calling_thread(pool):
    assert _plain(pool.validate(_resources()[:1])) == [None]
    assert pool.helper_pids() == []  # nothing was started for it


def test_two_helpers_share_a_bundle_and_keep_its_order():
    pool = started(ValidationPool(2, min_resources=2))
    try:
        assert len(pool.helper_pids()) == 2
        resources = _resources() * 3
        assert _plain(pool.validate(resources)) == verdicts(resources)
    finally:
        pool.close()


def test_a_killed_helper_is_replaced_later_and_nothing_is_answered_wrongly():
    pool = started(ValidationPool(1, min_resources=2, restart_after_s=1.0))
    try:
        resources = _resources()
        [helper] = pool.helper_pids()
        os.kill(helper, signal.SIGKILL)
        assert _wait_gone(helper)
        # The Bundle during which the helper is found dead is validated here instead,
        # and so are those that follow, until the restart delay has passed.
        assert _plain(pool.validate(resources)) == verdicts(resources)
        assert _plain(pool.validate(resources)) == verdicts(resources)
        assert pool.helper_pids() == []
        time.sleep(1.0)
        started(pool)
        assert _plain(pool.validate(resources)) == verdicts(resources)
        [replacement] = pool.helper_pids()
        assert replacement != helper
        assert pool.failures == 1  # /metrics: adapter_fhir_validation_helper_failures_total
    finally:
        pool.close()


def test_close_stops_the_helpers(pool):
    started(pool)
    [helper] = pool.helper_pids()
    pool.close()
    assert _wait_gone(helper)
    assert pool.helper_pids() == []


def test_helpers_leave_when_the_process_that_started_them_is_killed(tmp_path):
    script = ("from fhir.validation_pool import ValidationPool\n"
              "import sys, time\n"
              "pool = ValidationPool(1)\n"
              "pool.start()\n"
              "print(pool.helper_pids()[0], flush=True)\n"
              "time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        helper = int(parent.stdout.readline())
        assert _alive(helper)
        parent.kill()  # SIGKILL: no shutdown code runs in the parent
        parent.wait(10)
        assert _wait_gone(helper), "the helper outlived the process that started it"
    finally:
        parent.kill()
        parent.stdout.close()
