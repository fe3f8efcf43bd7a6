"""Prediction files: the CS224N format exactly, CSV and JSONL, round trips."""

from __future__ import annotations

import pytest
import torch

from palbert.tasks import build_task, read_predictions, write_predictions
from palbert.tasks.predictions import default_filename


def test_cs224n_sentiment_file_exact(tmp_path):
    sst = build_task("sst")
    logits = torch.tensor([[0.0, 0, 0, 5, 0], [5.0, 0, 0, 0, 0]])
    path = write_predictions(tmp_path, sst, ["a7d5", "33cf"], sst.predict(logits), "dev")
    assert path.name == "sst-dev-output.csv"
    assert path.read_text() == "id \t Predicted_Sentiment \na7d5 , 3 \n33cf , 0 \n"
    assert read_predictions(path) == [
        {"id": "a7d5", "prediction": "3"},
        {"id": "33cf", "prediction": "0"},
    ]


def test_cs224n_headers_and_names_per_task(tmp_path):
    quora, sts = build_task("quora"), build_task("sts")
    p = write_predictions(tmp_path, quora, ["q1"], {"label": torch.tensor([1])}, "test")
    assert p.name == "para-test-output.csv"  # the course names the Quora task "para"
    assert p.read_text().splitlines()[0] == "id \t Predicted_Is_Paraphrase "
    p = write_predictions(tmp_path, sts, ["s1", "s2"], {"score": torch.tensor([4.25, 0.5])}, "dev")
    assert (
        p.read_text() == "id \t Predicted_Similiarity \ns1 , 4.25 \ns2 , 0.5 \n"
    )  # the course's spelling
    assert default_filename("cfimdb", "test") == "cfimdb-test-output.csv"


def test_csv_and_jsonl_round_trip(tmp_path):
    task = build_task(
        {
            "name": "reviews",
            "text": "review",
            "label": "stars",
            "labels": ["neg", "pos"],
            "files": {"train": "x.csv"},
        }
    )
    preds = task.predict(torch.tensor([[0.0, 2.0], [1.0, -1.0]]))
    p = write_predictions(tmp_path / "r.csv", task, ["x", "y"], preds, "dev", fmt="csv")
    rows = read_predictions(p)
    assert [(r["id"], r["prediction"]) for r in rows] == [("x", "pos"), ("y", "neg")]
    assert float(rows[0]["prob_pos"]) == pytest.approx(preds["probs"][0, 1].item())
    p = write_predictions(tmp_path / "r.jsonl", task, ["x", "y"], preds, "dev", fmt="jsonl")
    rows = read_predictions(p)
    assert rows[0]["label"] == "pos" and rows[0]["label_id"] == 1 and rows[0]["split"] == "dev"
    assert rows[1]["probs"]["neg"] == pytest.approx(preds["probs"][1, 0].item())
    sts = build_task("sts")
    p = write_predictions(tmp_path / "s.jsonl", sts, ["a"], [3.5], "test", fmt="jsonl")
    assert read_predictions(p) == [{"id": "a", "split": "test", "task": "sts", "score": 3.5}]


def test_mismatched_lengths_and_unknown_format(tmp_path):
    sst = build_task("sst")
    with pytest.raises(ValueError, match="2 ids but 1"):
        write_predictions(tmp_path / "x.csv", sst, ["a", "b"], [1], "dev")
    with pytest.raises(ValueError, match="fmt"):
        write_predictions(tmp_path / "x.csv", sst, ["a"], [1], "dev", fmt="xml")
