"""Render a figures file (JSON lines from bench.run) as the markdown table in docs/dev/performance.md.

python -m bench.report bench/results/<commit>-1000000_orders.jsonl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

EXTRA_KEYS = ("database", "orders", "orphans", "transactions", "runs", "small", "large")


def render(lines: list[dict]) -> str:
    first = lines[0] if lines else {}
    out = [
        f"Shop: {first.get('size', '?')} on {first.get('database', '?')}, commit {first.get('commit', '?')}.",
        "",
        "| figure | value | unit | for |",
        "| --- | ---: | --- | --- |",
    ]
    for figure in lines:
        extra = ", ".join(f"{k} {figure[k]}" for k in EXTRA_KEYS if k in figure)
        out.append(f"| `{figure['name']}` | {figure['value']:,} | {figure['unit']} | {extra} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    path = Path(args[0])
    try:
        lines = [
            json.loads(line)
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
    except (OSError, json.JSONDecodeError) as exc:
        print(f"cannot read figures from {path}: {exc}", file=sys.stderr)
        return 2
    print(render(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
