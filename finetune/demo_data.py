"""Demo fine-tuning tasks made from the built-in corpus (the Python standard library's source):

- stdlib-packages: a function's source -> the top-level package it comes from (classification);
- stdlib-bodies: a function's signature and docstring -> its body (generation).

Functions are found with ``ast``; each task is written once as JSON lines under the data cache.
"""

from __future__ import annotations

import ast
import json
import sys
import sysconfig
from pathlib import Path

from pretrain.data.sources import stdlib_files
from pretrain.files import write_atomic

PACKAGES = ("asyncio", "email", "http", "importlib", "logging", "multiprocessing", "unittest", "xml")
MAX_CHARS = 1500


def functions(packages=PACKAGES):
    """(package, source, signature-and-docstring, body) for functions with a docstring."""
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
            if len(head) + len(body) <= MAX_CHARS:
                yield rel.parts[0], head + body, head, body


def builtin_task_file(name: str, cache_dir: Path) -> Path:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    path = Path(cache_dir) / f"task-{name}-py{version}.jsonl"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for package, source, head, body in functions():
        row = {"text": source, "label": package} if name == "stdlib-packages" else {"prompt": head, "response": body}
        rows.append(json.dumps(row) + "\n")
    write_atomic(path, "".join(rows))
    return path
