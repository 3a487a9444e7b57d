"""The error store's pure parts (adapter.error_store): ``--since`` and replay summaries."""

from __future__ import annotations

import doctest
from datetime import UTC, datetime

import pytest

import adapter.error_store
from adapter.error_store import replay_outcomes, replay_summary, since_moment

NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


def test_the_docstring_examples_are_true():
    assert doctest.testmod(adapter.error_store).failed == 0


@pytest.mark.parametrize(("typed", "moment"), [
    ("30m", datetime(2026, 11, 28, 9, 30, tzinfo=UTC)),
    ("7d", datetime(2026, 11, 21, 10, 0, tzinfo=UTC)),
    ("2026-11-27", datetime(2026, 11, 27, tzinfo=UTC)),
    ("2026-11-28T10:00:00+01:00", datetime(2026, 11, 28, 9, 0, tzinfo=UTC)),
])
def test_since_is_a_duration_back_from_now_or_a_moment_utc_unless_it_has_an_offset(typed, moment):
    assert since_moment(typed, NOW) == moment


def test_since_as_a_bare_number_or_a_word_is_refused_saying_what_is_accepted():
    for typed in ("20261128", "yesterday", "2w"):
        with pytest.raises(ValueError, match="30m, 2h, 7d"):
            since_moment(typed, NOW)


def test_a_replay_that_failed_again_is_told_with_its_reason_and_counted_by_reason():
    outcomes = replay_outcomes({5: "error", 6: "processed", 7: "rejected", 8: "missing"},
                               {5: "no start time", 7: "unsupported version"})
    assert outcomes == {5: "still failing: no start time", 6: "processed",
                        7: "still failing: unsupported version", 8: "no such message"}
    assert replay_summary(outcomes)[0] == "4 messages: 1 processed, 3 not"
