"""Several adapter processes on one PostgreSQL database, as production runs them
(README "Production deployment": ``serve`` instances behind a balancer, Celery
workers, each unit running ``migrate`` before it starts): what one process alone
never meets."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.faults.conftest import ROOT, adapter_env


@pytest.mark.timeout(60)
def test_migrations_started_by_several_processes_at_once_all_succeed(tmp_path, pg_url):
    # systemd starts adapter-serve@1, @2 and the workers together, each with
    # ExecStartPre=... migrate: on a new database they all find it empty.
    env = adapter_env(tmp_path, pg_url)
    migrations = [subprocess.Popen([sys.executable, "-m", "adapter", "migrate"], cwd=ROOT, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(4)]
    outputs = [process.communicate(timeout=50)[0].decode(errors="replace") for process in migrations]
    assert [process.returncode for process in migrations] == [0] * 4, outputs[-1][-2000:]
