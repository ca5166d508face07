"""The course on a GPU: every module's public and hidden suites, on `cuda`, against the references, the stubs,
the mutants and the alternatives; one section of benchmarks/RESULTS.md says what passed.

    python benchmarks/gpu_check.py                           # every module on cuda; writes the section
    python benchmarks/gpu_check.py --modules 01_rmsnorm,06_kv_cache
    python benchmarks/gpu_check.py --device cpu --modules 01_rmsnorm --no-write   # a dry run of the script

The suites' `device` fixture runs a test on each device it is given (grader/harness/plugin.py); here it is
given only `--device` (`--llmlab-device cuda`), so every device-parametrized test runs on the GPU and the
others, which take no device, run as always. The verdicts are those of the project's own suite
(tests/test_modules.py): the reference passes every test, the stub passes none, every mutant fails at least one
hidden test, every alternative passes them all. Each module runs in a process of its own (one CUDA context per
module; module 08 starts processes of its own). Without CUDA it says so and exits 0, writing nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from results_file import write_section  # noqa: E402

SECTION = "gpu check"
ON_DEVICE = r"[\[-]{device}[\]-]"  # a test's id names its device among its parameters: test_x[cuda] or [float32-cuda]


def check_module(name: str, device: str) -> dict:
    """Run one module's suites against every implementation on `device`, in this process; return the verdicts."""
    from grader.harness.course import get_module
    from grader.harness.runner import run_suite
    from mutation import load_catalogue

    module = get_module(name)
    suites = {kind: ROOT / ("exercises" if kind == "public" else "grader/hidden") / name for kind in ("public", "hidden")}
    device_args = ("--llmlab-device", device)
    on_device = re.compile(ON_DEVICE.format(device=device))
    report = {"module": name, "device": device, "checks": [], "failures": [], "device_tests": 0}
    start = time.perf_counter()

    def check(what: str, kind: str, root: Path, expect: str, *extra: str) -> None:
        result = run_suite([suites[kind]], root, (*device_args, *extra))
        if expect == "all pass":
            ok = bool(result.results) and not result.not_passed
            bad = [r.nodeid for r in result.not_passed] or ([] if result.results else ["nothing collected"])
        elif expect == "none pass":  # the stub: no free points
            ok = bool(result.results) and not result.with_outcome("passed", "skipped")
            bad = [r.nodeid for r in result.with_outcome("passed", "skipped")] or ([] if result.results else ["nothing collected"])
        else:  # "rejected": a mutant fails at least one hidden test
            ok = bool(result.results) and bool(result.not_passed)
            bad = [] if ok else ["every hidden test passes" if result.results else "nothing collected"]
        if what.startswith("reference"):
            report["device_tests"] += sum(bool(on_device.search(r.nodeid)) for r in result.results)
        report["checks"].append({"what": what, "ok": ok})
        if not ok:
            first = next((r.message.strip().splitlines()[0] for r in result.not_passed if r.message.strip()), "")
            report["failures"].append(f"{what}: {', '.join(bad[:3])}" + (f" ({first[:200]})" if first else ""))

    for kind in ("public", "hidden"):
        check(f"reference, {kind}", kind, ROOT / "solutions", "all pass")
        check(f"stub, {kind}", kind, ROOT / "exercises", "none pass")
    catalogue = load_catalogue(module)
    with tempfile.TemporaryDirectory() as tmp:
        for i, mutant in enumerate(catalogue.mutants):
            root = mutant.write_root(module, Path(tmp) / f"mutant{i}")
            check(f"mutant {mutant.name}", "hidden", root, "rejected", "--maxfail=1")
        for i, alternative in enumerate(catalogue.alternatives):
            root = alternative.write_root(module, Path(tmp) / f"alternative{i}")
            check(f"alternative {alternative.name}", "hidden", root, "all pass")
    report["seconds"] = time.perf_counter() - start
    return report


def run_module(name: str, device: str, timeout: float) -> dict:
    """`check_module` in a fresh interpreter: a CUDA context per module, and a hung module cannot stop the rest."""
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, __file__, "--one", name, "--device", device], cwd=ROOT, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"module": name, "device": device, "checks": [], "device_tests": 0, "seconds": time.perf_counter() - start,
                "failures": [f"stopped after {timeout:.0f} s"]}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
        return {"module": name, "device": device, "checks": [], "device_tests": 0, "seconds": time.perf_counter() - start,
                "failures": [f"the check itself failed (exit {done.returncode}): {' | '.join(tail)}"]}
    return json.loads(lines[-1])


def section(reports: list[dict], device: str, command: str) -> str:
    import torch

    name = torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or platform.machine()
    lines = [
        f"`{command}`",
        f"on {name} ({device}), torch {torch.__version__}"
        + (f", CUDA {torch.version.cuda}" if device == "cuda" else "") + f", {time.strftime('%Y-%m-%d %H:%M')}.",
        "Every module's public and hidden suites with `--llmlab-device " + device + "`: the reference passes every test, "
        "the stub none, every mutant fails a hidden test, every alternative passes them all.",
        "",
        "| module | tests on the device (reference) | reference | stub | mutants rejected | alternatives pass | seconds | verdict |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: | --- |",
    ]
    for r in reports:
        checks = r["checks"]
        ok = lambda prefix: [c["ok"] for c in checks if c["what"].startswith(prefix)]  # noqa: E731
        mutants, alternatives = ok("mutant "), ok("alternative ")
        verdict = "pass" if checks and all(c["ok"] for c in checks) and not r["failures"] else "FAIL"
        lines.append(
            f"| {r['module']} | {r['device_tests']} | {'pass' if ok('reference') and all(ok('reference')) else 'FAIL'} "
            f"| {'pass' if ok('stub') and all(ok('stub')) else 'FAIL'} | {sum(mutants)}/{len(mutants)} "
            f"| {sum(alternatives)}/{len(alternatives)} | {r['seconds']:.0f} | {verdict} |")
    failures = [f"- {r['module']}: {f}" for r in reports for f in r["failures"]]
    if failures:
        lines += ["", "What failed:", "", *failures]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="the device the suites' device-parametrized tests run on (default cuda; cpu: a dry run)")
    parser.add_argument("--modules", default="", help="comma-separated modules (default: every module with a reference)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one module may take (default 1800)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md", help="the results file to update")
    parser.add_argument("--no-write", action="store_true", help="print the section, leave the results file alone")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: check one module in this process, print JSON
    args = parser.parse_args(argv)

    if args.one:
        print(json.dumps(check_module(args.one, args.device)))
        return 0

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine (torch.cuda.is_available() is False): nothing run, "
              f"{args.out.name} left as it is. Run it on a machine with a GPU and the CUDA build of torch.")
        return 0
    from grader.harness.course import existing_modules, get_module

    modules = [get_module(m) for m in args.modules.split(",") if m] if args.modules else existing_modules()
    reports = []
    for module in modules:
        print(f"gpu_check: {module.name} on {args.device} ...", flush=True)
        report = run_module(module.name, args.device, args.timeout)
        status = "ok" if report["checks"] and not report["failures"] else "FAILED: " + "; ".join(report["failures"][:3])
        print(f"gpu_check: {module.name}: {len(report['checks'])} checks, {report['device_tests']} reference tests on "
              f"{args.device}, {report['seconds']:.0f} s, {status}", flush=True)
        reports.append(report)
    command = "python benchmarks/gpu_check.py" + ("" if argv is None and len(sys.argv) == 1 else " " + " ".join(sys.argv[1:] if argv is None else argv))
    text = section(reports, args.device, command)
    print("\n" + text)
    if not args.no_write:
        write_section(args.out, SECTION, f"CUDA: every suite on the GPU ({args.device})", text)
        print(f"\ngpu_check: wrote the '{SECTION}' section of {args.out}")
    return 0 if all(r["checks"] and not r["failures"] for r in reports) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    raise SystemExit(main())
