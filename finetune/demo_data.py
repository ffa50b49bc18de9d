"""Demo fine-tuning tasks made from the built-in corpus (the Python standard library's source):

- stdlib-packages: a function's source -> the top-level package it comes from (classification);
- stdlib-bodies: a function's signature and docstring -> its body (generation);
- stdlib-names: a function's docstring and body, its signature left out -> its name (seq2seq).

Functions are found with ``ast``; each task is written once as JSON lines under the data cache.
"""

from __future__ import annotations

import ast
import json
import sys
import sysconfig
from pathlib import Path
from typing import NamedTuple

from pretrain.data.sources import stdlib_files
from pretrain.files import write_atomic

PACKAGES = ("asyncio", "email", "http", "importlib", "logging", "multiprocessing", "unittest", "xml")
MAX_CHARS = 1500


class Function(NamedTuple):
    package: str
    name: str
    head: str
    """Decorators, signature and docstring."""
    body: str
    """What follows the docstring."""
    docstring: str
    """The docstring as written (quotes and all)."""


def functions(packages=PACKAGES):
    """The functions with a docstring and a body, dedented, at most MAX_CHARS long."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for file in stdlib_files():
        rel = Path(file).relative_to(root)
        if len(rel.parts) < 2 or rel.parts[0] not in packages or "test" in rel.parts or "tests" in rel.parts:
            continue
        try:
            source = Path(file).read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (UnicodeDecodeError, SyntaxError):
            continue
        lines = source.splitlines(keepends=True)
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or not ast.get_docstring(node):
                continue
            doc = node.body[0]
            if len(node.body) < 2:
                continue
            indent = node.col_offset
            start = (node.decorator_list[0].lineno if node.decorator_list else node.lineno) - 1
            head = "".join(line[indent:] for line in lines[start : doc.end_lineno])
            body = "".join(line[indent:] for line in lines[doc.end_lineno : node.end_lineno])
            docstring = "".join(line[indent:] for line in lines[doc.lineno - 1 : doc.end_lineno])
            if len(head) + len(body) <= MAX_CHARS:
                yield Function(rel.parts[0], node.name, head, body, docstring)


def task_row(name: str, f: Function) -> dict:
    """One example of the built-in task ``name``."""
    if name == "stdlib-packages":
        return {"text": f.head + f.body, "label": f.package}
    if name == "stdlib-names":
        return {"prompt": f.docstring + f.body, "response": f.name}
    return {"prompt": f.head, "response": f.body}


def builtin_task_file(name: str, cache_dir: Path) -> Path:
    """The demo task's JSON lines under the data cache, written once. One cut short since (a copy
    that stopped) is written again, with a warning, rather than read as a torn last line."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    path = Path(cache_dir) / f"task-{name}-py{version}.jsonl"
    if path.exists() and _whole(path):
        return path
    if path.exists():
        print(f"warning: the demo task file {path} is cut short; writing it again", file=sys.stderr)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, "".join(json.dumps(task_row(name, f)) + "\n" for f in functions()))
    return path


def _whole(path: Path) -> bool:
    """A JSON-lines file that ends with a whole line (what write_atomic left, not a copy cut short)."""
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 2**20))
        tail = f.read()
    last = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    try:
        return tail.endswith(b"\n") and isinstance(json.loads(last), dict)
    except ValueError:
        return False
