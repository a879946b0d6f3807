"""No function of the package over 60 lines (the house rule; migrations included)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "regularization_pipeline"
MAX_LINES = 60


def test_no_function_is_over_60_lines():
    long = [
        f"{path.relative_to(PACKAGE.parent)}: {node.name} ({node.end_lineno - node.lineno + 1})"
        for path in sorted(PACKAGE.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_LINES
    ]
    assert long == []
