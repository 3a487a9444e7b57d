"""`make bench` runs every module of bench/; a refactor that breaks one of their
imports should fail here, not at the next benchmark run."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
SHARED = {"__init__", "__main__", "common", "fhir_common"}  # helpers, not benchmarks
# Run by hand when comparing two versions of one path, not by `make bench`: instruction
# counts under valgrind (minutes), not rates against a baseline of the same run; the
# ACK path on PostgreSQL (a server of its own, and make bench's time kept).
BY_HAND = {"mapping_instructions", "mllp_postgresql"}
MODULES = sorted(p.stem for p in BENCH.glob("*.py") if p.stem not in SHARED | BY_HAND)


def test_make_bench_runs_every_benchmark_module():
    runner = (BENCH / "__main__.py").read_text()
    listed = set(re.search(r"for bench in \(([^)]*)\)", runner).group(1).replace(" ", "").split(","))
    assert listed == set(MODULES)


@pytest.mark.parametrize("name", sorted({*MODULES, *BY_HAND, "common", "fhir_common"}))
def test_a_bench_module_imports_and_says_what_it_measures(name):
    module = importlib.import_module(f"bench.{name}")
    assert module.__doc__
