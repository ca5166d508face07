"""What grading a class writes: a record per learner, their feedback and Gradescope results, the gradebook.

`DIR/<learner>/{results.json,feedback.md,record.json}` per learner (record.json last: it marks the learner
graded, so a rerun resumes), `DIR/grades.json` (every test of every learner) and `DIR/gradebook.csv` (a row
per learner, a column per module), each written atomically; and the summary table printed at the end.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from grader.harness.course import Module, find_module
from grader.harness.files import atomic_write

RECORD = "record.json"


@dataclass
class TestOutcome:
    __test__ = False  # not a pytest test class, whatever its name
    module: str
    test: str
    outcome: str  # passed, failed, error, skipped
    points: float
    max_points: float
    message: str = ""
    kind: str = ""  # assertion, todo, load, timeout, exited, memory, exception, tamper, missing, ...
    duration: float = 0.0


@dataclass
class Record:
    learner: str
    submission: str
    sha256: str
    modules: list[str]
    tests: list[TestOutcome]
    ignored: list[str]
    review: list[str]
    isolation: str
    seconds: float
    worker_error: str = ""
    rejected: str = ""

    def module_points(self, module: str) -> float:
        return round(sum(t.points for t in self.tests if t.module == module), 4)

    def module_max(self, module: str) -> float:
        return round(sum(t.max_points for t in self.tests if t.module == module), 4)

    @property
    def total(self) -> float:
        return round(sum(t.points for t in self.tests), 4)

    @property
    def max_total(self) -> float:
        return round(sum(t.max_points for t in self.tests), 4)

    def missing(self, module: str) -> bool:
        """The learner did not hand this module in: every one of its tests failed as "missing"."""
        tests = [t for t in self.tests if t.module == module]
        return bool(tests) and all(t.kind == "missing" for t in tests)

    @classmethod
    def from_json(cls, data: dict) -> "Record":
        return cls(**{**data, "tests": [TestOutcome(**t) for t in data["tests"]]})


def not_handed_in(module: str) -> str:
    """The one line that stands for every test of a module the learner did not hand in."""
    found = find_module(module)
    file = f"{module}/{found.file}" if found else f"{module}/"
    return f"Not handed in: there is no {file} in your submission, so its tests did not run."


def gradescope_results(record: Record) -> dict:
    """Gradescope's autograder schema: https://gradescope-autograders.readthedocs.io/en/latest/specs/

    A module the learner did not hand in is one entry (its points, zero), not one per test.
    """
    tests = []
    for module in dict.fromkeys([*record.modules, *(t.module for t in record.tests)]):
        if record.rejected or record.missing(module):
            name, output = (("not graded", f"Your submission was not graded: {record.rejected}.") if record.rejected
                            else ("not handed in", not_handed_in(module)))
            tests.append({"name": f"{module}: {name}", "score": 0.0, "max_score": record.module_max(module),
                          "status": "failed", "output": output, "visibility": "visible"})
            continue
        tests += [
            {
                "name": f"{t.module}: {t.test}",
                "score": t.points,
                "max_score": t.max_points,
                "status": "passed" if t.outcome == "passed" else "failed",
                "output": t.message,
                "visibility": "visible",
            }
            for t in record.tests if t.module == module
        ]
    output = f"{record.total:g} / {record.max_total:g} points."
    if record.rejected:
        output = f"Your submission was not graded: {record.rejected}.\n" + output
    if record.ignored:
        output += "\nIgnored files (only the module files are graded): " + ", ".join(record.ignored)
    return {"score": record.total, "execution_time": round(record.seconds, 1), "output": output, "tests": tests}


def feedback_markdown(record: Record) -> str:
    lines = [f"# Feedback for {record.learner}", "", f"**{record.total:g} / {record.max_total:g} points**", ""]
    if record.rejected:
        lines += [f"Your submission was not graded: {record.rejected}.", ""]
    lines += ["| module | points |", "| --- | --- |"]
    lines += [f"| {m} | {record.module_points(m):g} / {record.module_max(m):g}"
              f"{' (not handed in)' if record.missing(m) else ''} |" for m in record.modules]
    missing = [m for m in record.modules if record.missing(m)]
    if missing and not record.rejected:
        lines += ["", "Not handed in (no feedback per test): " + ", ".join(
            f"{m} (no {m}/{find_module(m).file if find_module(m) else ''})" for m in missing) + "."]
    for module in record.modules:
        failed = [t for t in record.tests if t.module == module and t.outcome != "passed"]
        if not failed or record.missing(module) or record.rejected:  # said once above, not once per test
            continue
        lines += ["", f"## {module}", ""]
        for t in failed:
            lines += [f"### `{t.test}` ({t.points:g} / {t.max_points:g})", "", "```text", t.message.strip(), "```", ""]
    if record.ignored:
        lines += ["", "## Files that were not graded", ""] + [f"- {name}" for name in record.ignored]
    return "\n".join(lines).rstrip() + "\n"


def write_learner(out: Path, record: Record) -> None:
    folder = out / record.learner
    atomic_write(folder / "results.json", json.dumps(gradescope_results(record), indent=2))
    atomic_write(folder / "feedback.md", feedback_markdown(record))
    atomic_write(folder / RECORD, json.dumps(asdict(record), indent=1))  # last: marks the learner graded


def load_record(out: Path, learner: str) -> Record | None:
    try:
        return Record.from_json(json.loads((out / learner / RECORD).read_text()))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def write_class(out: Path, records: list[Record], modules: list[Module]) -> None:
    names = [m.name for m in modules]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["learner", *names, "total", "max_total", "review"])
    for r in sorted(records, key=lambda r: r.learner):
        notes = ([f"rejected: {r.rejected}"] if r.rejected else []) + r.review
        writer.writerow([r.learner, *(f"{r.module_points(n):g}" for n in names), f"{r.total:g}", f"{r.max_total:g}",
                         "; ".join(notes)])
    atomic_write(out / "gradebook.csv", buffer.getvalue())
    grades = []
    for r in sorted(records, key=lambda r: r.learner):
        for t in r.tests:
            grades.append({"learner": r.learner, "module": t.module, "test": t.test, "outcome": t.outcome,
                           "points": t.points, "max_points": t.max_points, "message": t.message})
    atomic_write(out / "grades.json", json.dumps(grades, indent=1))


def summary_table(records: list[Record], modules: list[Module]) -> str:
    names = [m.name for m in modules]
    header = ["learner", *names, "total", "time", "review"]
    rows = []
    for r in sorted(records, key=lambda r: r.learner):
        rows.append([r.learner, *(f"{r.module_points(n):g}/{r.module_max(n):g}" for n in names),
                     f"{r.total:g}/{r.max_total:g}", f"{r.seconds:.1f}s", "rejected" if r.rejected else f"{len(r.review)} flag(s)" if r.review else ""])
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*row) for row in rows]
    if records:
        totals = [r.total for r in records]
        lines.append("")
        lines.append(f"learners: {len(records)}   mean: {sum(totals) / len(totals):.2f} / {records[0].max_total:g}")
        failures = []
        for n in names:
            count = sum(1 for r in records if r.module_points(n) < r.module_max(n))
            failed_tests = sum(1 for r in records for t in r.tests if t.module == n and t.outcome != "passed")
            failures.append(f"{n}: {count} learner(s), {failed_tests} test(s)")
        lines.append("not full marks, by module: " + "; ".join(failures))
        slowest = max(records, key=lambda r: r.seconds)
        lines.append(f"slowest submission: {slowest.learner} ({slowest.seconds:.1f}s)")
        for r in sorted(records, key=lambda r: r.learner):
            if r.rejected:
                lines.append(f"rejected: {r.learner}: {r.rejected}")
        flagged = [r.learner for r in records if r.review]
        if flagged:
            lines.append(f"flagged for review (see gradebook.csv): {', '.join(sorted(flagged))}")
    return "\n".join(lines)
