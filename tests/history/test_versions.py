"""What was known on a given date: the history beside the current table, on every backend.

A-share statements are restated: Tushare then returns the original with
update_flag '0' and the correction with '1' and a later f_ann_date, in the same
fetch. Each case loads the fetches as sealed files and asks ``income_asof``
(and the ``income_timeline`` view, which must agree) what was known on dates
around the announcements, and what the current table holds.
"""

import itertools
import random

from loader.warehouse import MANIFEST
from tests.history.helpers import basic, current, day, known_on, load, read, statement, versions

A, B = "600000.SH", "000001.SZ"


def test_an_original_then_its_restatement(config, stage, warehouse):
    first = stage("income", [statement(A, "1", "2024-03-29", 1.0, fetched="2024-04-01")])
    # After the correction a fetch returns both: the original, now update_flag 0, and the correction.
    second = stage("income", [statement(A, "0", "2024-03-29", 1.0, fetched="2024-05-02"),
                              statement(A, "1", "2024-04-26", 1.2, fetched="2024-05-02")])
    load(warehouse, config, [first])
    load(warehouse, config, [second])

    assert known_on(warehouse, "income", "2024-03-28") == []
    assert known_on(warehouse, "income", "2024-03-29") == [(A, 1.0)]
    assert known_on(warehouse, "income", "2024-04-25") == [(A, 1.0)]
    assert known_on(warehouse, "income", "2024-04-26") == [(A, 1.2)]
    assert current(warehouse, "income") == [(A, 1.2)]
    assert [(v[7], v[2], v[8], v[-1]) for v in _by_date(versions(warehouse, config.datasets["income"]))] == [
        ("0", day("2024-03-29"), 1.0, day("2024-03-29")), ("1", day("2024-03-29"), 1.0, day("2024-03-29")),
        ("1", day("2024-04-26"), 1.2, day("2024-04-26"))]


def test_a_restatement_fetched_first_and_the_original_fetched_later(config, stage, warehouse):
    restated = stage("income", [statement(A, "0", "2024-03-29", 1.0, fetched="2024-05-02"),
                                statement(A, "1", "2024-04-26", 1.2, fetched="2024-05-02")])
    older = stage("income", [statement(A, "1", "2024-03-29", 1.0, fetched="2024-04-01")])
    load(warehouse, config, [restated])
    load(warehouse, config, [older])  # an older fetch arriving late must not push the restatement out

    assert current(warehouse, "income", "ts_code, update_flag, f_ann_date, basic_eps") == [
        (A, "1", day("2024-04-26"), 1.2)]
    assert known_on(warehouse, "income", "2024-03-29") == [(A, 1.0)]
    assert known_on(warehouse, "income", "2024-04-26") == [(A, 1.2)]
    assert sorted((v[7], v[-1]) for v in versions(warehouse, config.datasets["income"])) == [
        ("0", day("2024-03-29")), ("1", day("2024-03-29")), ("1", day("2024-04-26"))]


def test_two_restatements_of_one_period(config, stage, warehouse):
    stage("income", [statement(A, "1", "2024-03-29", 1.0, fetched="2024-04-01")])
    stage("income", [statement(A, "0", "2024-03-29", 1.0, fetched="2024-05-10"),
                     statement(A, "1", "2024-05-06", 1.1, fetched="2024-05-10")])
    stage("income", [statement(A, "0", "2024-03-29", 1.0, fetched="2024-08-01"),
                     statement(A, "0", "2024-05-06", 1.1, fetched="2024-08-01"),
                     statement(A, "1", "2024-07-30", 0.9, fetched="2024-08-01")])
    load(warehouse, config, _staged(config), one_at_a_time=True)

    answers = {when: known_on(warehouse, "income", when) for when in
               ("2024-03-28", "2024-03-29", "2024-05-05", "2024-05-06", "2024-07-29", "2024-07-30", "2030-01-01")}
    assert answers == {"2024-03-28": [], "2024-03-29": [(A, 1.0)], "2024-05-05": [(A, 1.0)],
                       "2024-05-06": [(A, 1.1)], "2024-07-29": [(A, 1.1)], "2024-07-30": [(A, 0.9)],
                       "2030-01-01": [(A, 0.9)]}
    assert current(warehouse, "income") == [(A, 0.9)]
    # (1, 03-29), (0, 03-29), (1, 05-06), (0, 05-06), (1, 07-30)
    assert len(versions(warehouse, config.datasets["income"])) == 5


def test_both_versions_announced_the_same_day(config, stage, warehouse):
    load(warehouse, config, [stage("income", [statement(A, "0", "2024-03-29", 1.0, fetched="2024-04-01"),
                                   statement(A, "1", "2024-03-29", 1.2, fetched="2024-04-01")])])

    # Both are public from 03-29; the version order (update_flag) says which one was known.
    assert known_on(warehouse, "income", "2024-03-28") == []
    assert known_on(warehouse, "income", "2024-03-29") == [(A, 1.2)]
    assert current(warehouse, "income") == [(A, 1.2)]
    assert read(warehouse, "SELECT update_flag, _valid_from, _valid_to FROM income_timeline ORDER BY update_flag") == [
        ("0", day("2024-03-29"), day("2024-03-29")), ("1", day("2024-03-29"), None)]  # the original: never in effect


def test_a_version_without_f_ann_date_is_dated_by_ann_date_else_by_its_fetch(config, stage, warehouse):
    load(warehouse, config, [stage("income", [
        statement(A, "1", None, 1.0, fetched="2024-04-01", ann="2024-03-20"),
        statement(B, "1", None, 2.0, fetched="2024-04-03", ann=None)])])

    assert read(warehouse, "SELECT ts_code, _valid_from FROM income_history ORDER BY 1") == [
        (B, day("2024-04-03")), (A, day("2024-03-20"))]
    assert known_on(warehouse, "income", "2024-03-19") == []
    assert known_on(warehouse, "income", "2024-03-20") == [(A, 1.0)]
    assert known_on(warehouse, "income", "2024-04-03") == [(B, 2.0), (A, 1.0)]


def test_a_date_before_the_first_announcement_has_no_row_for_that_key(config, stage, warehouse):
    load(warehouse, config, [stage("income", [statement(A, "1", "2024-03-29", 1.0, fetched="2024-04-30"),
                                   statement(B, "1", "2024-04-25", 2.0, fetched="2024-04-30")])])

    assert known_on(warehouse, "income", "2024-04-24") == [(A, 1.0)]
    assert known_on(warehouse, "income", "2024-04-25") == [(B, 2.0), (A, 1.0)]


def test_a_stock_renamed_to_st_and_back(config, stage, warehouse):
    for when, name in (("2024-01-02", "浦发银行"), ("2024-03-04", "ST浦发"), ("2024-03-04", "ST浦发"),
                       ("2024-06-03", "浦发银行")):
        stage("stock_basic", [basic(A, name, when), basic("600004.SH", "白云机场", when)])
    load(warehouse, config, _staged(config), one_at_a_time=True)

    def name_on(when):
        return known_on(warehouse, "stock_basic", when, "ts_code, name")

    assert name_on("2024-01-01") == []
    assert name_on("2024-03-03") == [(A, "浦发银行"), ("600004.SH", "白云机场")]
    assert name_on("2024-03-04") == [(A, "ST浦发"), ("600004.SH", "白云机场")]
    assert name_on("2024-06-02") == [(A, "ST浦发"), ("600004.SH", "白云机场")]
    assert name_on("2024-06-03") == [(A, "浦发银行"), ("600004.SH", "白云机场")]
    assert current(warehouse, "stock_basic", "ts_code, name") == name_on("2030-01-01")
    # The same name fetched twice on one day is one version; back to the old name is a new one.
    assert read(warehouse, "SELECT name, _valid_from FROM stock_basic_history WHERE ts_code = ? ORDER BY 2", [A]) \
        == [("浦发银行", day("2024-01-02")), ("ST浦发", day("2024-03-04")), ("浦发银行", day("2024-06-03"))]


def test_files_replayed_in_any_order_give_the_same_history(config, stage, warehouse):
    rng = random.Random(13)
    fetches = ["2024-04-01", "2024-04-20", "2024-05-02", "2024-05-20", "2024-08-01"]
    for when in fetches:  # each fetch returns what was public by then, for two stocks and two periods
        rows = []
        for code, end in itertools.product((A, B), ("2023-12-31", "2024-03-31")):
            rows.append(statement(code, "1" if when < "2024-05-01" else "0", "2024-03-29", 1.0, when, end=end))
            if when >= "2024-05-01":
                rows.append(statement(code, "1", "2024-04-26", round(rng.uniform(0.5, 1.5), 2), when, end=end))
        stage("income", rows)
        stage("stock_basic", [basic(A, "ST浦发" if "2024-04-15" < when < "2024-06-01" else "浦发银行", when)])
    paths = _staged(config)
    orders = [paths, paths[::-1], rng.sample(paths, len(paths))]

    seen = []
    for order in orders:
        _empty(warehouse)
        load(warehouse, config, order, one_at_a_time=True)
        seen.append(_everything_known(warehouse, config))
    assert all(s == seen[0] for s in seen[1:])
    # stock_basic is dated by fetch: each day's sighting is kept, so that a late fetch
    # falls between the right neighbours whatever the order.
    assert len(seen[0]["income"]) > 8 and len(seen[0]["stock_basic"]) == len(fetches)


def _everything_known(warehouse, config):
    dates = ["2024-03-28", "2024-03-29", "2024-04-26", "2024-05-01", "2024-05-19", "2024-07-31", "2030-01-01"]
    return {"income": versions(warehouse, config.datasets["income"]),
            "stock_basic": versions(warehouse, config.datasets["stock_basic"]),
            "income_asof": [known_on(warehouse, "income", d, "ts_code, end_date, basic_eps") for d in dates],
            "names": [known_on(warehouse, "stock_basic", d, "ts_code, name") for d in dates],
            "current": [current(warehouse, "income", "ts_code, end_date, basic_eps"),
                        current(warehouse, "stock_basic", "ts_code, name")]}


def _empty(wh):
    """A warehouse with nothing loaded, on any backend: the tables, their history and the manifest go."""
    for name in ("income", "income_history", "stock_basic", "stock_basic_history"):
        wh.con.execute(f"DROP TABLE IF EXISTS {name}")
    wh.con.execute(f"DELETE FROM {MANIFEST}")


def _staged(config):
    """Every sealed file in staging/, in seal order (the stamp in the name)."""
    return sorted(config.staging_dir.rglob("*.parquet"), key=lambda p: p.name.split("-", 1)[1])


def _by_date(rows):
    return sorted(rows, key=lambda v: (v[-1], v[7]))
