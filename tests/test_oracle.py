"""The tests' oracle: what the warehouse must hold after a list of batches."""

import datetime as dt

import pyarrow as pa

from duckstage.datasets import load_datasets
from stager.produce import Batch, BadRow, generate
from stager.results import TaskType
from tests.helpers import CONFIG_DIR
from tests.oracle import expected_rows

DATASETS = load_datasets(CONFIG_DIR / "datasets.yaml")


def good_rows(batch):
    bad = {b.index for b in batch.bad_rows}
    return [r for i, r in enumerate(batch.row_dicts()) if i not in bad]


def bar(code, date, close, **extra):
    return {"ts_code": code, "trade_date": date, "open": close, "high": close, "low": close,
            "close": close, "pre_close": close, "change": 0.0, "pct_chg": 0.0, "vol": 1.0,
            "amount": close / 10, **extra}


def test_expected_rows_follows_each_version_order():
    T = TaskType
    report = {"ts_code": "600000.SH", "ann_date": "20240428", "end_date": "20240331", "report_type": "1",
              "comp_type": "1", "end_type": "1", "revenue": 1.0}
    bad = bar("600000.SH", "20240103", 99.0, open="abc")
    batches = [
        Batch(T.STOCK_DAILY, [bar("600000.SH", "20240102", 10.0)], {"trade_date": "20240102"}),
        Batch(T.STOCK_DAILY, [bar("600000.SH", "20240102", 11.0), bad], {"trade_date": "20240102"},
              (BadRow(1, "bad_number", "open", "abc", bad),)),
        # a later anchor enqueued first wins over an older one enqueued later
        Batch(T.DAILY_BAR_QFQ, [bar("600000.SH", "20240102", 5.0, adj_factor=2.0)],
              {"ts_code": "600000.SH", "end_date": "20240110"}),
        Batch(T.DAILY_BAR_QFQ, [bar("600000.SH", "20240102", 7.0, adj_factor=2.0)],
              {"ts_code": "600000.SH", "end_date": "20240105"}),
        # the correction wins over the original fetched later; NaN becomes NULL
        Batch(T.INCOME, [{**report, "f_ann_date": "20240520", "update_flag": "1", "revenue": 2.0}],
              {"period": "20240331"}),
        Batch(T.INCOME, {k: [v] for k, v in {**report, "f_ann_date": "20240428", "update_flag": "0",
                                             "basic_eps": float("nan")}.items()}, {"period": "20240331"}),
        Batch(T.DAILY_BAR_NONE, pa.Table.from_pylist([bar("000001.SZ", "20240102", 9.0, pre_close=float("nan"))]),
              {"ts_code": "000001.SZ"}),
    ]
    out = expected_rows(batches, DATASETS)
    assert [r["close"] for r in out["stock_daily"].to_pylist()] == [11.0]
    assert out["stock_daily"].to_pylist()[0]["trade_date"] == dt.date(2024, 1, 2)
    assert out["stock_daily"].to_pylist()[0]["ah_vol"] is None
    assert [r["close"] for r in out["daily_bar_qfq"].to_pylist()] == [5.0]
    income = out["income"].to_pylist()
    assert len(income) == 1 and income[0]["revenue"] == 2.0 and income[0]["update_flag"] == "1"
    assert out["daily_bar_none"].to_pylist()[0]["pre_close"] is None
    assert out["income"].schema.field("end_date").type == pa.date32()


def test_expected_rows_of_a_generated_run():
    # late April: annual and Q1 reports as well as bars; 5% of the stocks delisted long ago
    batches = list(generate(stocks=40, days=6, seed=3, bad_share=0.02, start="20240425"))
    out = expected_rows(batches, DATASETS)
    for task_type in TaskType:
        dataset = DATASETS[task_type.value]
        keys = {tuple(r[k] for k in dataset.primary_key)
                for b in batches if b.task_type is task_type for r in good_rows(b)}
        table = out[task_type.value]
        assert table.num_rows == len(keys), task_type
        assert table.column_names == [c.name for c in dataset.columns]
    # the last stock_basic fetch wins: delisted stocks end up D
    basic = out["stock_basic"].to_pylist()
    assert {r["list_status"] for r in basic} == {"L", "D"}
