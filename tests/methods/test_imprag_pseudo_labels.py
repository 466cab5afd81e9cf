"""ImpRAG's teacher pseudo-labels: BM25 rankings checked by hand and against bm25s's own scores, the dense
(Contriever-style) teacher against the torch model with mean pooling, the CLI's files, read back by the trainer's
reader, and its usage errors."""
import json

import bm25s
import numpy as np
import pytest
import torch
import transformers
from torch_init import randomized

from kipjax.data.kilt import read_passages
from kipjax.data.tokenizer import save_wordpiece_tokenizer, word_vocabulary
from kipjax.methods.imprag import pseudo_labels
from kipjax.methods.imprag.data import read_pseudo_labels

PASSAGES = [  # (id, title, text)
    ("101", "Hamlet", "Hamlet is a tragedy written by William Shakespeare."),
    ("102", "Mars", "Mars is the fourth planet from the Sun."),
    ("103", "Python", "Python is a programming language created by Guido van Rossum."),
    ("104", "Shakespeare", "William Shakespeare was an English playwright."),
]
QUESTIONS = ["who wrote hamlet", "which planet is fourth from the sun", "who was william shakespeare"]
# By word overlap (stopwords and one-letter words dropped): only Hamlet shares "hamlet", only Mars "planet",
# "fourth", "sun"; both Shakespeare passages share "william" and "shakespeare", the Shakespeare page twice as
# often and in fewer words, so it comes first. Passages sharing no word are not ranked.
EXPECTED = [["101"], ["102"], ["104", "101"]]


def write_passages(path, passages):
    path.write_text("id\ttext\ttitle\n" + "".join(f"{i}\t{text}\t{title}\n" for i, title, text in passages))
    return path


def write_nq_open(path, questions):
    path.write_text("".join(json.dumps({"question": q, "answer": ["x"]}) + "\n" for q in questions))
    return path


def write_squad(path):
    qa = {"id": "s1", "question": "who wrote hamlet", "is_impossible": False, "answers": [{"text": "Shakespeare"}]}
    path.write_text(json.dumps({"data": [{"paragraphs": [{"context": "Shakespeare wrote Hamlet.", "qas": [qa]}]}]}))
    return path


@pytest.fixture
def files(tmp_path):
    return (write_passages(tmp_path / "psgs.tsv", PASSAGES), write_nq_open(tmp_path / "nq.jsonl", QUESTIONS),
            write_squad(tmp_path / "squad.json"))


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_bm25_cli_writes_the_rankings_and_skips_instruction_tuning(files, tmp_path, capsys):
    passages, nq, squad = files
    out = tmp_path / "labels"
    summary = pseudo_labels.main(["--passages", str(passages), "--task", f"nq_open:{nq}",
                                  "--task", f"squad_v2:{squad}", "--out", str(out), "--top", "3"])
    path = out / "nq.jsonl.pseudo_labels.jsonl"
    assert pseudo_labels.pseudo_label_path(out, f"nq_open:{nq}") == path
    assert lines(path) == [{"id": str(i), "passages": ranked} for i, ranked in enumerate(EXPECTED, start=1)]
    assert sorted(p.name for p in out.iterdir()) == [path.name]  # no squad file, no temp file left
    printed = capsys.readouterr()
    assert json.loads(printed.out) == summary
    assert summary["files"] == {str(path): 3} and summary["examples"] == 3 and summary["teacher"] == "bm25"
    assert f"squad_v2:{squad} has no retrieving examples" in printed.err

    corpus = read_passages(passages)
    rows = {str(i): row for row, i in enumerate(corpus.ids)}
    assert read_pseudo_labels(path, rows) == {str(i): [rows[p] for p in ranked]
                                              for i, ranked in enumerate(EXPECTED, start=1)}


def test_top_cuts_the_ranking(files, tmp_path):
    passages, nq, _ = files
    pseudo_labels.main(["--passages", str(passages), "--task", f"nq_open:{nq}", "--out", str(tmp_path / "o"),
                        "--top", "1", "--limit", "2"])
    assert lines(tmp_path / "o" / "nq.jsonl.pseudo_labels.jsonl") == [
        {"id": "1", "passages": ["101"]}, {"id": "2", "passages": ["102"]}]


def test_bm25_matches_bm25s_scores(tmp_path):
    rng = np.random.default_rng(0)
    words = [f"word{i}" for i in range(30)]
    passages = [(str(1000 + i), " ".join(rng.choice(words, 2)), " ".join(rng.choice(words, 8))) for i in range(40)]
    corpus = read_passages(write_passages(tmp_path / "psgs.tsv", passages))
    queries = [" ".join(rng.choice(words, 4)) for _ in range(12)]
    top = 10
    got = pseudo_labels.bm25_rankings(corpus, queries, top)

    reference = bm25s.BM25()
    reference.index(bm25s.tokenize([f"{title} {text}" for _, title, text in passages], show_progress=False),
                    show_progress=False)
    for query, ranking in zip(queries, got):
        scores = reference.get_scores(bm25s.tokenize(query, return_ids=False, show_progress=False)[0])
        best = np.sort(scores[scores > 0])[::-1][:top]
        assert len(set(ranking)) == len(ranking) == len(best)
        np.testing.assert_allclose(scores[ranking], best, rtol=1e-6)  # the best, in order (ties either way)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A random BertModel and its WordPiece tokenizer in one Hugging Face directory."""
    path = tmp_path_factory.mktemp("bert")
    texts = [f"{title} {text}" for _, title, text in PASSAGES] + QUESTIONS + ["Q: A:"]
    tokenizer = save_wordpiece_tokenizer(word_vocabulary(texts), path)
    config = transformers.BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=37, max_position_embeddings=64)
    model = randomized(transformers.BertModel(config))
    model.save_pretrained(path)
    return path, model, tokenizer


def torch_rankings(model, tokenizer, passages, queries, top, max_tokens):
    """Contriever's scoring written out with the torch model: mean over the mask, dot products, best first."""
    def embed(texts):
        batch = tokenizer(texts, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt")
        with torch.no_grad():
            hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        mask = batch["attention_mask"][..., None].float()
        return ((hidden * mask).sum(1) / mask.sum(1)).numpy()

    scores = embed(queries) @ embed(passages).T
    return np.argsort(-scores, axis=1)[:, :top].tolist()


def dense_passages():
    """PASSAGES and more, some longer than the token budget, so truncation matters."""
    extra = [(str(200 + i), f"{PASSAGES[i % 4][1]} {i}", " ".join(t for _, _, t in PASSAGES[i % 4:]))
             for i in range(12)]
    return PASSAGES + extra


def test_dense_matches_torch_mean_pooling(tiny_bert, tmp_path):
    path, model, tokenizer = tiny_bert
    passages = dense_passages()
    corpus = read_passages(write_passages(tmp_path / "psgs.tsv", passages))
    queries = [f"Q: {q} A:" for q in QUESTIONS]
    got = pseudo_labels.dense_rankings(path, corpus, queries, 5, batch_size=8, max_tokens=12)
    expected = torch_rankings(model, tokenizer, [f"{title} {text}" for _, title, text in passages], queries, 5, 12)
    assert got == expected


def test_dense_cli_keeps_the_corpus_encoding(tiny_bert, files, tmp_path):
    path, model, tokenizer = tiny_bert
    passages, nq, _ = files
    out = tmp_path / "labels"
    pseudo_labels.main(["--passages", str(passages), "--task", f"nq_open:{nq}", "--out", str(out), "--teacher",
                        "dense", "--teacher_dir", str(path), "--top", "2", "--batch_size", "8"])
    queries = [f"Q: {q} A:" for q in QUESTIONS]
    expected = torch_rankings(model, tokenizer, [f"{title} {text}" for _, title, text in PASSAGES], queries, 2, 256)
    assert lines(out / "nq.jsonl.pseudo_labels.jsonl") == [
        {"id": str(i), "passages": [PASSAGES[row][0] for row in rows]} for i, rows in enumerate(expected, start=1)]
    manifest = json.loads(next((out / pseudo_labels.CORPUS_DIR).glob("host_*/manifest.json")).read_text())
    assert json.loads(manifest["fingerprint"])[-1] == pseudo_labels.file_fingerprint(passages)


@pytest.mark.parametrize("arguments, message", [
    (["--teacher", "tfidf"], "invalid choice: 'tfidf'"),
    (["--teacher", "dense"], "--teacher dense needs --teacher_dir"),
    (["--top", "0"], "--top must be at least 1"),
    (["--task", "nope"], "must be 'FORMAT:PATH'"),
])
def test_usage_errors_exit_2(files, tmp_path, capsys, arguments, message):
    passages, nq, _ = files
    with pytest.raises(SystemExit) as exit_info:
        pseudo_labels.main(["--passages", str(passages), "--task", f"nq_open:{nq}", "--out", str(tmp_path / "o"),
                            *arguments])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_unreadable_task_file_exits_2(files, tmp_path, capsys):
    passages, _, _ = files
    with pytest.raises(SystemExit) as exit_info:
        pseudo_labels.main(["--passages", str(passages), "--task", f"nq_open:{tmp_path / 'missing.jsonl'}",
                            "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    assert "missing.jsonl" in capsys.readouterr().err
