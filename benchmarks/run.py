"""LLM Lab benchmarks: learner feedback latency, grading throughput, reference code against libraries.

    python benchmarks/run.py                 # everything; writes benchmarks/RESULTS.md and results.png
    python benchmarks/run.py --only latency  # one part: latency, grading, throughput, kernels
    python benchmarks/run.py --repeats 5 --class-size 20

These machines are noisy (2 shared cores), so every number is a median over repeated runs, and every
comparison is a ratio of two things measured side by side, interleaved, in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from grader.harness.course import existing_modules  # noqa: E402

PY = sys.executable
LLMLAB = [PY, "-c", "import sys; from grader.cli import main; sys.exit(main())"]
ENV = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "NO_COLOR": "1"}
# Public tests that need more than torch, or processes, and why (the target does not apply to them).
LATENCY_EXEMPT = {
    "08_distributed_launch": "starts worker processes (each imports torch) for real collectives",
}


def wall(cmd: list[str], cwd: Path = ROOT, check: bool = True) -> float:
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    elapsed = time.perf_counter() - start
    if check and result.returncode not in (0,):
        raise RuntimeError(f"{' '.join(cmd)} exited {result.returncode}:\n{result.stdout[-3000:]}")
    return elapsed


def interleaved(commands: dict[str, list[str]], repeats: int, cwd: Path = ROOT) -> dict[str, float]:
    """Median wall time of each command, the commands run in turn `repeats` times (one warm-up round)."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for round_ in range(repeats + 1):
        for name, cmd in commands.items():
            elapsed = wall(cmd, cwd)
            if round_:  # round 0 warms the page cache
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


# 1. Learner feedback ---------------------------------------------------------------------------------


def latency(repeats: int) -> list[dict]:
    commands = {"import torch": [PY, "-c", "import torch"]}
    for module in existing_modules():
        commands[module.name] = [PY, "-m", "pytest", f"exercises/{module.name}", "--impl", "solutions", "-q",
                                 "-p", "no:cacheprovider"]
    medians = interleaved(commands, repeats)
    floor = medians.pop("import torch")
    rows = [{"what": "python -c 'import torch' (the floor)", "seconds": floor, "ratio": 1.0, "target": ""}]
    for name, seconds in medians.items():
        exempt = LATENCY_EXEMPT.get(name)
        ratio = seconds / floor
        verdict = f"exempt: {exempt}" if exempt else ("met (<= 1.5)" if ratio <= 1.5 else "MISSED (> 1.5)")
        rows.append({"what": f"pytest exercises/{name} --impl solutions", "seconds": seconds, "ratio": ratio,
                     "target": verdict})
    return rows


# 2. Hidden grading ------------------------------------------------------------------------------------


def full_submission(dest: Path) -> Path:
    """A submission that is the reference solutions, laid out like exercises/."""
    for module in existing_modules():
        (dest / module.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "solutions" / module.name / module.file, dest / module.name / module.file)
    return dest


def grading(repeats: int) -> list[dict]:
    modules = [m for m in existing_modules() if (ROOT / "grader" / "hidden" / m.name).is_dir()]
    with tempfile.TemporaryDirectory() as tmp:
        sub = full_submission(Path(tmp) / "class" / "learner")
        commands = {
            m.name: [PY, "-m", "pytest", f"grader/hidden/{m.name}", "--impl", str(sub), "-q", "-p", "no:cacheprovider"]
            for m in modules
        }
        commands["all hidden suites, one pytest"] = [PY, "-m", "pytest", *[f"grader/hidden/{m.name}" for m in modules],
                                                     "--impl", str(sub), "-q", "-p", "no:cacheprovider"]
        out = Path(tmp) / "grades"
        commands["llmlab grade (one submission)"] = [*LLMLAB, "grade", str(sub.parent), "--out", str(out),
                                                     "--force", "--quiet"]
        medians = interleaved(commands, repeats)
        # where the time of the last `llmlab grade` went, from its record
        record = json.loads((out / "learner" / "record.json").read_text())
    direct = medians["all hidden suites, one pytest"]
    isolated = medians["llmlab grade (one submission)"]
    rows = [{"what": f"pytest grader/hidden/{name} (reference)", "seconds": s, "ratio": None, "target": ""}
            for name, s in medians.items() if name in {m.name for m in modules}]
    rows.append({"what": "all hidden suites in one pytest run", "seconds": direct, "ratio": 1.0, "target": ""})
    rows.append({"what": "llmlab grade, one full submission", "seconds": isolated, "ratio": isolated / direct,
                 "target": "met (< 30 s)" if isolated < 30 else "MISSED (>= 30 s)"})
    tests = record["tests"]
    in_tests = sum(t["duration"] for t in tests)
    for name in sorted({t["module"] for t in tests}):
        mine = [t["duration"] for t in tests if t["module"] == name]
        rows.append({"what": f"where it went: {name}, {len(mine)} tests in forked children", "seconds": sum(mine),
                     "ratio": None, "target": f"median {1000 * statistics.median(mine):.0f} ms per test"})
    rows.append({"what": "where it went: worker start (namespaces, imports, collection), judge", "seconds":
                 record["seconds"] - in_tests, "ratio": None, "target": ""})
    return rows


# 3. Throughput ----------------------------------------------------------------------------------------


def generated_class(dest: Path, size: int, seed: int = 0) -> dict[str, int]:
    """A class mid-course, drawn with a fixed seed: each learner's file for each module is the reference
    (50%), one of the known mistakes of tests/mutants (30%), the untouched stub (15%), or missing (5%)."""
    import random

    sys.path.insert(0, str(ROOT / "tests"))
    from mutation import load_catalogue

    rng = random.Random(seed)
    drawn = {"reference": 0, "mutant": 0, "stub": 0, "missing": 0}
    for i in range(size):
        learner = dest / f"learner{i:02d}"
        learner.mkdir(parents=True)
        for module in existing_modules():
            kind = rng.choices(list(drawn), weights=[50, 30, 15, 5])[0]
            mutants = load_catalogue(module).mutants
            if kind == "mutant" and not mutants:
                kind = "reference"
            drawn[kind] += 1
            if kind == "missing":
                continue
            target = learner / module.name / module.file
            target.parent.mkdir(parents=True, exist_ok=True)
            if kind == "mutant":
                rng.choice(mutants).write_root(module, learner)
            else:
                shutil.copy(ROOT / ("solutions" if kind == "reference" else "exercises") / module.name / module.file, target)
    return drawn


def throughput(class_size: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        class_dir = Path(tmp) / "class"
        drawn = generated_class(class_dir, class_size)
        print(f"benchmarks: generated class of {class_size}: {drawn} module files", flush=True)
        per_minute = {}
        for jobs in (1, 2):
            out = Path(tmp) / f"grades-{jobs}"
            seconds = wall([*LLMLAB, "grade", str(class_dir), "--out", str(out), "--jobs", str(jobs),
                            "--quiet"])
            per_minute[jobs] = class_size / seconds * 60
            rows.append({"what": f"llmlab grade, {class_size} submissions, --jobs {jobs}", "seconds": seconds,
                         "ratio": None, "target": f"{per_minute[jobs]:.1f} submissions/min"})
        rows.append({"what": "scaling --jobs 2 over --jobs 1", "seconds": None, "ratio": per_minute[2] / per_minute[1],
                     "target": "2 cores: at most 2.0"})
    return rows


# 4. Reference code against the libraries ------------------------------------------------------------


KERNELS = ROOT / "benchmarks" / "kernels.py"


def kernels(repeats: int) -> list[dict]:
    result = subprocess.run([PY, str(KERNELS), "--json"], cwd=ROOT, env=ENV, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


# Report -------------------------------------------------------------------------------------------------


def table(rows: list[dict]) -> str:
    lines = ["| what | seconds (median) | ratio | target |", "| --- | ---: | ---: | --- |"]
    for r in rows:
        seconds = "" if r.get("seconds") is None else f"{r['seconds']:.3f}" if r["seconds"] < 1 else f"{r['seconds']:.2f}"
        ratio = "" if r.get("ratio") is None else f"{r['ratio']:.2f}"
        lines.append(f"| {r['what']} | {seconds} | {ratio} | {r.get('target', '')} |")
    return "\n".join(lines)


def plot(sections: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [name for name in ("latency", "kernels", "kv cache") if sections.get(name)]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), dpi=100, constrained_layout=True, squeeze=False)
    for ax, name in zip(axes[0], panels):
        rows = [r for r in sections[name] if r.get("ratio") is not None]
        if name == "kv cache":
            xs = [int(r["what"].split()[0]) for r in rows]
            ax.plot(xs, [r["ratio"] for r in rows], "o-")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("new tokens")
            ax.set_ylabel("speed-up of the KV cache")
            ax.set_title("generate(): without cache / with cache")
            continue
        labels = [r["what"].replace("pytest exercises/", "").replace(" --impl solutions", "") for r in rows]
        ax.barh(labels, [r["ratio"] for r in rows], color="#1f77b4")
        ax.axvline(1.5, color="#d62728", ls="--", label="target 1.5")
        ax.invert_yaxis()
        ax.legend()
        ax.set_title({"latency": "public tests / import torch", "kernels": "reference / library time"}[name])
    fig.savefig(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["latency", "grading", "throughput", "kernels"], action="append")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--class-size", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks")
    args = parser.parse_args(argv)
    parts = args.only or ["latency", "grading", "throughput", "kernels"]
    sections: dict[str, list[dict]] = {}
    for part in parts:
        print(f"benchmarks: {part} ...", flush=True)
        start = time.perf_counter()
        if part == "latency":
            sections["latency"] = latency(args.repeats)
        elif part == "grading":
            sections["grading"] = grading(max(1, args.repeats // 2))
        elif part == "throughput":
            sections["throughput"] = throughput(args.class_size)
        elif part == "kernels":
            rows = kernels(args.repeats)
            sections["kernels"] = [r for r in rows if not r["what"].endswith(("new tokens", "(peak memory)"))]
            sections["kv cache"] = [r for r in rows if r["what"].endswith("new tokens")]
            sections["flash memory"] = [r for r in rows if r["what"].endswith("(peak memory)")]
        print(f"benchmarks: {part} took {time.perf_counter() - start:.0f} s", flush=True)
    titles = {
        "latency": "1. Learner feedback: public tests against the reference, over `import torch`",
        "grading": f"2. Hidden grading: one full submission (medians of {max(1, args.repeats // 2)} runs: each takes minutes)",
        "throughput": "3. Throughput: a class of generated submissions",
        "kernels": "4. Reference code against the libraries (forward + backward, CPU)",
        "kv cache": "4b. Greedy generation with and without the KV cache",
        "flash memory": "4c. FlashAttention's tiling: peak memory of one forward, naive against tiled (CPU, a fresh process each)",
    }
    text = [
        "# Benchmark results",
        "",
        f"`python benchmarks/run.py {' '.join(sys.argv[1:] if argv is None else argv)}`".replace(" `", "`"),
        f"on {platform.machine()} with {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}. Medians of {args.repeats} interleaved runs; ratios are side by side.",
        "",
    ]
    for name, rows in sections.items():
        text += [f"## {titles[name]}", "", table(rows), ""]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "RESULTS.md").write_text("\n".join(text))
    plot(sections, args.out / "results.png")
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
