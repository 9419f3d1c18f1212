"""The benches' one-line results, collected into one markdown table (``bench/gpu.sh`` prints it).

Every bench takes ``--summary FILE``: besides its own output it appends one JSON object per
comparison to ``FILE`` (:func:`add_row`). ``python bench/summary.py FILE`` prints the table;
``python bench/summary.py FILE --failed NAME --reason TEXT`` records a bench that did not finish,
so the table says so instead of leaving it out.

Columns: bench, what was measured, model, device, ours, baseline, ratio, same numbers. The ratio
is baseline / ours (a speed-up) except where ``ratio_kind`` says otherwise (steered / unsteered
generation per token: an overhead, 1.00x is free).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

COLUMNS = ("bench", "what", "model", "device", "ours", "baseline", "ratio", "same numbers")


def add_row(path: str | None, bench: str, what: str, model: str, device: str, ours: str, baseline: str,
            ratio: float | None, check: str = "", ratio_kind: str = "baseline / ours") -> None:
    """Append one comparison to the summary file ``path`` (nothing when ``path`` is None)."""
    if not path:
        return
    row = {"bench": bench, "what": what, "model": model, "device": device, "ours": ours, "baseline": baseline,
           "ratio": ratio, "ratio_kind": ratio_kind, "check": check}
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")


def seconds(t: float) -> str:
    """A wall time for the table: ``1.58 s``, ``37.7 ms``."""
    return f"{t:.3g} s" if t >= 1 else f"{t * 1e3:.3g} ms"


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(rows: list[dict]) -> str:
    """The markdown table of ``rows`` (failed benches as rows that say why)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        if r.get("failed"):
            cells = [r["bench"], f"**not measured: {r['failed']}**", "", "", "", "", "—", ""]
        else:
            ratio = "—" if r["ratio"] is None else f"{r['ratio']:.2f}x"
            if r["ratio"] is not None and r["ratio_kind"] != "baseline / ours":
                ratio += f" ({r['ratio_kind']})"
            cells = [r["bench"], r["what"], r["model"], r["device"], r["ours"], r["baseline"], ratio, r["check"]]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("file", help="the summary file the benches appended to")
    p.add_argument("--failed", metavar="BENCH", help="record that BENCH did not finish (with --reason)")
    p.add_argument("--reason", default="failed")
    args = p.parse_args(argv)
    if args.failed:
        with open(args.file, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"bench": args.failed, "failed": args.reason}) + "\n")
        return 0
    path = Path(args.file)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] \
        if path.exists() else []
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
