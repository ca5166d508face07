"""The integrity snapshot (grader/judge/integrity.py) on its own: each way of changing what a verdict goes
through is reported, and an honest test changes nothing.

One process takes the snapshot as the worker does and installs the test processes' audit hook; each
scenario runs in a fork of it (as each test runs in a fork of the module process), and reports what
`Snapshot.changed()` found. The end-to-end view, with real submissions, is tests/test_hostile.py.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from grader.harness.course import REPO_ROOT

SCENARIOS = {
    # what a learner's file may do: nothing a verdict depends on changes
    "honest": (
        "import torch\n"
        "def f(a=1): return a\n"
        "f.__defaults__ = (2,)\n"
        "torch.ones(3).abs().sum()\n"
        "class Equal:\n"  # an unhashable object whose class is assigned: the same audit event as a function's setters
        "    def __eq__(self, other): return True\n"
        "class Other(Equal): pass\n"
        "Equal().__class__ = Other"
    ),
    # a function's code and defaults: set through setters that raise audit events
    "code": "checks.assert_close.__code__ = (lambda *args, **kwargs: None).__code__",
    "defaults": "checks.assert_close.__kwdefaults__ = {}",
    "defaults that claim to equal anything": (
        "class Liar:\n"
        "    def __eq__(self, other):\n"
        "        return True\n"
        "    __hash__ = None\n"
        "checks.assert_close.__kwdefaults__ = {name: Liar() for name in checks.assert_close.__kwdefaults__}"
    ),
    # the keyword defaults' dict edited in place: no setter, no audit event
    "keyword defaults in place": "checks.assert_close.__kwdefaults__['tol'] = tolerances.Tolerance(1e9, 1e9)",
    # a classmethod's function, swapped by calling its __init__ again: no setter, no audit event
    "classmethod re-initialised": (
        "import _pytest.runner\n"
        "wrapper = vars(_pytest.runner.CallInfo)['from_call']\n"
        "type(wrapper).__init__(wrapper, lambda cls, func, when, reraise=None: None)"
    ),
    # a closure's variable: set without an audit event
    "closure": "torch.Tensor.__rsub__.__closure__[0].cell_contents = lambda *args: None",
    # an immutable type's dict, reached through its read-only mappingproxy
    "immutable type": (
        "class Catch:\n"
        "    def __eq__(self, other):\n"
        "        Catch.found = other\n"
        "        return True\n"
        "    __hash__ = None\n"
        "torch._C.TensorBase.__dict__ == Catch()\n"
        "Catch.found['abs'] = lambda self: torch.zeros_like(self)"
    ),
    "module attribute": "torch.isclose = lambda *args, **kwargs: True",
    "table in place": "tolerances._DEVICE_FACTOR['cpu'] = 1e9",
}
EXPECTED = {
    "honest": [],
    "code": ["grader.harness.checks.assert_close (its code or defaults)"],
    "defaults": ["grader.harness.checks.assert_close (its code or defaults)"],
    "defaults that claim to equal anything": ["grader.harness.checks.assert_close (its code or defaults)"],
    "keyword defaults in place": ["grader.harness.checks.assert_close.__kwdefaults__.tol"],
    "classmethod re-initialised": ["_pytest.runner.CallInfo.from_call (the function it wraps)"],
    "closure": ["torch.Tensor.__rsub__ (its closure)"],
    "immutable type": ["torch._C.TensorBase.abs"],
    "module attribute": ["torch.isclose"],
    "table in place": ["grader.harness.tolerances._DEVICE_FACTOR (contents)"],
}

SCRIPT = """
import json, os, sys
import torch
import _pytest.runner
import grader.harness.checks as checks
import grader.harness.tolerances as tolerances
from grader.judge.integrity import Snapshot, install_audit_hook

scenarios, hooked = json.loads(sys.argv[1]), sys.argv[2] == "hooked"
grader_modules = [m for name, m in sorted(sys.modules.items()) if name.startswith("grader.")]
snapshot = Snapshot(grader_modules, [])
if hooked:
    install_audit_hook("/nonexistent", os._exit, snapshot)
found = {}
for name, code in scenarios.items():
    read_end, write_end = os.pipe()
    if os.fork() == 0:
        exec(compile(code, "/nonexistent/attack.py", "exec"), {"torch": torch, "checks": checks, "tolerances": tolerances})
        os.write(write_end, json.dumps(snapshot.changed()).encode())
        os._exit(0)
    os.close(write_end)
    found[name] = json.loads(os.read(read_end, 1 << 20) or b"null")
    os.wait()
print(json.dumps(found))
"""


@pytest.fixture(scope="module", params=["hooked", "unhooked"])
def found(request) -> dict:
    """What the check found after each scenario, with the test processes' audit hook and without it."""
    done = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(SCENARIOS), request.param], capture_output=True,
                          text=True, timeout=120, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_each_change_is_reported_and_nothing_else(found, scenario):
    """The change is named; anything else named is the same object under another name (a closure that
    torch's legacy tensor types share with torch.Tensor)."""
    assert set(EXPECTED[scenario]) <= set(found[scenario]), found[scenario]
    suffixes = tuple("." + name.rsplit(".", 1)[1] for name in EXPECTED[scenario])
    assert all(name.endswith(suffixes) for name in found[scenario]), found[scenario]
