"""Integrity of everything between a learner's output and the verdict, checked in each test process.

The worker takes a `Snapshot` after importing torch, pytest and the hidden suites and before any learner
code exists; each test process verifies it after its test and before it sends its result. It records:

- the identity of every attribute of the modules a verdict goes through (torch and its C function tables,
  `torch.Tensor`'s and `torch.nn.Module`'s methods, `math`, `builtins`, `json`, `pickle`, `os`, pytest's
  runner and pluggy, the grader's own modules, the hidden suites and the helper files they import), of
  the methods of every class those grader modules and suites name (a transformers oracle such as
  `LlamaRMSNorm` included), immutable types such as `torch._C.TensorBase` too (their read-only `__dict__`
  still hands out the dict behind it), and of the code, defaults and closure contents of their functions and
  the functions their properties, classmethods and staticmethods hold;
- the *contents* of the grader's tables (the tolerances: a table edited in place keeps its identity);
- torch's global state a comparison depends on: no torch function or dispatch mode active, torch
  function handling on, the thread-local dispatch key sets, Python kernels registered with torch.library;
- pytest's registered plugins and the implementations of every hook.

A difference means the learner's code changed how the test judges it: the test gets no points and the
submission is flagged (kind "tamper"). Additions are allowed (a lazy import adds attributes). A function's
code and defaults change only through setters that raise an audit event, so the audit hook of the test
process (`install_audit_hook`) notes which ones were set and only those are compared again; everything
else is compared after every test. What this cannot see is the residual risk the README names: code that
reads the interpreter's memory (frames, gc) to find an expected value, or that patches something and puts
it back before the check.
"""

from __future__ import annotations

import operator
from itertools import chain
import os
import sys
import types

# Modules whose attributes a verdict goes through, besides the grader's own and the hidden suites.
WATCHED = (
    "builtins", "math", "operator", "functools", "json", "json.encoder", "json.decoder", "pickle", "copyreg", "os",
    "posix", "struct", "traceback",
    "torch", "torch._C", "torch._C._nn", "torch._C._linalg", "torch._C._special", "torch._C._fft", "torch._tensor",
    "torch.nn", "torch.nn.functional", "torch.nn.modules.module", "torch.nn.parameter", "torch.linalg",
    "torch.testing", "torch.overrides", "torch.autograd", "torch.random", "torch.functional", "torch.library",
    "_pytest.runner", "_pytest.python", "_pytest.main", "_pytest.outcomes", "_pytest.fixtures", "_pytest.reports",
    "_pytest.nodes", "_pytest.config", "_pytest.tmpdir", "_pytest.monkeypatch", "pytest",
    "pluggy", "pluggy._hooks", "pluggy._callers", "pluggy._manager", "pluggy._result",
)
# Attributes that change identity legitimately while a test runs.
VOLATILE = {"os.environ", "sys.modules", "builtins._", "torch.library._impls", "_pytest.fixtures.FixtureDef.cached_result"}
# Functions torch wraps in place when a submodule is first imported (torch._dynamo wraps manual_seed):
# the wrapper of the original, from torch's own files, is no change.
TORCH_WRAPS = {"torch.manual_seed"}
# What Python's own machinery caches on a class the first time it is needed (copy, pickle, abc, typing).
CLASS_CACHES = {"__slotnames__", "_abc_impl", "__abstractmethods__", "__parameters__", "__orig_bases__", "_is_protocol"}
# The grader's tables, compared by content: a table edited in place keeps its identity.
TABLES = ("grader.harness.tolerances", "grader.harness.checks", "grader.harness.course", "grader.harness.plugin")


def _plain_tables(value, depth: int = 3):
    """The contents of a table of numbers, strings and frozen records, as a comparable value (None: not a table)."""
    if isinstance(value, (bool, int, float, str, bytes, type(None))):
        return value
    if depth == 0:
        return None
    if isinstance(value, dict):
        items = [(repr(k), _plain_tables(v, depth - 1)) for k, v in value.items()]
        return ("dict", tuple(sorted(items)))
    if isinstance(value, (list, tuple, set, frozenset)):
        inner = [_plain_tables(v, depth - 1) for v in value]
        return (type(value).__name__, tuple(sorted(inner, key=repr)) if isinstance(value, (set, frozenset)) else tuple(inner))
    fields = getattr(value, "__dataclass_fields__", None)
    if fields is not None:
        return (type(value).__name__, tuple((name, _plain_tables(getattr(value, name, None), depth - 1)) for name in fields))
    return ("id", id(value))


_MISSING = object()


def _attributes(owner):
    if isinstance(owner, (types.ModuleType, type)):
        return vars(owner)
    return vars(type(owner))  # torch._C._VariableFunctions: an object whose class holds the table


def _shadows(klass: type, name: str) -> bool:
    """`name`, newly set on `klass`, replaces what a base class defines, or is a special method (a cache
    such as copyreg's `__slotnames__` is neither)."""
    if name in CLASS_CACHES:
        return False
    if any(name in vars(base) for base in klass.__mro__[1:]):
        return True
    return name.startswith("__") and name.endswith("__") and callable(vars(klass).get(name))


def _function_of(value):
    """The Python function behind an attribute (a method, classmethod, staticmethod), or None."""
    if isinstance(value, (classmethod, staticmethod, types.MethodType)):
        value = value.__func__
    return value if isinstance(value, types.FunctionType) else None


_function_parts = operator.attrgetter("__code__", "__defaults__", "__kwdefaults__")  # set only through audited setters
_property_parts = operator.attrgetter("fget", "fset", "fdel")  # property.__init__ called again sets them unaudited
_wrapper_parts = operator.attrgetter("__func__", "__func__")  # so is a classmethod's or staticmethod's function (a pair: a tuple)
_cell_contents = operator.attrgetter("cell_contents")  # a closure's variables: set unaudited
# The audit events of a function's setters (__code__, __defaults__, __kwdefaults__), and of `__class__` assignment
FUNCTION_SETTERS = {"object.__setattr__", "object.__delattr__"}


def _torch_state(kernels: dict) -> dict:
    """torch's global state; `kernels` memoises the aten kernels of the last set of torch.library's keys."""
    import torch

    state = {
        "torch function modes active": torch._C._len_torch_function_stack(),
        "torch dispatch modes active": torch._C._len_torch_dispatch_stack(),
        "torch function handling on": torch._C._is_torch_function_enabled(),
        "dispatch keys included": repr(torch._C._dispatch_tls_local_include_set()),
        "dispatch keys excluded": repr(torch._C._dispatch_tls_local_exclude_set()),
        "grad mode": torch.is_grad_enabled(),
        "default dtype": repr(torch.get_default_dtype()),
    }
    impls = getattr(torch.library, "_impls", None)
    if impls is not None:  # kernels of aten's operators (a lazy import of torch registers others, and Meta ones)
        keys = frozenset(impls)
        if keys not in kernels:
            kernels.clear()
            kernels[keys] = tuple(sorted(k for k in keys if k.startswith("aten/") and not k.endswith("/Meta")))
        state["Python kernels of aten operators"] = kernels[keys]
    return state


def _same(before, now) -> bool:
    """The same objects, one for one (identity: an object's own `__eq__` may lie); both of the same length."""
    return all(map(operator.is_, before, now))


def _has_contents(cell) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - an empty cell raises
    except ValueError:
        return False
    return True


class Snapshot:
    """What a verdict depends on, taken before any learner code ran (see the module's docstring)."""

    def __init__(self, grader_modules: list, suite_modules: list, pluginmanager=None) -> None:
        import torch

        self.pluginmanager = pluginmanager
        owners = {name: sys.modules[name] for name in WATCHED if name in sys.modules}
        owners.update({m.__name__: m for m in (*grader_modules, *suite_modules)})
        owners["torch._C._VariableFunctions"] = torch._C._VariableFunctions
        classes = {"torch.Tensor": torch.Tensor, "torch._C.TensorBase": torch._C.TensorBase,
                   "torch.nn.Module": torch.nn.Module, "torch.nn.Parameter": torch.nn.Parameter}
        for module in (*grader_modules, *suite_modules):  # every class the grader and the suites use: the oracles too
            for name, value in vars(module).items():
                if isinstance(value, type) and not value.__module__.startswith("builtins"):
                    for klass in value.__mro__[:-1]:
                        classes.setdefault(f"{klass.__module__}.{klass.__qualname__}", klass)
        for module in owners.values():  # and the classes defined in the watched modules themselves
            if isinstance(module, types.ModuleType):
                for name, value in vars(module).items():
                    if isinstance(value, type) and value.__module__ == module.__name__:
                        classes.setdefault(f"{module.__name__}.{value.__qualname__}", value)
        self.owners = {**owners, **classes}
        self.modules = {name: module for name, module in owners.items() if isinstance(module, types.ModuleType)}
        self.tables = {m.__name__: m for m in grader_modules if m.__name__ in TABLES}
        # One row per owner: its attribute names and their identities, compared as tuples (fast: a test
        # process verifies some 24,000 attributes in about a millisecond). An immutable type (torch._C.TensorBase,
        # _VariableFunctionsClass) refuses setattr, but its mappingproxy compared with an object hands that
        # object the dict behind it, so it has a row like any other.
        self.rows = []
        self.originals = {key: _attributes(self.owners[key.rsplit(".", 1)[0]]).get(key.rsplit(".", 1)[1]) for key in TORCH_WRAPS}
        functions, properties, wrappers = [], [], []
        for owner_name, owner in self.owners.items():
            attributes = _attributes(owner)
            names = tuple(n for n in attributes if f"{owner_name}.{n}" not in VOLATILE)
            # the mapping itself: a module's dict, or a live view of a class's (neither can be replaced)
            self.rows.append((owner_name, owner, attributes, tuple(attributes), tuple(attributes.values()), names))
            for name in names:
                value = attributes[name]
                function = _function_of(value)
                if function is not None:
                    functions.append((f"{owner_name}.{name}", function))
                if isinstance(value, (classmethod, staticmethod)):
                    wrappers.append((f"{owner_name}.{name}", value))
                elif isinstance(value, property):
                    properties.append((f"{owner_name}.{name}", value))
        self.functions = [(names_, objects, list(map(parts, objects))) for names_, objects, parts in (
            (tuple(n for n, _ in functions), tuple(f for _, f in functions), _function_parts),
            (tuple(n for n, _ in properties), tuple(f for _, f in properties), _property_parts),
            (tuple(n for n, _ in wrappers), tuple(f for _, f in wrappers), _wrapper_parts))]
        first_names = {function: name for name, function in reversed(functions)}  # a function under several names: once
        for function, name in first_names.items():  # its keyword defaults: a dict that can be edited in place, unaudited
            kwdefaults = function.__kwdefaults__
            if kwdefaults:
                self.rows.append((f"{name}.__kwdefaults__", None, kwdefaults, tuple(kwdefaults), tuple(kwdefaults.values()), tuple(kwdefaults)))
        self.watched_functions = frozenset(self.functions[0][1])  # functions hash and compare by identity
        # the watched functions whose setters ran, noted by the audit hook; None: no hook, compare them all
        self.touched: set | None = None
        cells = [(f"{name} (its closure)", cell) for name, function in functions for cell in function.__closure__ or ()
                 if _has_contents(cell)]
        self.cells = (tuple(n for n, _ in cells), tuple(c for _, c in cells))
        self.cell_values = tuple(map(_cell_contents, self.cells[1]))
        self._kernels: dict = {}
        self.state = self._state()

    def _state(self) -> dict:
        """What is compared by value: the grader's tables, torch's global state, pytest's plugins and hooks."""
        state: dict = {}
        for module_name, module in self.tables.items():
            for name, value in vars(module).items():  # not `__builtins__` and the like: rows of their own
                if name.startswith("__"):
                    continue
                if isinstance(value, (dict, list, set, tuple)) or hasattr(value, "__dataclass_fields__"):
                    state[f"{module_name}.{name} (contents)"] = _plain_tables(value)
        state.update(_torch_state(self._kernels))
        if self.pluginmanager is not None:
            manager = self.pluginmanager
            state["pytest's plugins"] = tuple(sorted(id(p) for p in manager.get_plugins()))
            for name, caller in vars(manager.hook).items():
                if hasattr(caller, "get_hookimpls"):
                    state[f"pytest hook {name}"] = tuple(id(impl.function) for impl in caller.get_hookimpls())
        return state

    def _torch_wrap(self, key: str, value) -> bool:
        """`value` is torch's own wrapper of the original (see TORCH_WRAPS)."""
        import torch

        if key not in self.originals or getattr(value, "__wrapped__", None) is not self.originals[key]:
            return False
        code = getattr(value, "__code__", None)
        return code is not None and code.co_filename.startswith(os.path.dirname(torch.__file__) + os.sep)

    def changed(self) -> list[str]:
        """What differs from the snapshot now, in a stable order (empty: nothing)."""
        found = [name for name, module in self.modules.items() if sys.modules.get(name, module) is not module]
        # Identity, compared with `is` at C speed: never `==` (the learner's objects define it), never `id()`
        # (each call is an audit event, and the test process's audit hook would see 24,000 of them)
        for owner_name, owner, attributes, keys, values, names in self.rows:
            if len(attributes) == len(values) and _same(values, attributes.values()):  # the common case, at C speed
                continue
            before = dict(zip(keys, values))
            found += [f"{owner_name}.{n}" for n in names if attributes.get(n, _MISSING) is not before[n]
                      and not self._torch_wrap(f"{owner_name}.{n}", attributes.get(n))]
            if isinstance(owner, type):  # a class that gains a method shadows its base's: Tensor.__eq__ over TensorBase's
                found += [f"{owner_name}.{n} (added)" for n in attributes if n not in before and _shadows(owner, n)]
        parts_and_what = ((_function_parts, "its code or defaults"), (_property_parts, "its getter, setter or deleter"),
                          (_wrapper_parts, "the function it wraps"))
        for (names, objects, before), (parts, what) in zip(self.functions, parts_and_what):
            if parts is _function_parts and self.touched is not None and not self.touched:
                continue  # no setter of a watched function ran
            if _same(chain.from_iterable(before), chain.from_iterable(map(parts, objects))):  # the common case, at C speed
                continue
            found += [f"{n} ({what})" for n, a, b in zip(names, before, map(parts, objects)) if not _same(a, b)]
        try:
            cells_same = _same(self.cell_values, map(_cell_contents, self.cells[1]))
        except ValueError:  # a cell emptied
            cells_same = False
        if not cells_same:
            found += [n for n, cell, before in zip(*self.cells, self.cell_values) if not _has_contents(cell) or cell.cell_contents is not before]
        state = self._state()
        found += [name for name, value in self.state.items() if state.get(name, value) != value]
        return found


# --------------------------------------------------------------------------------------------------
# Reading the interpreter's memory, seen as it happens

MEMORY_EVENTS = {"sys._getframe", "sys._current_frames", "sys._current_exceptions", "gc.get_objects", "gc.get_referrers",
                 "gc.get_referents", "ctypes.addressof", "ctypes.PyObj_FromPtr", "ctypes.string_at", "ctypes.cdata",
                 "ctypes.dlsym", "ctypes.call_function"}
FRAME_ATTRIBUTES = {"tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_back", "__globals__"}
WALKED_EXIT = 97  # the exit status of a test process stopped for reading the interpreter's memory


def install_audit_hook(impl_dir: str, exit_, snapshot: Snapshot | None = None) -> None:
    """Install (for good: an audit hook cannot be removed) a hook that stops this process, and every process
    forked from it, with status WALKED_EXIT the moment code of the learner's files, or code made at run time
    (`exec`), walks stack frames, lists objects through gc or reads memory through ctypes: the way to the
    expected values or the test's own functions. What torch, pytest or the standard library do is theirs.
    It also tells `snapshot` which functions had their code or defaults set, by anyone, so that its check
    compares only those again."""
    import inspect

    getframe = sys._getframe
    skip = {inspect.__file__}  # inspect.currentframe() and inspect.stack() act for their caller
    busy = []
    function = types.FunctionType
    watched, touched = (snapshot.watched_functions, set()) if snapshot is not None else (frozenset(), None)
    if snapshot is not None:
        snapshot.touched = touched

    def hook(event: str, args: tuple) -> None:
        if event in FUNCTION_SETTERS:  # raised for `obj.__class__ = ...` too, where obj may be unhashable
            if type(args[0]) is function and args[0] in watched:  # a function: hashed and compared by identity
                touched.add(args[0])
            return
        if busy or (event not in MEMORY_EVENTS and not (event == "object.__getattr__" and len(args) > 1 and args[1] in FRAME_ATTRIBUTES)):
            return
        busy.append(1)
        try:
            frame = getframe(1)
            while frame is not None and frame.f_code.co_filename in skip:
                frame = frame.f_back
            name = frame.f_code.co_filename if frame is not None else ""
            if name.startswith(impl_dir) or (name.startswith("<") and not name.startswith("<frozen")):
                exit_(WALKED_EXIT)
        finally:
            busy.clear()

    sys.addaudithook(hook)
