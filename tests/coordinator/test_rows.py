"""The typed rows a job writes: history.csv's HistoryRow and result.json's FinalMetrics keep their bytes, and each
reads back what it wrote."""
from __future__ import annotations

import json
import math
from pathlib import Path

from coordinator.accounting import Counters
from coordinator.documents import FinalMetrics, JobResult, JobStatus
from coordinator.outputs import (
    DIAGNOSTIC_COLUMNS,
    HISTORY_COLUMNS,
    RETURN_COLUMNS,
    CheckpointMeta,
    HistoryRow,
    write_history,
)
from service.history import read_records, rows_from

COUNTS = dict(rounds_full=2, rounds_stochastic=6, bytes_full_up=1000, bytes_full_down=2000, bytes_stochastic_up=48,
              bytes_stochastic_down=96, bytes_sync=0, bytes_total=3144, improvements=5)


def row(**changes: object) -> HistoryRow:
    fields: dict = dict(epoch=1, round=8, train_loss=0.5, train_accuracy=0.875, dev_loss=0.625, dev_accuracy=0.75,
                        seconds=1.25, **COUNTS)
    return HistoryRow(**{**fields, **changes})


def test_history_csv_keeps_its_columns_and_text_and_reads_back_the_same_rows(tmp_path: Path) -> None:
    rows = [row(), row(epoch=2, round=16, train_accuracy=None, dev_accuracy=None, dev_loss=math.nan)]
    write_history(tmp_path / "history.csv", rows)
    assert (tmp_path / "history.csv").read_text().splitlines() == [
        "epoch,round,train_loss,train_accuracy,dev_loss,dev_accuracy,rounds_full,rounds_stochastic,bytes_full_up,"
        "bytes_full_down,bytes_stochastic_up,bytes_stochastic_down,bytes_sync,bytes_total,improvements,seconds",
        "1,8,0.5,0.875,0.625,0.75,2,6,1000,2000,48,96,0,3144,5,1.25",
        "2,16,0.5,,nan,,2,6,1000,2000,48,96,0,3144,5,1.25"]
    records = read_records(tmp_path)
    assert records[0] == rows[0].record() and type(records[0]["bytes_total"]) is int
    assert records[1]["train_accuracy"] is None and math.isnan(records[1]["dev_loss"])
    floats = rows_from(records, "t")
    assert floats[0]["dev_accuracy"] == 0.75 and math.isnan(floats[1]["dev_accuracy"])


def test_diagnostic_columns_are_written_only_for_a_job_that_has_them(tmp_path: Path) -> None:
    diag = row(diag_cosine=0.5, diag_beat_share=math.nan)
    assert list(diag.record())[-2:] == DIAGNOSTIC_COLUMNS and "diag_cosine" not in row().record()
    write_history(tmp_path / "history.csv", [diag], DIAGNOSTIC_COLUMNS)
    assert (tmp_path / "history.csv").read_text().splitlines()[1].endswith(",1.25,0.5,nan")
    back = HistoryRow.from_record(read_records(tmp_path)[0])
    assert back.diag_cosine == 0.5 and back.diag_beat_share is not None and math.isnan(back.diag_beat_share)


def test_the_checkpoint_meta_keeps_its_json_and_reads_back_typed_rows() -> None:
    meta = CheckpointMeta(8, [row()], Counters())
    doc = json.loads(meta.to_json())
    assert doc["history"] == [{"epoch": 1, "round": 8, "train_loss": 0.5, "train_accuracy": 0.875, "dev_loss": 0.625,
                               "dev_accuracy": 0.75, **COUNTS, "seconds": 1.25}]
    assert CheckpointMeta.from_json(meta.to_json()).history == [row()]


def test_final_keeps_result_json_keys_in_order_and_a_failed_job_has_none() -> None:
    final = FinalMetrics(train_accuracy=0.9, train_loss=0.25, dev_accuracy=None, dev_loss=0.5, test_accuracy=0.8,
                         test_loss=0.75)
    done = JobResult(status=JobStatus.SUCCEEDED, final=final).model_dump(mode="json")
    assert list(done["final"].items()) == [("train_accuracy", 0.9), ("train_loss", 0.25), ("dev_accuracy", None),
                                           ("dev_loss", 0.5), ("test_accuracy", 0.8), ("test_loss", 0.75)]
    failed = JobResult(status=JobStatus.FAILED, message="diverged")
    assert failed.model_dump(mode="json")["final"] == {} and not failed.final.evaluated
    for doc in (done, failed.model_dump(mode="json")):  # what the store reads back, it writes again unchanged
        assert JobResult.model_validate(doc).model_dump(mode="json") == doc


def test_a_black_box_row_and_final_keep_their_columns_and_keys(tmp_path: Path) -> None:
    bb = HistoryRow(epoch=1, round=5, return_mean=200.5, return_std=3.25, episodes=24, seconds=1.25, **COUNTS)
    assert list(bb.record())[:5] == ["epoch", "round", "return_mean", "return_std", "episodes"]
    assert "train_loss" not in bb.record()  # a black-box job has no data set
    write_history(tmp_path / "history.csv", [bb], RETURN_COLUMNS)
    line = (tmp_path / "history.csv").read_text().splitlines()[1]
    assert line == "1,5,,,,,2,6,1000,2000,48,96,0,3144,5,1.25,200.5,3.25,24"
    served = read_records(tmp_path)[0]
    assert list(served) == HISTORY_COLUMNS + RETURN_COLUMNS and served["train_loss"] is None
    assert served["episodes"] == 24 and HistoryRow.from_record(served) == bb
    final = FinalMetrics(train_accuracy=None, dev_accuracy=None, test_accuracy=None, train_loss=None, dev_loss=None,
                         return_std=3.25, **{"return": 200.5})
    doc = JobResult(status=JobStatus.SUCCEEDED, final=final).model_dump(mode="json")["final"]
    assert list(doc.items()) == [("train_accuracy", None), ("dev_accuracy", None), ("test_accuracy", None),
                                 ("train_loss", None), ("dev_loss", None), ("return_std", 3.25), ("return", 200.5)]
