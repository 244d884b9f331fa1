"""The report says how each per-stage figure was measured: accuracy is the in-memory model's
after the stage (the files loaded back are in the Artifacts table), not a written file's."""

from slimkit.report.html import render


def metrics(artifacts: dict) -> dict:
    row = {"index": 0, "stage": "train", "method": "-", "accuracy": 0.9, "bytes_slim": 100}
    return {
        "name": "r",
        "rows": [row],
        "gate": {
            "passed": True,
            "drop_pp": 0.0,
            "max_drop_pp": 1.0,
            "reference_accuracy": 0.9,
            "final_accuracy": 0.9,
        },
        "dense_fp32_bytes": 400,
        "artifacts": artifacts,
        "recipe_yaml": "name: r\n",
    }


def test_the_per_stage_sentence_says_accuracy_is_of_the_model_in_memory():
    text = render(metrics({"slim": {"path": "model.slim", "bytes": 100, "accuracy": 0.9}}))
    assert "measured on files written by the run" not in text
    assert "accuracy is the model's (in memory, after the stage) on the test split" in text
    assert "Artifacts table gives the accuracy of each written file loaded back" in text
    # no file loaded back and measured: no pointer to a table that is not there
    assert "Artifacts table" not in render(metrics({}))
