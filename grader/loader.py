"""Load the learner's file of a module from an implementation root (`--impl`).

Tests never `import rmsnorm`: the same test file must grade `exercises/`, `solutions/` or any
submission folder, so the harness loads `<root>/<module>/<file>` under a name unique to that root.
A file that is missing or does not import raises `ImplementationLoadError` with the reason in words,
at the moment a test asks for it, so one broken file fails its tests instead of the whole run.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import traceback
from pathlib import Path
from types import ModuleType

from grader.course import Module
from grader.errors import ImplementationLoadError

_cache: dict[Path, ModuleType | ImplementationLoadError] = {}


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
    return loaded


def _last_frame_in(path: Path, error: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(error.__traceback__) if Path(f.filename) == path]
    return f" (line {frames[-1].lineno})" if frames else ""


def clear_cache() -> None:
    _cache.clear()
