"""What a learner reads after grading: a module not handed in is one line, not one message per test."""

from __future__ import annotations

from grader.judge.report import Record, TestOutcome, feedback_markdown, gradescope_results


def _record(rejected: str = "") -> Record:
    """A submission holding only 01, graded on 01-03: 01 has one failure, 02 and 03 were not handed in."""
    tests = [TestOutcome("01_rmsnorm", "test_a", "passed", 2, 2), TestOutcome("01_rmsnorm", "test_b", "failed", 0, 2, "wrong", "assertion")]
    for module, count in (("02_rope", 30), ("03_lora", 40)):
        tests += [TestOutcome(module, f"test_{i}", "error", 0, 1, f"There is no {module}/x.py in your submission", "missing")
                  for i in range(count)]
    return Record("amy", "amy", "0" * 64, ["01_rmsnorm", "02_rope", "03_lora"], tests, [], [], "none", 1.0, rejected=rejected)


def test_a_module_not_handed_in_is_one_line_of_feedback():
    feedback = feedback_markdown(_record())
    assert "There is no" not in feedback  # the per-test message of a missing module never appears
    assert feedback.count("02_rope") == 3 and feedback.count("03_lora") == 3  # its table row and the one line (name, file)
    assert "| 02_rope | 0 / 30 (not handed in) |" in feedback
    assert "Not handed in (no feedback per test): 02_rope (no 02_rope/rope.py), 03_lora (no 03_lora/lora.py)." in feedback
    assert "### `test_b` (0 / 2)" in feedback and "wrong" in feedback  # the module handed in keeps its feedback
    assert len(feedback.splitlines()) < 25


def test_results_json_has_one_entry_per_module_not_handed_in():
    results = gradescope_results(_record())
    names = [t["name"] for t in results["tests"]]
    assert names == ["01_rmsnorm: test_a", "01_rmsnorm: test_b", "02_rope: not handed in", "03_lora: not handed in"]
    missing = results["tests"][2]
    assert (missing["score"], missing["max_score"]) == (0.0, 30)
    assert "no 02_rope/rope.py" in missing["output"]
    assert results["score"] == 2


def test_a_rejected_submission_says_why_once():
    record = _record(rejected="erin.zip is not a zip file")
    for t in record.tests:
        t.kind, t.message = "rejected", "Your submission was not graded: erin.zip is not a zip file."
    feedback = feedback_markdown(record)
    assert feedback.count("is not a zip file") == 1
    assert [t["name"] for t in gradescope_results(record)["tests"]] == ["01_rmsnorm: not graded", "02_rope: not graded", "03_lora: not graded"]
