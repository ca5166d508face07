"""LLM Lab benchmarks: learner feedback latency, grading speed and throughput, the project suite's time,
reference code against libraries.

    python benchmarks/run.py                 # everything (close to an hour); writes benchmarks/RESULTS.md, results.png
    python benchmarks/run.py --only grading  # one part: latency, grading, throughput, suite, kernels
    python benchmarks/run.py --repeats 5 --class-size 20
    python benchmarks/run.py --quick         # a smoke test in minutes: module 01 only, 1 repeat, a class of 2;
                                             # prints the tables, writes RESULTS.md only with --out

Each part rewrites its own section of RESULTS.md (benchmarks/results_file.py), headed by the command that
produced it, so one part can be measured again without erasing the others.

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

from grader.harness.course import existing_modules, get_module  # noqa: E402
from results_file import write_section  # noqa: E402

PY = sys.executable
LLMLAB = [PY, "-c", "import sys; from grader.cli import main; sys.exit(main())"]
ENV = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "NO_COLOR": "1"}
# Public tests that need more than torch, or processes, and why (the target does not apply to them).
LATENCY_EXEMPT = {
    "08_distributed_launch": "starts worker processes (each imports torch) for real collectives",
}
# The targets of issue 16 (grading speed and scale), on 2 cores.
GRADE_SECONDS, GRADE_OVER_TORCH = 30.0, 12.0  # one full submission, `llmlab grade --jobs 1`
SUITE_08_SECONDS = 15.0  # module 08's hidden suite against the reference
PER_MINUTE_JOBS_2 = 3.5  # a class graded with --jobs 2
PROJECT_SUITE_SECONDS = 15 * 60.0  # `pytest`, the project's own suite (what CI runs)
SEED = "1234"  # every grading run of a benchmark uses the same seed, so their grades can be compared


def wall(cmd: list[str], cwd: Path = ROOT, check: bool = True) -> float:
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    elapsed = time.perf_counter() - start
    if check and result.returncode not in (0,):
        raise RuntimeError(f"{' '.join(cmd)} exited {result.returncode}:\n{result.stdout[-3000:]}")
    return elapsed


def busy_cpu_seconds() -> float:
    """CPU seconds every core of the machine has spent busy since boot (all processes: /proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def interleaved(commands: dict[str, list[str]], repeats: int, cwd: Path = ROOT, cpu: dict | None = None) -> dict[str, float]:
    """Median wall time of each command, the commands run in turn `repeats` times (one warm-up round). With
    `cpu` (a dict), also the median machine-wide busy CPU seconds during each command, into `cpu`."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    busy: dict[str, list[float]] = {name: [] for name in commands}
    for round_ in range(repeats + 1):
        for name, cmd in commands.items():
            before = busy_cpu_seconds()
            elapsed = wall(cmd, cwd)
            if round_:  # round 0 warms the page cache
                times[name].append(elapsed)
                busy[name].append(busy_cpu_seconds() - before)
    if cpu is not None:
        cpu.update({name: statistics.median(values) for name, values in busy.items()})
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


def full_submission(dest: Path, modules) -> Path:
    """A submission that is the reference solutions, laid out like exercises/."""
    for module in modules:
        (dest / module.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "solutions" / module.name / module.file, dest / module.name / module.file)
    return dest


def verdict(ok: bool, target: str) -> str:
    return f"met ({target})" if ok else f"MISSED ({target})"


def grading(repeats: int, modules) -> list[dict]:
    modules = [m for m in modules if (ROOT / "grader" / "hidden" / m.name).is_dir()]
    names = ",".join(m.name for m in modules)
    with tempfile.TemporaryDirectory() as tmp:
        sub = full_submission(Path(tmp) / "class" / "learner", modules)
        commands = {"import torch": [PY, "-c", "import torch"]}
        commands.update({
            m.name: [PY, "-m", "pytest", f"grader/hidden/{m.name}", "--impl", str(sub), "-q", "-p", "no:cacheprovider"]
            for m in modules
        })
        commands["all hidden suites, one pytest"] = [PY, "-m", "pytest", *[f"grader/hidden/{m.name}" for m in modules],
                                                     "--impl", str(sub), "-q", "-p", "no:cacheprovider"]
        out = Path(tmp) / "grades"
        commands["llmlab grade (one submission)"] = [*LLMLAB, "grade", str(sub.parent), "--out", str(out), "--jobs", "1",
                                                     "--modules", names, "--seed", SEED, "--force", "--quiet"]
        first8 = [m.name for m in modules if m.name[:2] <= "08"]  # the modules there were when the targets were set
        if len(first8) < len(modules):
            commands["llmlab grade (01-08)"] = [*LLMLAB, "grade", str(sub.parent), "--out", str(Path(tmp) / "grades-8"), "--jobs", "1",
                                                "--modules", ",".join(first8), "--seed", SEED, "--force", "--quiet"]
        cpu: dict[str, float] = {}
        medians = interleaved(commands, repeats, cpu=cpu)
        # where the time of the last `llmlab grade` went, from its record
        record = json.loads((out / "learner" / "record.json").read_text())
    torch_s = medians["import torch"]
    direct = medians["all hidden suites, one pytest"]
    isolated = medians["llmlab grade (one submission)"]
    rows = [{"what": "`python -c 'import torch'` (the floor)", "seconds": torch_s, "ratio": 1.0, "target": ""}]
    for m in modules:
        seconds = medians[m.name]
        target = verdict(seconds < SUITE_08_SECONDS, f"< {SUITE_08_SECONDS:g} s") if m.name == "08_distributed_launch" else ""
        rows.append({"what": f"`pytest grader/hidden/{m.name} --impl <reference>`", "seconds": seconds,
                     "ratio": seconds / torch_s, "target": target})
    rows.append({"what": "all hidden suites in one `pytest` run", "seconds": direct, "ratio": direct / torch_s, "target": ""})
    rows.append({"what": f"`llmlab grade --jobs 1`, one full submission ({len(modules)} module{'s' if len(modules) > 1 else ''})", "seconds": isolated,
                 "ratio": isolated / torch_s,
                 "target": verdict(isolated < GRADE_SECONDS, f"< {GRADE_SECONDS:g} s") + "; "
                 + verdict(isolated / torch_s <= GRADE_OVER_TORCH, f"<= {GRADE_OVER_TORCH:g}x import torch")
                 + f"; {isolated / direct:.2f}x the plain pytest run"})
    cores = len(os.sched_getaffinity(0))
    busy = cpu["llmlab grade (one submission)"]
    rows.append({"what": "busy CPU during that grade, every process (judge, collection, worker, tests, their launches)", "seconds": busy,
                 "ratio": busy / cores / torch_s,
                 "target": f"{busy / cores:.1f} s on {cores} cores even if all were busy all the time: the ratio is that floor's"})
    if "llmlab grade (01-08)" in medians:
        seconds = medians["llmlab grade (01-08)"]
        rows.append({"what": f"`llmlab grade --jobs 1`, the {len(first8)} modules of when the targets were set (01-08)", "seconds": seconds,
                     "ratio": seconds / torch_s, "target": verdict(seconds < GRADE_SECONDS, f"< {GRADE_SECONDS:g} s") + "; "
                     + verdict(seconds / torch_s <= GRADE_OVER_TORCH, f"<= {GRADE_OVER_TORCH:g}x import torch")})
    tests = record["tests"]
    in_tests = sum(t["duration"] for t in tests)
    for name in sorted({t["module"] for t in tests}):
        mine = [t["duration"] for t in tests if t["module"] == name]
        rows.append({"what": f"where it went: {name}, {len(mine)} tests in its runner", "seconds": sum(mine),
                     "ratio": None, "target": f"median {1000 * statistics.median(mine):.0f} ms per test"})
    if in_tests > record["seconds"]:  # the modules' runners ran side by side, in lanes
        rows.append({"what": "where it went: the runners' time summed (lanes side by side)", "seconds": in_tests, "ratio": None,
                     "target": f"{in_tests / record['seconds']:.2f}x the wall time of the grade ({record['seconds']:.1f} s)"})
    else:
        rows.append({"what": "where it went: the rest (sandbox and worker start: imports, collection; each module's import; the judge)",
                     "seconds": record["seconds"] - in_tests, "ratio": None, "target": ""})
    return rows


# 3. Throughput ----------------------------------------------------------------------------------------


def generated_class(dest: Path, size: int, modules, seed: int = 0) -> dict[str, int]:
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
        for module in modules:
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


def _points(out: Path) -> dict:
    """Every learner's outcome and points per test (what must not depend on --jobs)."""
    rows = json.loads((out / "grades.json").read_text())
    return {(r["learner"], r["module"], r["test"]): (r["outcome"], r["points"], (r.get("message") or "").split("\n")[0][:160])
            for r in rows}


def throughput(class_size: int, modules) -> list[dict]:
    rows = []
    names = ",".join(m.name for m in modules if (ROOT / "grader" / "hidden" / m.name).is_dir())
    with tempfile.TemporaryDirectory() as tmp:
        class_dir = Path(tmp) / "class"
        drawn = generated_class(class_dir, class_size, modules)
        print(f"benchmarks: generated class of {class_size}: {drawn} module files", flush=True)
        per_minute, grades = {}, {}
        for jobs in (1, 2):
            out = Path(tmp) / f"grades-{jobs}"
            seconds = wall([*LLMLAB, "grade", str(class_dir), "--out", str(out), "--jobs", str(jobs), "--modules", names,
                            "--seed", SEED, "--quiet"])
            per_minute[jobs] = class_size / seconds * 60
            grades[jobs] = _points(out)
            target = verdict(per_minute[jobs] >= PER_MINUTE_JOBS_2, f">= {PER_MINUTE_JOBS_2:g}/min") if jobs == 2 else ""
            rows.append({"what": f"`llmlab grade CLASS --jobs {jobs}`, {class_size} submissions", "seconds": seconds,
                         "ratio": None, "target": f"{per_minute[jobs]:.1f} submissions/min; {target}".rstrip("; ")})
        rows.append({"what": "scaling --jobs 2 over --jobs 1", "seconds": None, "ratio": per_minute[2] / per_minute[1],
                     "target": "2 cores: at most 2.0"})
        differ = sorted(key for key in grades[1].keys() | grades[2].keys()
                        if grades[1].get(key, ())[:2] != grades[2].get(key, ())[:2])
        rows.append({"what": f"grades of --jobs 1 and --jobs 2 ({len(grades[1])} tests)", "seconds": None, "ratio": None,
                     "target": "identical" if not differ else f"DIFFERENT ({len(differ)} tests)"})
        for key in differ[:5]:  # what differed, to find the test whose verdict depends on the load
            one, two = grades[1].get(key, ("-", 0, "")), grades[2].get(key, ("-", 0, ""))
            rows.append({"what": f"differs: {' '.join(key)}", "seconds": None, "ratio": None,
                         "target": f"--jobs 1: {one[0]} {one[2]!r}; --jobs 2: {two[0]} {two[2]!r}"})
    return rows


# 4. The project's own suite ---------------------------------------------------------------------------


def project_suite() -> list[dict]:
    """`pytest -n auto`, as CI runs it: its wall time, and where it went, file by file (from JUnit XML: test time summed over the workers)."""
    import xml.etree.ElementTree as ET

    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "suite.xml"
        start = time.perf_counter()
        done = subprocess.run([PY, "-m", "pytest", "-n", "auto", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}"], cwd=ROOT, env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        seconds = time.perf_counter() - start
        by_file: dict[str, list[float]] = {}
        if xml.is_file():
            for case in ET.parse(xml).getroot().iter("testcase"):
                name = case.get("classname", "").split(".")[-1] + ".py"
                by_file.setdefault(name, []).append(float(case.get("time", 0.0)))
    summary = (done.stdout.strip().splitlines() or ["no output"])[-1]
    rows = [{"what": "`pytest -n auto` (the whole project suite, one run, as CI runs it)", "seconds": seconds, "ratio": None,
             "target": verdict(seconds < PROJECT_SUITE_SECONDS, f"< {PROJECT_SUITE_SECONDS / 60:g} min") + f"; {summary}"}]
    for name, times in sorted(by_file.items(), key=lambda item: -sum(item[1])):
        rows.append({"what": f"where it went: tests/{name}, {len(times)} tests", "seconds": sum(times), "ratio": None,
                     "target": ""})
    return rows


# 5. Reference code against the libraries ------------------------------------------------------------


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


TITLES = {
    "latency": "1. Learner feedback: public tests against the reference, over `import torch`",
    "grading": "2. Hidden grading: one full submission, over `import torch`",
    "throughput": "3. Throughput: a class of generated submissions",
    "suite": "4. The project's own suite (`pytest -n auto`, what CI runs)",
    "kernels": "5. Reference code against the libraries (forward + backward, CPU)",
    "kv cache": "5b. Greedy generation with and without the KV cache",
    "flash memory": "5c. FlashAttention's tiling: peak memory of one forward, naive against tiled (CPU, a fresh process each)",
}
PARTS = ["latency", "grading", "throughput", "suite", "kernels"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=PARTS, action="append", help="run this part only (repeatable)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved runs per median (grading: half as many)")
    parser.add_argument("--class-size", type=int, default=20, help="submissions in the generated class (throughput)")
    parser.add_argument("--modules", default="", help="comma-separated modules for grading and throughput (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: --repeats 1 --class-size 2 --modules 01_rmsnorm --only grading --only throughput; "
                             "writes nothing unless --out is given")
    parser.add_argument("--out", type=Path, default=None, help="folder of RESULTS.md and results.png (default benchmarks/)")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.class_size = 1, 2
        args.modules = args.modules or "01_rmsnorm"
        args.only = args.only or ["grading", "throughput"]
    out = args.out or (None if args.quick else ROOT / "benchmarks")
    parts = args.only or PARTS
    modules = [get_module(m) for m in args.modules.split(",") if m] if args.modules else existing_modules()
    command = "python benchmarks/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    machine = f"{platform.machine()} with {os.cpu_count()} cores, Python {platform.python_version()}"
    sections: dict[str, list[dict]] = {}
    notes: dict[str, str] = {}
    for part in parts:
        print(f"benchmarks: {part} ...", flush=True)
        start = time.perf_counter()
        repeats = args.repeats
        if part == "latency":
            sections["latency"] = latency(repeats)
        elif part == "grading":
            repeats = max(1, args.repeats // 2)
            sections["grading"] = grading(repeats, modules)
        elif part == "throughput":
            repeats = 1
            sections["throughput"] = throughput(args.class_size, modules)
        elif part == "suite":
            repeats = 1
            sections["suite"] = project_suite()
        elif part == "kernels":
            rows = kernels(repeats)
            sections["kernels"] = [r for r in rows if not r["what"].endswith(("new tokens", "(peak memory)"))]
            sections["kv cache"] = [r for r in rows if r["what"].endswith("new tokens")]
            sections["flash memory"] = [r for r in rows if r["what"].endswith("(peak memory)")]
            for extra in ("kv cache", "flash memory"):
                notes[extra] = f"`{command.strip()}` on {machine}, {time.strftime('%Y-%m-%d %H:%M')}."
        notes[part] = (f"`{command.strip()}` on {machine}, {time.strftime('%Y-%m-%d %H:%M')}; "
                       + (f"medians of {repeats} interleaved runs; ratios side by side." if repeats > 1 else "one run."))
        print(f"benchmarks: {part} took {time.perf_counter() - start:.0f} s", flush=True)
    for name, rows in sections.items():
        text = f"{notes[name]}\n\n{table(rows)}"
        print(f"\n## {TITLES[name]}\n\n{text}")
        if out is not None:
            write_section(out / "RESULTS.md", name, TITLES[name], text)
    if out is not None:
        if {"latency", "kernels"} & set(sections):
            plot(sections, out / "results.png")
        print(f"\nbenchmarks: wrote {out / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
