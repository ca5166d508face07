"""Flake check: grade the reference and every correct alternative of a module many times; any lost point is a flake.

    python benchmarks/flakes.py                                   # module 08, 20 rounds, through `llmlab grade --jobs 2`
    python benchmarks/flakes.py --rounds 5 --module 03_lora
    python benchmarks/flakes.py --pytest                          # plain `pytest grader/hidden/<module> --impl ...` runs instead
    python benchmarks/flakes.py --in-process --rounds 200 --module 12_tiny_llama   # many seeds: one pytest process per implementation

Each round grades a class made of the reference and the alternatives of tests/mutants/<module>.py (every one of
them correct, so every one must get full marks), with the grader's own limits, sandbox and parallel jobs: the
conditions under which a flaky test would cost a learner points. Every lost point is listed with its message, and
the numbers go to a section of benchmarks/RESULTS.md (benchmarks/results_file.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from grader.harness.course import get_module  # noqa: E402
from mutation import load_catalogue  # noqa: E402
from results_file import write_section  # noqa: E402

PY = sys.executable
ENV = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "NO_COLOR": "1"}


def make_class(dest: Path, module) -> list[str]:
    """One learner per correct implementation: `reference`, then each alternative by name."""
    (dest / "reference" / module.name).mkdir(parents=True)
    shutil.copy(ROOT / "solutions" / module.name / module.file, dest / "reference" / module.name / module.file)
    names = ["reference"]
    for alternative in load_catalogue(module).alternatives:
        alternative.write_root(module, dest / alternative.name)
        names.append(alternative.name)
    return names


def grade_round(class_dir: Path, out: Path, module, jobs: int, seed: int) -> tuple[float, dict[str, list[dict]]]:
    """One `llmlab grade` of the class; the tests each learner lost (none, for correct code)."""
    start = time.perf_counter()
    done = subprocess.run([PY, "-m", "grader.cli", "grade", str(class_dir), "--out", str(out), "--jobs", str(jobs),
                           "--modules", module.name, "--seed", str(seed), "--force", "--quiet"],
                          cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise RuntimeError(f"llmlab grade exited {done.returncode}:\n{done.stdout[-3000:]}")
    lost: dict[str, list[dict]] = {}
    for row in json.loads((out / "grades.json").read_text()):
        if row["outcome"] != "passed":
            lost.setdefault(row["learner"], []).append(row)
    return seconds, lost


def pytest_round(class_dir: Path, names: list[str], module, seed: int) -> tuple[float, dict[str, list[dict]]]:
    """Plain pytest runs of the hidden suite, one per implementation; a failed run's summary lines."""
    start = time.perf_counter()
    lost: dict[str, list[dict]] = {}
    for name in names:
        done = subprocess.run([PY, "-m", "pytest", f"grader/hidden/{module.name}", "--impl", str(class_dir / name), "-q",
                               "-p", "no:cacheprovider", "-rfE", "--llmlab-seed", str(seed)],
                              cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if done.returncode != 0:
            failed = [line for line in done.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
            lost[name] = [{"test": line, "message": done.stdout[-1500:]} for line in failed or ["(no summary)"]]
    return time.perf_counter() - start, lost


# One process per implementation runs the hidden suite once per seed (pytest.main in a loop: torch and the libraries are
# imported once, a seed costs about what its tests cost), and prints one JSON line per failed test.
_SEEDS_LOOP = """
import contextlib, io, json, sys
import pytest
suite, impl, first, last = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
class Failures:
    def pytest_runtest_logreport(self, report):
        if report.failed:
            message = " ".join(str(report.longrepr).split())[:300]
            print(json.dumps({"seed": seed, "test": report.nodeid.split("::", 1)[1], "message": message}), file=sys.stderr, flush=True)
for seed in range(first, last):
    with contextlib.redirect_stdout(io.StringIO()):
        pytest.main(["-q", "-p", "no:cacheprovider", suite, "--impl", impl, "--llmlab-seed", str(seed)], plugins=[Failures()])
"""


def in_process_rounds(class_dir: Path, names: list[str], module, rounds: int) -> tuple[list[float], dict[int, dict[str, list[dict]]]]:
    """Every implementation over seeds 1001..1000+rounds, each in one process; the tests lost, by seed and learner."""
    times, by_seed = [], {}
    for name in names:
        start = time.perf_counter()
        done = subprocess.run([PY, "-c", _SEEDS_LOOP, f"grader/hidden/{module.name}", str(class_dir / name), "1001", str(1001 + rounds)],
                              cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        times.append((time.perf_counter() - start) / rounds)
        for line in done.stderr.splitlines():
            if line.startswith("{"):
                row = json.loads(line)
                by_seed.setdefault(row["seed"], {}).setdefault(name, []).append(row)
    return times, by_seed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--module", default="08_distributed_launch")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=2, help="llmlab grade --jobs (default 2: two learners at once)")
    parser.add_argument("--pytest", action="store_true", help="plain pytest runs of the hidden suite instead of llmlab grade")
    parser.add_argument("--in-process", action="store_true",
                        help="the hidden suite once per seed, one process per implementation: for surveying many seeds")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks", help="folder of RESULTS.md (default benchmarks/)")
    args = parser.parse_args(argv)
    module = get_module(args.module)
    failures: Counter = Counter()
    examples: dict[str, str] = {}
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        class_dir = Path(tmp) / "class"
        names = make_class(class_dir, module)
        if args.in_process:
            per_seed, by_seed = in_process_rounds(class_dir, names, module, args.rounds)
        for round_ in range(1, args.rounds + 1):
            seed = 1000 + round_  # a different draw of the hidden inputs each round
            if args.in_process:
                seconds, lost = per_seed[0], by_seed.get(seed, {})
            elif args.pytest:
                seconds, lost = pytest_round(class_dir, names, module, seed)
            else:
                seconds, lost = grade_round(class_dir, Path(tmp) / f"grades-{round_}", module, args.jobs, seed)
            times.append(seconds)
            for learner, rows in lost.items():
                for row in rows:
                    key = f"{learner}: {row['test']}"
                    failures[key] += 1
                    examples.setdefault(key, " ".join(str(row.get("message", "")).split())[:300])
            print(f"round {round_}/{args.rounds}: {seconds:.0f} s, {sum(len(r) for r in lost.values())} test(s) lost"
                  + "".join(f"\n  {learner}: {row['test']}" for learner, rows in lost.items() for row in rows), flush=True)
    how = ("the hidden suite once per seed, inside one pytest process per implementation (seconds: the reference's, per seed)" if args.in_process
           else "plain `pytest grader/hidden/...` per implementation" if args.pytest else f"`llmlab grade --jobs {args.jobs}`")
    mode = " --in-process" if args.in_process else " --pytest" if args.pytest else f" --jobs {args.jobs}"
    command = f"python benchmarks/flakes.py --module {module.name} --rounds {args.rounds}{mode}"
    lines = [
        f"`{command}` on {platform.machine()} with {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}: {args.rounds} rounds, each {how} over the reference and the "
        f"{len(names) - 1} alternatives of tests/mutants/{module.name}.py ({', '.join(names[1:])}), a new seed each round; "
        f"a round took {sorted(times)[len(times) // 2]:.2g} s (median).",
        "",
        f"Tests lost by correct code: **{sum(failures.values())}** in {args.rounds * len(names)} graded runs.",
    ]
    if failures:
        lines += ["", "| implementation: test | times lost | first message |", "| --- | ---: | --- |"]
        lines += [f"| {key} | {count} | {examples[key].replace('|', '/')} |" for key, count in failures.most_common()]
    write_section(args.out / "RESULTS.md", f"flakes {module.name}", f"Flakes: correct code of {module.name} graded {args.rounds} times",
                  "\n".join(lines))
    print("\n".join(lines))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
