"""A static audit of submitted files: the constructs an attack on the grader needs, flagged for a human.

The sandbox (grader/judge/sandbox.py) and the run-time integrity check (grader/judge/integrity.py) make these
tricks useless or contained; the audit makes attempts visible in the gradebook (`review` column), because a
test process can always lie about its own test (see grader/judge/worker.py). Flags never change a grade: an
instructor reads the file and decides. Each flag names the file, the line and the construct.

What is flagged (read from the syntax tree, so comments and strings in docstrings do not count):
- assignment to, or deletion of, an attribute of an imported module or class (`torch.isclose = ...`,
  `Tensor.__eq__ = ...`, through an alias such as `T = torch.Tensor`), and `setattr`/`delattr` on one;
- `__dict__`, `__globals__`, `__builtins__`, `__class__`, `__code__`, `__closure__`, `__subclasses__`, `__mro__`;
- code run from text (`exec`, `eval`, `compile`, `__import__`, `importlib`), decoding of code (`base64`,
  `codecs`, `marshal`, `binascii`), subclasses of `TorchFunctionMode`/`TorchDispatchMode` and classes that
  define `__torch_function__`/`__torch_dispatch__`;
- `ctypes`, `gc`, `inspect`, pytest or the grader imported; stack frames (`sys._getframe`, `f_back`, ...);
  `sys.modules`; os functions a course module has no use for (`os._exit`, `os.write`, `os.kill`, ...);
  names of system or course paths in strings (`/proc`, `.git`, `solutions/`, ...).

What is not flagged: what the course teaches or ships. `setattr(parent, name, LoRALinear(...))` on a model's
submodule (03's hint says to write it) sets an attribute of an object, not of a module or class; a line
that is in the module's stub as handed out (08's `import socket`, the stubs' `from grader import
NotImplementedYet`) is the course's own; only the graded modules' files are audited.
"""

from __future__ import annotations

import ast
import re

from grader.harness.course import REPO_ROOT, find_module

MAX_FLAGS_PER_FILE = 12

IMPORTS = {
    "pytest": "imports pytest",
    "_pytest": "imports pytest internals",
    "pluggy": "imports pytest's plugin system",
    "grader": "imports the grader",
    "ctypes": "imports ctypes",
    "gc": "imports gc (object graph walking)",
    "inspect": "imports inspect (frames, sources)",
    "importlib": "imports modules by name (importlib)",
    "builtins": "imports builtins",
    "base64": "decodes code (base64)",
    "codecs": "decodes code (codecs)",
    "marshal": "decodes code (marshal)",
    "binascii": "decodes code (binascii)",
    "resource": "changes resource limits",
    "pty": "opens terminals",
}
DUNDERS = {"__dict__", "__globals__", "__builtins__", "__class__", "__code__", "__closure__", "__subclasses__",
           "__mro__", "__bases__", "__func__", "__self__"}
FRAMES = {"_getframe", "f_back", "f_locals", "f_globals", "f_builtins", "tb_frame", "gi_frame", "cr_frame"}
RUNS_CODE = {"exec", "eval", "compile", "__import__", "breakpoint"}
MODES = {"TorchFunctionMode", "TorchDispatchMode", "BaseTorchFunctionMode"}
MODE_HOOKS = {"__torch_function__", "__torch_dispatch__"}
OS_CALLS = re.compile(r"^(_exit|kill|killpg|fork|forkpty|system|popen|exec\w*|spawn\w*|setsid|setuid|setgid|remove|unlink|"
                      r"rmdir|removedirs|rename|replace|chmod|chown|write|dup2?|open|pipe|mkfifo|ptrace|walk|fwalk|scandir|listdir)$")
PATHS = re.compile(r"/proc\b|/dev/|/etc/|/root\b|/home\b|\.git\b|solutions[/\\]|hidden[/\\]|\bllmlab\b|\bgrader\b")
HOOKS = {"atexit": "hooks interpreter exit (atexit)"}
SYS_HOOKS = {"settrace", "setprofile", "addaudithook", "excepthook", "exit", "modules"}


def _root_name(node: ast.AST) -> str | None:
    """`a` for `a`, `a.b.c`, `a[0].b`: the name an attribute chain starts from (None for calls, literals)."""
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


class _Auditor(ast.NodeVisitor):
    def __init__(self) -> None:
        self.imported: set[str] = set()  # names bound to a module or to something imported from one
        self.flags: list[tuple[int, str]] = []

    def flag(self, node: ast.AST, reason: str) -> None:
        self.flags.append((getattr(node, "lineno", 0), reason))

    # names: what comes from an import, and aliases of it
    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.imported.add((alias.asname or alias.name).split(".")[0])
            self._check_import(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            self.imported.add(alias.asname or alias.name)
        if node.module:
            self._check_import(node, node.module)
            for alias in node.names:
                self._check_import(node, f"{node.module}.{alias.name}")

    def _check_import(self, node: ast.AST, name: str) -> None:
        top = name.split(".")[0]
        if top in IMPORTS:
            self.flag(node, IMPORTS[top])
        if top in HOOKS:
            self.flag(node, HOOKS[top])
        if name.split(".")[-1] in MODES or name in ("torch.overrides", "torch.utils._python_dispatch"):
            self.flag(node, f"imports torch's function or dispatch modes ({name})")

    def _imported(self, target: ast.AST) -> bool:
        return _root_name(target) in self.imported

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            self._check_target(target, node)
        if isinstance(node.value, (ast.Name, ast.Attribute)) and self._imported(node.value):  # T = torch.Tensor
            for target in node.targets:
                if isinstance(target, ast.Name):
                    self.imported.add(target.id)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._check_target(node.target, node)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._check_target(node.target, node)
        self.generic_visit(node)

    def visit_Delete(self, node: ast.Delete) -> None:
        for target in node.targets:
            self._check_target(target, node)
        self.generic_visit(node)

    def visit_For(self, node: ast.For) -> None:  # for m in sys.modules.values(): setattr(m, ...)
        if any(isinstance(n, ast.Name) and n.id in self.imported for n in ast.walk(node.iter)):
            for n in ast.walk(node.target):
                if isinstance(n, ast.Name):
                    self.imported.add(n.id)
        self.generic_visit(node)

    def _check_target(self, target: ast.AST, node: ast.AST) -> None:
        for part in ast.walk(target) if isinstance(target, (ast.Tuple, ast.List)) else [target]:
            if isinstance(part, (ast.Attribute, ast.Subscript)) and self._imported(part):
                self.flag(node, f"changes an imported module or class ({_dotted(part) or 'an item of one'})")

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name):
            if func.id in ("setattr", "delattr") and node.args:
                owner = node.args[0]
                if self._imported(owner) or not isinstance(owner, (ast.Name, ast.Attribute, ast.Subscript)):
                    self.flag(node, f"{func.id} on a module or class ({ast.unparse(owner)[:60]})")
            if func.id in RUNS_CODE:
                self.flag(node, f"runs code built at run time ({func.id})")
            if func.id in ("globals", "vars") and (func.id == "globals" or node.args):
                self.flag(node, f"reaches into namespaces ({func.id})")
        elif isinstance(func, ast.Attribute):
            dotted = _dotted(func)
            if dotted.startswith("os.") and OS_CALLS.match(func.attr):
                self.flag(node, f"calls os functions a module does not need ({dotted})")
            if dotted.startswith("importlib."):
                self.flag(node, f"imports modules by name ({dotted})")
        self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr in DUNDERS:
            self.flag(node, f"reaches into function or class internals ({node.attr})")
        if node.attr in FRAMES:
            self.flag(node, f"walks stack frames ({node.attr})")
        if isinstance(node.value, ast.Name) and node.value.id == "sys" and node.attr in SYS_HOOKS:
            self.flag(node, "reads or edits sys.modules" if node.attr == "modules" else f"hooks the interpreter (sys.{node.attr})")
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in ("__builtins__", "__loader__", "__spec__"):
            self.flag(node, f"reaches into function or class internals ({node.id})")

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for base in node.bases:
            name = _dotted(base).split(".")[-1]
            if name in MODES:
                self.flag(node, f"defines a torch {'function' if 'Function' in name else 'dispatch'} mode ({node.name}({name}))")
        for item in node.body:
            if isinstance(item, ast.FunctionDef) and item.name in MODE_HOOKS:
                self.flag(item, f"overrides torch's dispatch ({node.name}.{item.name})")
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and PATHS.search(node.value):
            self.flag(node, f"names system paths or the course's folders ({PATHS.search(node.value).group(0)})")


def _docstring_lines(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                lines.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    return lines


def audit_source(source: str, filename: str = "<submission>", stub: str = "") -> list[str]:
    """`line N: reason` for each construct worth a look, in line order; lines found in `stub` are the course's."""
    try:
        tree = ast.parse(source, filename)
    except SyntaxError:
        return []  # it does not load: it runs nothing
    auditor = _Auditor()
    auditor.visit(tree)
    docstrings = _docstring_lines(tree)
    course_lines = {line.strip() for line in stub.splitlines() if line.strip()}
    course_lines.add("from grader import NotImplementedYet")
    lines = source.splitlines()
    flags: list[str] = []
    for lineno, reason in sorted(set(auditor.flags)):
        text = lines[lineno - 1].strip() if 0 < lineno <= len(lines) else ""
        if lineno in docstrings or text in course_lines:
            continue
        flag = f"line {lineno}: {reason}"
        if flag not in flags:
            flags.append(flag)
    if len(flags) > MAX_FLAGS_PER_FILE:
        flags = flags[:MAX_FLAGS_PER_FILE] + [f"and {len(flags) - MAX_FLAGS_PER_FILE} more"]
    return flags


def _stub_of(path: str) -> str:
    module = find_module(path.split("/")[0])
    stub = REPO_ROOT / "exercises" / module.name / module.file if module else None
    return stub.read_text() if stub is not None and stub.is_file() else ""


def audit_files(files: dict[str, bytes], modules: list[str] | None = None) -> list[str]:
    """`path:line: reason` for every flag of the graded modules' files (all files when `modules` is None)."""
    flags = []
    for path, data in sorted(files.items()):
        if modules is not None and path.split("/")[0] not in modules:
            continue
        text = data.decode("utf-8", errors="replace")
        flags += [f"{path}:{flag.removeprefix('line ')}" for flag in audit_source(text, path, _stub_of(path))]
    return flags
