"""The command lines: bad configurations and missing checkpoints fail cleanly; the quickstart works end to end."""
import json
import os
import subprocess
import sys
from pathlib import Path

import gin
import pytest

from kipjax import evaluate, index, train
from kipjax.data.demo_docred import demo_docred_path
from kipjax.data.demo_entqa import demo_entqa_path
from kipjax.data.nif import read_nif
from kipjax.methods.entqa.linking import ScoredLink, best_per_span, final_links

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "gin_configs" / "quickstart.gin")


@pytest.fixture(autouse=True)
def clean_gin(monkeypatch):
    monkeypatch.chdir(REPO)  # gin `include` paths are relative to the repository root
    gin.clear_config()
    yield
    gin.clear_config()


def test_unknown_binding_fails_before_anything_is_written(tmp_path, capsys):
    model_dir = tmp_path / "run"
    with pytest.raises(SystemExit, match="bad gin configuration.*NoSuchThing"):
        train.main([f"--gin_file={QUICKSTART}", f"--gin.MODEL_DIR='{model_dir}'", "--gin.NoSuchThing.x=1"])
    assert not model_dir.exists()


def test_wrong_parameter_name_is_reported(tmp_path):
    with pytest.raises(SystemExit, match="bad gin configuration.*num_candidatez"):
        train.main([f"--gin_file={QUICKSTART}", f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
                     "--gin.HardNCERetrieval.num_candidatez=4"])
    assert not (tmp_path / "run").exists()


def test_missing_gin_file_is_named(tmp_path):
    with pytest.raises(SystemExit, match="gin file 'nope.gin' does not exist"):
        train.main(["--gin_file=nope.gin"])


def test_evaluate_names_a_missing_checkpoint_directory(tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        evaluate.main([f"--gin_file={QUICKSTART}", f"--checkpoint={tmp_path / 'absent'}"])
    (tmp_path / "empty").mkdir()
    gin.clear_config()  # each CLI call expects a fresh process's gin state
    with pytest.raises(SystemExit, match="no checkpoint found"):
        evaluate.main([f"--gin_file={QUICKSTART}", f"--checkpoint={tmp_path / 'empty'}"])


def test_index_needs_something_to_write(tmp_path, capsys):
    with pytest.raises(SystemExit):
        index.main([f"--gin_file={QUICKSTART}", f"--checkpoint={tmp_path}"])
    assert "nothing to do" in capsys.readouterr().err


@pytest.mark.parametrize("run_file", ["cpu_tiny", "gpu_1", "tpu_v4_32"])
@pytest.mark.parametrize("config", ["quickstart.gin", "hard_nce/zeshel.gin", "hard_nce/zeshel_som.gin",
                                    "hard_nce/zeshel_rerank.gin", "hard_nce/demo_rerank.gin", "coref/demo.gin",
                                    "coref/t0_3b.gin", "coref/flan_t5_xl.gin", "lmrc/demo_rcp.gin", "lmrc/demo_rc.gin",
                                    "lmrc/docred_rcp_roberta_large.gin", "lmrc/docred_rc_llama3_2_3b.gin",
                                    "lmrc/docred_rc_llama3_1_8b.gin", "taco/demo.gin", "taco/kilt_t5_base.gin",
                                    "entqa/demo_retriever.gin", "entqa/demo_reader.gin",
                                    "entqa/aida_blink_retriever.gin", "entqa/aida_electra_large_reader.gin",
                                    "imprag/demo.gin", "imprag/llama3_2_3b.gin", "imprag/llama3_1_8b.gin",
                                    *sorted(f"{method}/ablations/{p.name}" for method in ("taco", "imprag") for p in
                                            (REPO / f"gin_configs/{method}/ablations").glob("*.gin")),
                                    *sorted(f"imprag/baselines/{p.name}" for p in
                                            (REPO / "gin_configs/imprag/baselines").glob("*.gin"))])
def test_every_config_composes_with_every_run_file(config, run_file):
    """Parsing checks every binding against the configurables' signatures, so a stale name fails here."""
    gin.parse_config_files_and_bindings([f"gin_configs/{config}", f"gin_configs/runs/{run_file}.gin"],
                                        ["MODEL_DIR = '/tmp/unused'", "TRAIN_STEPS = 1"])
    assert gin.query_parameter("%TRAIN_STEPS") == 1 and gin.query_parameter("%MODEL_DIR") == "/tmp/unused"


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
    """Runs a CLI as a user would: one CPU device, not the test session's 8 fake ones (on 2 busy cores their
    collectives can miss XLA's rendezvous timeout; the sharded paths have their own in-process tests)."""
    return _run_command(["-m", module, *args])


def _run_benchmark(name: str, out: Path, *args: str) -> dict:
    """Runs benchmarks/NAME.py as the benchmarks README says, and returns the JSON it writes to `out`."""
    _run_command([f"benchmarks/{name}.py", *args, f"--out={out}"])
    return json.loads(out.read_text())


def _run_command(args: list[str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_quickstart_end_to_end(tmp_path):
    """README's main job: recall clearly improves; the run leaves checkpoints, metrics.jsonl, TensorBoard
    events; evaluate and index work on its checkpoint."""
    model_dir = tmp_path / "quickstart"
    out = _run("kipjax.train", f"--gin_file={QUICKSTART}", f"--gin.MODEL_DIR='{model_dir}'").stdout
    assert "before training:" in out and "eval before -> after training" in out
    history = [json.loads(line) for line in open(model_dir / "metrics.jsonl")]
    before, after = history[0], history[-1]
    assert before["step"] == 0 and after["step"] == 600 and all("loss" in h for h in history[1:])
    assert after["eval/recall@1"] > before["eval/recall@1"] + 0.1
    assert after["eval/recall@8"] > before["eval/recall@8"] + 0.15
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(model_dir / "tb"))
    assert (model_dir / "checkpoints" / "600").is_dir() and (model_dir / "operative_config.gin").is_file()

    evaluated = json.loads(_run("kipjax.evaluate", f"--gin_file={QUICKSTART}", f"--checkpoint={model_dir}").stdout)
    assert evaluated["step"] == 600
    assert evaluated["recall@8"] == pytest.approx(after["eval/recall@8"], abs=1e-6)

    report = json.loads(_run("kipjax.index", f"--gin_file={QUICKSTART}", f"--checkpoint={model_dir}",
                             "--split=test", f"--out={tmp_path / 'index'}",
                             f"--candidates={tmp_path / 'candidates'}").stdout)
    assert report["scann_recall@10_vs_exact"] >= 0.95
    lines = open(tmp_path / "candidates" / "candidates_test.json").read().splitlines()
    assert len(lines) == report["num_queries"] and len(json.loads(lines[0])["candidates"]) > 0


@pytest.mark.slow
def test_coref_demo_end_to_end(tmp_path):
    """The coreference demo learns valid linearizations whose CoNLL F1 clearly beats every gold mention as a
    singleton, and `evaluate` scores the checkpoint on the test split."""
    model_dir = tmp_path / "coref"
    config = "--gin_file=gin_configs/coref/demo.gin"
    _run("kipjax.train", config, f"--gin.MODEL_DIR='{model_dir}'", "--gin.TRAIN_STEPS=400",
         "--gin.Trainer.eval_every=400")
    history = [json.loads(line) for line in open(model_dir / "metrics.jsonl")]
    before, after = history[0], history[-1]
    assert after["step"] == 400 and before["eval/conll_f1"] < after["eval/singletons_baseline_conll_f1"]
    assert after["eval/conll_f1"] > after["eval/singletons_baseline_conll_f1"] + 0.2
    assert after["eval/mention_f1"] > 0.9
    out = _run("kipjax.evaluate", config, f"--checkpoint={model_dir}",
               "--gin.dev/demo_coref_path.name='test.jsonlines'").stdout
    metrics = json.loads(out[out.index("{"):])
    assert metrics["step"] == 400 and metrics["conll_f1"] > metrics["singletons_baseline_conll_f1"] + 0.2


@pytest.mark.slow
def test_lmrc_demo_end_to_end(tmp_path):
    """Stage 1 trains and writes its dev candidates; stage 2 trains on the demo and, over those candidates,
    clearly beats the entity-type baseline and its own run over every pair (the paper's ablation); its
    submission scores the same through the DocRED scorer's CLI. Stage 1 runs shorter than its demo config."""
    candidates, result = tmp_path / "candidates_dev.json", tmp_path / "result_dev.json"
    _run("kipjax.train", "--gin_file=gin_configs/lmrc/demo_rcp.gin", f"--gin.MODEL_DIR='{tmp_path / 'rcp'}'",
         "--gin.TRAIN_STEPS=1000", "--gin.Trainer.eval_every=1000",
         f"--gin.RelationCandidateProposal.candidates_file='{candidates}'")
    rc_config, rc_dir = "--gin_file=gin_configs/lmrc/demo_rc.gin", tmp_path / "rc"
    _run("kipjax.train", rc_config, f"--gin.MODEL_DIR='{rc_dir}'", "--gin.Trainer.eval_every=2000",
         f"--gin.RelationClassification.eval_candidates_file='{candidates}'",
         f"--gin.RelationClassification.predictions_file='{result}'")
    history = [json.loads(line) for line in open(rc_dir / "metrics.jsonl")]
    after = history[-1]
    assert after["step"] == 2000 and after["eval/malformed_parts"] == 0
    assert after["eval/f1"] > after["eval/type_baseline_all_pairs_f1"] + 0.25
    scored = json.loads(_run("kipjax.metrics.docre", "--gold", demo_docred_path("dev.json"), "--pred", str(result),
                             "--train", demo_docred_path("train_annotated.json"), "--json").stdout)
    assert scored["f1"] == pytest.approx(after["eval/f1"]) and scored["ign_f1"] == pytest.approx(after["eval/ign_f1"])
    out = _run("kipjax.evaluate", rc_config, f"--checkpoint={rc_dir}",
               "--gin.RelationClassification.eval_candidates_file=None",
               "--gin.RelationClassification.predictions_file=None").stdout
    every_pair = json.loads(out[out.index("{"):])
    assert every_pair["related_pair_coverage"] == 1.0 and every_pair["f1"] < after["eval/f1"]


@pytest.mark.slow
def test_taco_demo_end_to_end(tmp_path):
    """TACO's recipe on the KILT-format demo, shortened (1 warmup epoch, 2 one-epoch episodes, adaptive learning
    in the last): every stage runs and evaluates, average page R-precision clearly beats the untrained model,
    and `evaluate` on the staged MODEL_DIR scores its last stage the same."""
    model_dir = tmp_path / "taco"
    config = "--gin_file=gin_configs/taco/demo.gin"
    short = ("--gin.TacoRetrieval.warmup_epochs=1", "--gin.TacoRetrieval.episodes=2")
    out = _run("kipjax.train", config, f"--gin.MODEL_DIR='{model_dir}'", *short).stdout
    assert "stage 3/3 episode_2 done" in out and "eval before -> after training: rprec_avg" in out
    stages = json.loads((model_dir / "stages.json").read_text())["stages"]
    assert [s["status"] for s in stages] == ["done"] * 3 and stages[2]["gradient_combiner"]
    history = [json.loads(line) for line in open(model_dir / "warmup" / "metrics.jsonl")]
    before = history[0]["eval/rprec_avg"]
    last = [json.loads(line) for line in open(model_dir / "episode_2" / "metrics.jsonl")][-1]
    assert last["eval/rprec_avg"] > before + 0.3, (before, last["eval/rprec_avg"])
    assert "task_3/loss" in last  # the adaptive episode's per-task losses
    out = _run("kipjax.evaluate", config, *short, f"--checkpoint={model_dir}").stdout  # the same stages
    evaluated = json.loads(out[out.index("{"):])
    assert evaluated["rprec_avg"] == pytest.approx(last["eval/rprec_avg"], abs=1e-6)


@pytest.mark.slow
def test_entqa_demo_end_to_end(tmp_path):
    """EntQA's three demo commands, both trainings shortened: the retriever's candidate files feed the reader,
    whose testa F1 (at its best threshold) clearly beats the untrained reader's; then testb is linked end to end
    from raw text at testa's threshold (the same F1 through the InKB scorer's CLI, the NIF output reads back as
    the JSON lines), calibrated on its scored links, and timed against K by the speed-accuracy benchmark."""
    retriever_gin, reader_gin = "gin_configs/entqa/demo_retriever.gin", "gin_configs/entqa/demo_reader.gin"
    retriever_dir, reader_dir, candidates = tmp_path / "retriever", tmp_path / "reader", tmp_path / "candidates"
    _run("kipjax.train", f"--gin_file={retriever_gin}", f"--gin.MODEL_DIR='{retriever_dir}'", "--gin.TRAIN_STEPS=250",
         "--gin.Trainer.eval_every=250")
    for split in ("train", "testa"):
        _run("kipjax.index", f"--gin_file={retriever_gin}", f"--checkpoint={retriever_dir}", f"--split={split}",
             f"--candidates={candidates}")
    _run("kipjax.train", f"--gin_file={reader_gin}", f"--gin.MODEL_DIR='{reader_dir}'",
         f"--gin.CANDIDATES_DIR='{candidates}'", "--gin.TRAIN_STEPS=600", "--gin.Trainer.eval_every=600")
    history = [json.loads(line) for line in open(reader_dir / "metrics.jsonl")]
    before, after = history[0], history[-1]
    assert after["eval/calibrated_f1"] > before["eval/calibrated_f1"] + 0.04, (before, after)
    threshold = after["eval/calibrated_threshold"]  # appendix D.1: calibrated on testa, used on testb

    testb, gold = demo_entqa_path("aida_testb.tsv"), tmp_path / "gold.jsonl"
    _run("kipjax.data.aida", testb, "--out", str(gold))
    pred, scored, nif_out = tmp_path / "pred.jsonl", tmp_path / "scored.jsonl", tmp_path / "pred.ttl"
    out = _run("kipjax.methods.entqa.link", f"--retriever_gin={retriever_gin}",
               f"--retriever_checkpoint={retriever_dir}", f"--gin_file={reader_gin}", f"--checkpoint={reader_dir}",
               f"--gin.CANDIDATES_DIR='{candidates}'", f"--documents={testb}", f"--out={pred}",
               f"--scored={scored}", f"--nif={nif_out}", f"--threshold={threshold}").stdout
    report = json.loads(out[out.index("{\n"):])
    assert report["documents"] == 60 and report["f1"] > 0.03
    inkb = json.loads(_run("kipjax.metrics.el", "inkb", "--gold", str(gold), "--pred", str(pred), "--json").stdout)
    assert inkb["f1"] == pytest.approx(report["f1"])
    # the JSON lines keep every (span, entity) above the threshold, NIF the best entity of each span
    candidates_of = {r["id"]: [ScoredLink(*link) for link in r["links"]] for r in map(json.loads, open(scored))}
    kept = {doc: final_links(links, threshold) for doc, links in candidates_of.items()}
    assert {r["id"]: [tuple(l) for l in r["links"]] for r in map(json.loads, open(pred))} == {
        doc: [link[:3] for link in links] for doc, links in kept.items()}
    text = {r["id"]: r["text"] for r in map(json.loads, open(gold))}
    assert {d.text: sorted(d.links) for d in read_nif(str(nif_out))} == {
        text[doc]: [link[:3] for link in best_per_span(links)] for doc, links in kept.items()}
    calibrated = json.loads(_run("kipjax.methods.entqa.calibrate", "--scored", str(scored), "--gold", str(gold),
                                 "--json").stdout)
    assert calibrated["f1"] >= report["f1"] and report["threshold"] == pytest.approx(threshold)

    bench = _run_benchmark("entqa_k_benchmark", tmp_path / "k.json", f"--retriever_gin={retriever_gin}",
                           f"--retriever_checkpoint={retriever_dir}", f"--gin_file={reader_gin}",
                           f"--gin_bindings=CANDIDATES_DIR = '{candidates}'", f"--checkpoint={reader_dir}",
                           "--ks=4,8,32", "--repeats=1", "--max_documents=10")
    rows = bench["ks"]
    assert [r["k"] for r in rows] == [4, 8, 32] and rows[0]["reader_seconds"] < rows[-1]["reader_seconds"]
    assert rows[0]["candidate_recall"] <= rows[1]["candidate_recall"] <= rows[2]["candidate_recall"]


@pytest.mark.slow
def test_imprag_demo_end_to_end(tmp_path):
    """ImpRAG's two demo commands, training shortened to its warmup: the BM25 teacher's files feed training,
    whose implicit queries then retrieve answer-bearing passages from the whole corpus far more often than the
    untrained model's on the trained formats, and more often on the unseen entity-linking one; the predictions the run
    writes score the same through the QA metrics' CLI."""
    labels, model_dir, predictions = tmp_path / "labels", tmp_path / "model", tmp_path / "predictions"
    _run("kipjax.methods.imprag.pseudo_labels", "--teacher", "bm25", "--passages",
         "kipjax/data/demo_imprag/psgs_w32.tsv", "--task", "kilt:kipjax/data/demo_kilt/qa-train-kilt.jsonl",
         "--task", "kilt:kipjax/data/demo_kilt/sf-train-kilt.jsonl", "--out", str(labels))
    _run("kipjax.train", "--gin_file=gin_configs/imprag/demo.gin", f"--gin.MODEL_DIR='{model_dir}'",
         f"--gin.Imprag.pseudo_labels_dir='{labels}'", f"--gin.Imprag.predictions_dir='{predictions}'",
         "--gin.TRAIN_STEPS=600", "--gin.Imprag.eval_limit=60")
    history = [json.loads(line) for line in open(model_dir / "metrics.jsonl")]
    before, after = history[0], history[-1]
    assert after["step"] == 600
    recall = {task: (before[f"eval/{task}/answer_recall@4"], after[f"eval/{task}/answer_recall@4"])
              for task in ("qa", "sf", "el")}
    assert all(trained > untrained + 0.1 for untrained, trained in (recall["qa"], recall["sf"])), recall
    assert recall["el"][1] > recall["el"][0], recall  # a format it never trained on
    gold = tmp_path / "qa_gold.jsonl"
    with open("kipjax/data/demo_kilt/qa-dev-kilt.jsonl") as f, open(gold, "w") as out:
        for record in map(json.loads, list(f)[:60]):
            answers = [o["answer"] for o in record["output"] if "answer" in o]
            out.write(json.dumps({"id": record["id"], "answers": answers}) + "\n")
    scored = json.loads(_run("kipjax.metrics.qa", "--gold", str(gold), "--pred",
                             str(predictions / "qa-dev-kilt.jsonl.predictions.jsonl"), "--ks", "1,4",
                             "--json").stdout)
    assert scored["exact_match"] == pytest.approx(after["eval/qa/exact_match"])
    assert scored["answer_recall@4"] == pytest.approx(after["eval/qa/answer_recall@4"])
