"""The values table of helm/t2v-worker/README.md, generated from values.yaml's `# --` comments.

    python helm/tests/values_doc.py           # print the table
    python helm/tests/values_doc.py --write   # replace the table between the README markers

test_chart.py::test_readme_values_table_is_current fails when the README lags values.yaml.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parents[1] / "t2v-worker"
START, END = "<!-- values-table:start -->", "<!-- values-table:end -->"


def documented_keys(text: str) -> list[tuple[str, str]]:
    """(dotted key, description) for every key with a `# --` comment, in file order."""
    out, stack, pending, list_indent = [], [], None, None
    for line in text.splitlines():
        indent = len(line) - len(line.lstrip())
        comment = re.match(r"^\s*# -- (.*)$", line)
        if comment:
            pending = comment.group(1)
            continue
        if re.match(r"^\s*- ", line):
            list_indent = indent if list_indent is None else min(list_indent, indent)
            continue
        key = re.match(r"^\s*([A-Za-z0-9_./-]+):", line)
        if not key or (list_indent is not None and indent > list_indent):
            continue
        list_indent = None
        stack = stack[: indent // 2] + [key.group(1)]
        if pending:
            out.append((".".join(stack), pending))
        pending = None
    return out


def table() -> str:
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    keys = documented_keys(text)
    parents = {k.rsplit(".", 1)[0] for k, _ in keys if "." in k}
    rows = ["| Key | Type | Default | Description |", "|-----|------|---------|-------------|"]
    for key, desc in keys:
        # Keys may contain dots themselves (label names): match the longest key first.
        parts, node, i = key.split("."), values, 0
        while i < len(parts):
            for j in range(len(parts), i, -1):
                candidate = ".".join(parts[i:j])
                if isinstance(node, dict) and candidate in node:
                    node, i = node[candidate], j
                    break
            else:
                raise KeyError(key)
        kind = {dict: "object", list: "list", bool: "bool", int: "int", float: "float", str: "string", type(None): "int or null"}[type(node)]
        default = "" if key in parents else f"`{json.dumps(node)}`"
        cell = desc.replace("|", "\\|")
        rows.append(f"| `{key}` | {kind} | {default} | {cell} |")
    return "\n".join(rows) + "\n"


def main() -> int:
    generated = table()
    if "--write" not in sys.argv:
        sys.stdout.write(generated)
        return 0
    readme = CHART / "README.md"
    text = readme.read_text()
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    readme.write_text(f"{before}{START}\n{generated}{END}{after}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
