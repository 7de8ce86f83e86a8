"""Small helpers of the shared package: the backoff and the clock both processes stamp with."""

import datetime as dt

from duckstage.backoff import Backoff
from duckstage.staging import StagedFile, utcnow


def test_a_backoff_reports_its_current_delay_so_no_caller_recomputes_it():
    backoff = Backoff(0.5, 2.0, 3.0)
    assert (backoff.attempts, backoff.delay) == (0, 0)
    handed_out = [backoff.next() for _ in range(4)]
    assert handed_out == [0.5, 1.0, 2.0, 3.0] and backoff.delay == 3.0 and backoff.attempts == 4
    backoff.reset()
    assert (backoff.attempts, backoff.delay, backoff.next()) == (0, 0, 0.5)


def test_a_retuned_backoff_keeps_counting_its_failed_attempts():
    backoff = Backoff(1.0, 2.0, 60.0)
    backoff.next(), backoff.next()
    backoff.retune(5.0, 2.0, 8.0)  # a live configuration edit while the database is busy
    assert backoff.attempts == 2 and backoff.delay == 8.0 and backoff.next() == 8.0


def test_utcnow_is_aware_utc_and_names_staged_files_in_utc():
    now = utcnow()
    assert now.tzinfo is not None and now.utcoffset() == dt.timedelta(0)
    created = StagedFile.new("stock_daily", "abcd1234", 1).created_at
    assert abs((created - utcnow()).total_seconds()) < 60
