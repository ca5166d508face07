"""Every module's suites are themselves tested: the reference passes, the stub fails every test with a
teaching message, every mutant in tests/mutants/ is rejected by the hidden suite, and every correct
alternative passes it. Generic over modules: a new module only adds its folders and its catalogue."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import ast
import importlib.util

from grader.harness.course import REPO_ROOT, existing_modules
from grader.publish.stubs import stale_stubs
from mutation import CATALOGUES as CATALOGUE_DIR
from mutation import load_catalogue

MODULES = existing_modules()
MODULE_IDS = [m.name for m in MODULES]
KINDS = ["public", "hidden"]
MIN_MUTANTS = 8

CATALOGUES = [load_catalogue(m) for m in MODULES]
MUTANT_CASES = [pytest.param(c.module, mutant, id=f"{c.module.name}-{mutant.name}") for c in CATALOGUES for mutant in c.mutants]


def hidden_only(module) -> dict[str, str]:
    """`HIDDEN_ONLY` of a module's catalogue: mutant name -> why no fast, torch-only public test can catch it."""
    path = CATALOGUE_DIR / f"{module.name}.py"
    if not path.is_file():
        return {}
    spec = importlib.util.spec_from_file_location(f"hidden_only_{module.name}", path)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return dict(getattr(loaded, "HIDDEN_ONLY", {}))


HIDDEN_ONLY = {m.name: hidden_only(m) for m in MODULES}
PUBLIC_MUTANT_CASES = [pytest.param(c.module, mutant, id=f"{c.module.name}-{mutant.name}")
                       for c in CATALOGUES for mutant in c.mutants if mutant.name not in HIDDEN_ONLY[c.module.name]]
ALTERNATIVE_CASES = [pytest.param(c.module, alt, id=f"{c.module.name}-{alt.name}") for c in CATALOGUES for alt in c.alternatives]


def _summary(result) -> str:
    lines = [f"{r.outcome}: {r.nodeid}\n    " + r.message.strip().replace("\n", "\n    ")[:800] for r in result.results]
    return "\n".join(lines) or result.output[-3000:]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("module", MODULES, ids=MODULE_IDS)
def test_reference_passes_every_test(suites, module, kind):
    result = suites.run(module, kind, REPO_ROOT / "solutions")
    assert result.results, f"the {kind} suite of {module.name} collected no test"
    bad = result.not_passed
    assert not bad, f"the reference fails {len(bad)} {kind} test(s) of {module.name}:\n{_summary(result)}"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("module", MODULES, ids=MODULE_IDS)
def test_stub_fails_every_test(suites, module, kind):
    result = suites.run(module, kind, REPO_ROOT / "exercises")
    assert result.results, f"the {kind} suite of {module.name} collected no test"
    free = result.with_outcome("passed", "skipped")
    assert not free, (
        f"{len(free)} {kind} test(s) of {module.name} do not fail on the stub (free points):\n"
        + "\n".join(r.nodeid for r in free)
    )


@pytest.mark.parametrize("module", MODULES, ids=MODULE_IDS)
def test_stub_failures_teach(suites, module):
    """A learner running the public tests on the stub reads what to write and where, not a traceback."""
    result = suites.run(module, "public", REPO_ROOT / "exercises")
    for r in result.results:
        assert "is not implemented yet" in r.message, f"{r.nodeid} does not say what to implement:\n{r.message}"
        assert module.chapter in r.message, f"{r.nodeid} does not point to {module.chapter}:\n{r.message}"
        assert "Traceback" not in r.message


@pytest.mark.parametrize("module", MODULES, ids=MODULE_IDS)
def test_every_hidden_test_has_points(suites, module):
    result = suites.run(module, "hidden", REPO_ROOT / "solutions")
    missing = [r.nodeid for r in result.results if not r.points]
    assert not missing, f"hidden tests without @pytest.mark.points: {missing}"


@pytest.mark.parametrize("module", MODULES, ids=MODULE_IDS)
def test_module_is_complete(module):
    catalogue = load_catalogue(module)
    assert len(catalogue.mutants) >= MIN_MUTANTS, f"{module.name} has {len(catalogue.mutants)} mutants; at least {MIN_MUTANTS} are needed"
    assert (REPO_ROOT / module.chapter).is_file(), f"{module.name} has no chapter {module.chapter}"
    assert len({m.name for m in catalogue.mutants}) == len(catalogue.mutants), "mutant names must be unique"


@pytest.mark.parametrize("module, mutant", MUTANT_CASES)
def test_mutant_is_rejected_by_the_hidden_suite(suites, tmp_path, module, mutant):
    root = mutant.write_root(module, tmp_path)
    result = suites.run(module, "hidden", root, "--maxfail=1", cache=False)
    assert result.results, f"the hidden suite collected nothing against mutant {mutant.name}:\n{result.output[-2000:]}"
    assert result.not_passed, f"mutant {mutant.name!r} ({mutant.mistake}) passes every hidden test of {module.name}"


@pytest.mark.parametrize("module, alternative", ALTERNATIVE_CASES)
def test_correct_alternative_passes_the_hidden_suite(suites, tmp_path, module, alternative):
    root = alternative.write_root(module, tmp_path)
    result = suites.run(module, "hidden", root, cache=False)
    assert result.results and not result.not_passed, (
        f"a correct implementation written another way ({alternative.mistake}) fails:\n{_summary(result)}"
    )


def test_committed_stubs_are_generated_from_the_references():
    stale = stale_stubs()
    assert not stale, f"stubs out of date with their references: {[m.name for m in stale]}; run `llmlab stubs`"


HEAVY = ["transformers.modeling_utils", "peft", "bitsandbytes", "deepspeed", "accelerate"]

_PROBE = """
import json, sys, pytest
rc = pytest.main([sys.argv[1], "--impl", "solutions", "-q", "-p", "no:cacheprovider"])
print("HEAVY=" + json.dumps([m for m in json.loads(sys.argv[2]) if m in sys.modules]))
sys.exit(rc)
"""


@pytest.mark.parametrize("module", MODULES, ids=MODULE_IDS)
def test_public_suite_imports_no_heavy_library(module):
    """A learner's run costs little more than `import torch`: no peft, bitsandbytes, deepspeed or transformers models."""
    run = subprocess.run(
        [sys.executable, "-c", _PROBE, f"exercises/{module.name}", json.dumps(HEAVY)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    heavy = json.loads(run.stdout.rsplit("HEAVY=", 1)[1].splitlines()[0])
    assert not heavy, f"the public suite of {module.name} imports {heavy}: move those tests to the hidden suite"


@pytest.mark.parametrize("module, mutant", PUBLIC_MUTANT_CASES)
def test_mutant_fails_a_public_test(suites, tmp_path, module, mutant):
    """A learner whose public tests pass has none of the catalogued mistakes, except the hidden-only ones."""
    root = mutant.write_root(module, tmp_path)
    result = suites.run(module, "public", root, "--maxfail=1", cache=False)
    assert result.results, f"the public suite collected nothing against mutant {mutant.name}:\n{result.output[-2000:]}"
    assert result.not_passed, (
        f"mutant {mutant.name!r} ({mutant.mistake}) passes every public test of {module.name}: add a public test that "
        f"catches it, or list it in HIDDEN_ONLY of tests/mutants/{module.name}.py with the reason"
    )


@pytest.mark.parametrize("module", MODULES, ids=MODULE_IDS)
def test_public_suite_leaves_at_most_a_third_of_the_mutants_to_the_hidden_one(module):
    mutants = {m.name for m in load_catalogue(module).mutants}
    listed = HIDDEN_ONLY[module.name]
    unknown = sorted(set(listed) - mutants)
    assert not unknown, f"HIDDEN_ONLY of {module.name} names mutants its MUTANTS lack: {unknown}"
    assert all(isinstance(reason, str) and reason.strip() for reason in listed.values()), "each HIDDEN_ONLY entry gives its reason"
    assert 3 * len(listed) <= len(mutants), (
        f"{len(listed)} of the {len(mutants)} mutants of {module.name} are hidden-only: at most a third may be"
    )


@pytest.mark.parametrize("module", MODULES, ids=MODULE_IDS)
def test_public_tests_teach_with_checks_not_bare_asserts(module):
    """A bare `assert` shows pytest's introspection (internal objects, `llmlab_impl_...` names); public tests use
    `expect(condition, message)`, `assert_close` and friends, and each test has a one-line docstring."""
    for path in sorted((REPO_ROOT / "exercises" / module.name).glob("test_*.py")):
        tree = ast.parse(path.read_text())
        bare = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Assert)]
        assert not bare, f"{path.relative_to(REPO_ROOT)} has bare asserts at lines {bare}: use grader.harness.checks.expect"
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                doc = ast.get_docstring(node) or ""
                assert doc and "\n" not in doc.strip(), f"{path.name}::{node.name} needs a one-line docstring (the learner reads it)"
