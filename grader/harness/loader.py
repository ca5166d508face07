"""Load the learner's file of a module from an implementation root (`--impl`).

Tests never `import rmsnorm`: the same test file must grade `exercises/`, `solutions/` or any
submission folder, so the harness loads `<root>/<module>/<file>` under a name unique to that root.
A file that is missing or does not import raises `ImplementationLoadError` with the reason in words,
at the moment a test asks for it, so one broken file fails its tests instead of the whole run.

Processes started with multiprocessing's "spawn" (module 08 launches workers) unpickle the learner's
functions by module name, in a fresh interpreter that never ran this loader. So that `import <unique
name>` works there too, each loaded file also gets a two-line shim module of that name in a private
folder appended to `sys.path` (spawn hands the parent's `sys.path` to its children).
"""

from __future__ import annotations

import ast
import atexit
import hashlib
import importlib.util
import shutil
import sys
import tempfile
import traceback
from pathlib import Path
from types import ModuleType

from grader.harness.course import Module
from grader.harness.errors import ImplementationLoadError

_cache: dict[Path, ModuleType | ImplementationLoadError] = {}
# The shim folder, created on first use. Kept in a list that is filled, never rebound: the grader's
# sandbox checks that no global of the harness changes identity while a learner's code runs.
_shim_dirs: list[Path] = []

_SHIM = """# Written by grader/harness/loader.py: loads the learner's file under this module's name in spawned processes.
import importlib.util, sys
_spec = importlib.util.spec_from_file_location(__name__, {path!r})
sys.modules[__name__] = _module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
"""


def module_path(root: Path, module: Module) -> Path:
    return Path(root) / module.name / module.file


def _unique_name(path: Path, module: Module) -> str:
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    return f"llmlab_impl_{digest}_{module.stem}"


def load_implementation(root: Path, module: Module) -> ModuleType:
    """Import `<root>/<module.name>/<module.file>` once per run and return it."""
    path = module_path(root, module).resolve()
    cached = _cache.get(path)
    if isinstance(cached, ImplementationLoadError):
        raise cached
    if cached is not None:
        _shim_dir_on_sys_path()  # pytest's own tests restore sys.path between runs; the cache outlives them
        return cached
    try:
        loaded = _import_file(path, module)
    except ImplementationLoadError as error:
        _cache[path] = error
        raise
    _cache[path] = loaded
    return loaded


def _import_file(path: Path, module: Module) -> ModuleType:
    if not path.is_file():
        raise ImplementationLoadError(
            f"there is no file {module.name}/{module.file} under {path.parent.parent}: "
            f"the tests of {module.name} need it (is the folder or the file named differently?)"
        )
    name = _unique_name(path, module)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[name] = loaded  # dataclasses, pickling and typing look the module up by name
    try:
        spec.loader.exec_module(loaded)
    except SyntaxError as error:
        del sys.modules[name]
        raise ImplementationLoadError(
            f"{module.name}/{module.file} has a syntax error at line {error.lineno}: {error.msg}\n"
            f"    {(error.text or '').rstrip()}"
        ) from None
    except BaseException as error:  # an import error, or any exception raised at import time
        del sys.modules[name]
        where = _last_frame_in(path, error)
        raise ImplementationLoadError(
            f"{module.name}/{module.file} raised {type(error).__name__} while being imported{where}: {error}"
        ) from None
    _importable_in_spawned_processes(name, path)
    return loaded


def _importable_in_spawned_processes(name: str, path: Path) -> None:
    """Write the shim `<name>.py` that loads `path`, in a private folder on `sys.path`."""
    if not _shim_dirs:
        _shim_dirs.append(Path(tempfile.mkdtemp(prefix="llmlab-impl-")))
        atexit.register(shutil.rmtree, _shim_dirs[0], ignore_errors=True)
    _shim_dir_on_sys_path()
    (_shim_dirs[0] / f"{name}.py").write_text(_SHIM.format(path=str(path)))


def shim_dir() -> Path | None:
    """The folder of the shims (None before the first load)."""
    return _shim_dirs[0] if _shim_dirs else None


def _shim_dir_on_sys_path() -> None:
    if _shim_dirs and str(_shim_dirs[0]) not in sys.path:
        sys.path.append(str(_shim_dirs[0]))


def _last_frame_in(path: Path, error: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(error.__traceback__) if Path(f.filename) == path]
    return f" (line {frames[-1].lineno})" if frames else ""


def clear_cache() -> None:
    _cache.clear()


def functions_still_to_write(source: str) -> list[str]:
    """Qualified names (`LoRALinear.__init__`) of the functions whose body raises `NotImplementedYet`, in file order.

    Read statically from the source, so it lists every one, not only those a test happened to reach.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    found: list[str] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = prefix + child.name
                own = [n for n in ast.walk(child) if isinstance(n, ast.Raise) and _names_not_implemented(n)]
                nested = [n for inner in ast.walk(child) if inner is not child and isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef))
                          for n in ast.walk(inner) if isinstance(n, ast.Raise)]
                if any(r not in nested for r in own):
                    found.append(name)
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")

    visit(tree, "")
    return found


def _names_not_implemented(node: ast.Raise) -> bool:
    error = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
    return isinstance(error, (ast.Name, ast.Attribute)) and ast.unparse(error).rsplit(".", 1)[-1] == "NotImplementedYet"
