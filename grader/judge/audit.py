"""A static audit of submitted files: what a course module has no reason to touch, flagged for a human.

The sandbox makes these tricks useless or contained; the audit makes attempts visible in the gradebook
(`review` column), because a child process can always lie about its own test (see grader/judge/worker.py).
Flags never change a grade: an instructor reads the file and decides.
"""

from __future__ import annotations

import ast
import re

SUSPICIOUS_IMPORTS = {
    "pytest": "imports pytest",
    "_pytest": "imports pytest internals",
    "pluggy": "imports pytest's plugin system",
    "grader": "imports the grader",
    "ctypes": "imports ctypes",
    "gc": "imports gc (object graph walking)",
    "inspect": "imports inspect (frames, sources)",
    "subprocess": "starts processes",
    "multiprocessing": "starts processes",
    "socket": "opens sockets",
    "signal": "handles signals",
    "importlib": "imports modules by name",
    "builtins": "imports builtins",
    "resource": "changes resource limits",
    "shutil": "copies or deletes files",
    "pty": "opens terminals",
    "threading": "starts threads",
}

STUB_IMPORT = re.compile(r"^from grader(?:\.errors)? import NotImplementedYet[ \t]*$", re.M)

PATTERNS = [
    (r"\bsys\s*\.\s*modules\b", "reads or edits sys.modules"),
    (r"\b_getframe\b|\bf_back\b|\bf_locals\b|\bf_globals\b|\btb_frame\b", "walks stack frames"),
    (r"__code__|__globals__|__closure__|__subclasses__|__builtins__", "reaches into function or class internals"),
    (r"\bos\s*\.\s*(_exit|kill|killpg|fork|forkpty|system|popen|exec\w*|spawn\w*|setsid|remove|unlink|rmdir|removedirs|rename|replace|chmod|chown|write|dup2?|open)\b", "calls os functions a module does not need"),
    (r"/proc\b|/dev/|/etc/|/root\b|/home\b", "names system paths"),
    (r"\bgrader\b|hidden[/\\]|solutions[/\\]|llmlab", "names the grader or its folders"),
    (r"\b(exec|eval|compile|__import__|breakpoint)\s*\(", "runs code built at run time"),
    (r"\bsetattr\s*\(|\bdelattr\s*\(", "sets attributes by name"),
    (r"\bopen\s*\(", "opens files"),
    (r"\batexit\b|\bsys\s*\.\s*(exit|settrace|setprofile|addaudithook|excepthook)\b", "hooks interpreter exit or tracing"),
]


def audit_source(source: str, filename: str = "<submission>") -> list[str]:
    """The reasons this file deserves a look, each once, in a stable order."""
    flags: list[str] = []

    def add(reason: str) -> None:
        if reason not in flags:
            flags.append(reason)

    source = STUB_IMPORT.sub("", source)  # the stubs' own import of NotImplementedYet is expected
    try:
        tree = ast.parse(source, filename)
    except SyntaxError:
        tree = None
    if tree is not None:
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in SUSPICIOUS_IMPORTS:
                    add(SUSPICIOUS_IMPORTS[top])
    for pattern, reason in PATTERNS:
        if re.search(pattern, source):
            add(reason)
    return flags


def audit_files(files: dict[str, bytes]) -> list[str]:
    """`path: reason` for every flag of every submitted Python file."""
    flags = []
    for path, data in sorted(files.items()):
        text = data.decode("utf-8", errors="replace")
        flags += [f"{path}: {reason}" for reason in audit_source(text, path)]
    return flags
