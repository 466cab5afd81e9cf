"""The retrieve-then-generate baseline (RA-IT) on the bundled demo corpus: the retriever's passages in the
training and evaluation prompts, the loss over the response alone, and evaluation with and without them."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from kipjax.data.demo_imprag import demo_imprag_path
from kipjax.data.demo_kilt import demo_kilt_path
from kipjax.data.kilt import read_passages
from kipjax.methods.imprag import data
from kipjax.methods.imprag.in_context import InContextRag
from kipjax.methods.imprag.pseudo_labels import pseudo_label_path
from kipjax.models.llama import LlamaConfig

QA, FC = f"kilt:{demo_kilt_path('qa-train-kilt.jsonl')}", f"kilt:{demo_kilt_path('fc-dev-kilt.jsonl')}"
PER_DATASET = 6


def ranking_of(i: int, ids: list[str]) -> list[str]:
    """The fake retriever's ranking of example i: rows 5i, 5i + 1, ... (each example's list differs)."""
    return [ids[(5 * i + r) % len(ids)] for r in range(20)]


@pytest.fixture(scope="module")
def rankings_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("rankings")
    ids = [str(i) for i in read_passages(demo_kilt_path("passages.tsv")).ids]
    for source in (QA, FC):
        with open(source.partition(":")[2]) as f:
            lines = [json.dumps({"id": json.loads(line)["id"], "passages": ranking_of(i, ids)})
                     for i, line in enumerate(f)]
        pseudo_label_path(out, source).write_text("\n".join(lines) + "\n")
    return out


def make_method(rankings_dir, **kwargs):
    config = LlamaConfig(vocab_size=1680, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    settings = dict(passages_file=demo_kilt_path("passages.tsv"), train_files=[QA], eval_files=[QA, FC],
                    rankings_dir=str(rankings_dir), tokenizer_dir=demo_imprag_path("tokenizer"), model_config=config,
                    examples_per_dataset=PER_DATASET, plain_text_share=0.25, max_prompt_tokens=48,
                    max_response_tokens=8, passage_tokens=32, top_k=2, passage_separator=" | ", eval_limit=3,
                    eval_batch_size=4, max_new_tokens=3)
    settings.update(kwargs)
    return InContextRag(**settings)


@pytest.fixture(scope="module")
def method(rankings_dir):
    return make_method(rankings_dir)


def test_context_tokens_drop_pads_and_eos_and_separate_passages():
    table = np.array([[5, 0, 6, 1, 0], [7, 1, 0, 0, 0]])  # EOS = 1, pad = 0 (and a real token 0, as Llama 3's "!")
    assert data.context_tokens(table, 1, [9]) == [5, 0, 6, 9, 7, 9]
    sequence = data.TokenSequence([2, 30, 31, 40, 1], prompt_length=3)  # BOS, prompt 30 31, response 40, EOS
    assert data.insert_context(sequence, [5, 9], has_bos=True) == data.TokenSequence([2, 5, 9, 30, 31, 40, 1], 5)
    assert data.insert_context(sequence, [5, 9], has_bos=False) == data.TokenSequence([5, 9, 2, 30, 31, 40, 1], 5)


def test_training_rows_read_the_retrievers_top_k_before_the_prompt(method):
    arrays = method.train_examples()
    tokenizer, separator = method.tokenizer, method.separator
    assert separator == tokenizer(" | ", add_special_tokens=False)["input_ids"] and separator
    ids = [str(i) for i in read_passages(demo_kilt_path("passages.tsv")).ids]
    first = method.training[0]
    with open(demo_kilt_path("qa-train-kilt.jsonl")) as f:
        line = [json.loads(x)["id"] for x in f].index(first.id)
    rows = [ids.index(p) for p in ranking_of(line, ids)[:2]]
    passages = [method.passage_table[r][:list(method.passage_table[r]).index(tokenizer.eos_token_id)].tolist()
                for r in rows]  # no EOS, no pads
    prompt = tokenizer(first.prompt, add_special_tokens=False)["input_ids"]
    response = tokenizer(" " + first.response, add_special_tokens=False)["input_ids"]
    expected = passages[0] + separator + passages[1] + separator + prompt + response + [tokenizer.eos_token_id]
    width = int(arrays["attention_mask"][0].sum())
    assert arrays["input_ids"][0, :width].tolist() == expected[:-1]
    assert arrays["targets"][0, :width].tolist() == expected[1:]
    context = len(expected) - len(response) - 1
    np.testing.assert_array_equal(np.flatnonzero(arrays["loss_mask"][0]), np.arange(context - 1, width))
    plain = method.training[-1]  # a plain-text row reads no passages
    assert plain.task == "plain_text"
    plain_ids = tokenizer(" " + plain.response, add_special_tokens=False)["input_ids"][:7]
    assert arrays["input_ids"][-1, :len(plain_ids)].tolist() == plain_ids


@pytest.mark.slow  # about 20 s of compilation; the fast suite keeps the prompt-layout tests
def test_the_loss_is_the_mean_response_token_cross_entropy(method):
    arrays = method.train_examples()
    batch = {k: jnp.asarray(v[:4]) for k, v in arrays.items()}
    params = nn.unbox(method.init(jax.random.PRNGKey(0), batch))
    (loss, metrics), grads = jax.value_and_grad(method.loss, has_aux=True)(params, batch, jax.random.PRNGKey(1))
    logits = method.llama.apply({"params": params}, batch["input_ids"], batch["attention_mask"]).logits
    log_probs = np.asarray(jax.nn.log_softmax(logits), np.float64)
    mask = np.asarray(batch["loss_mask"], bool)
    picked = np.take_along_axis(log_probs, np.asarray(batch["targets"])[..., None], -1)[..., 0]
    np.testing.assert_allclose(float(loss), -picked[mask].mean(), rtol=1e-5)
    assert float(metrics["generation_loss"]) == pytest.approx(float(loss))
    assert optax.global_norm(grads) > 0


@pytest.mark.slow
def test_evaluation_reads_the_rankings_top_k_and_reports_no_retrieval(method, tmp_path):
    method.predictions_dir = str(tmp_path)
    arrays = method.train_examples()
    params = nn.unbox(method.init(jax.random.PRNGKey(0), {k: jnp.asarray(v[:1]) for k, v in arrays.items()}))
    metrics = method.evaluate(params)
    assert set(metrics) == {"qa/exact_match", "qa/answer_recall@1", "qa/answer_recall@2",
                            "qa/no_retrieval_exact_match", "fc/exact_match", "fc/no_retrieval_exact_match",
                            "average/exact_match", "average/answer_recall@2", "average/no_retrieval_exact_match"}
    ids = [str(i) for i in read_passages(demo_kilt_path("passages.tsv")).ids]
    rows = [json.loads(line) for line in (tmp_path / "qa-train-kilt.jsonl.predictions.jsonl").open()]
    assert [r["passages"] for r in rows] == [[method.passage_texts[ids.index(p)] for p in ranking_of(i, ids)[:2]]
                                             for i in range(3)]


@pytest.mark.slow  # about 14 s of compilation
def test_answers_equal_greedy_full_passes(method):
    """Cached decoding of a prompt with its passages equals argmax over repeated full forward passes."""
    arrays = method.train_examples()
    params = nn.unbox(method.init(jax.random.PRNGKey(3), {k: jnp.asarray(v[:1]) for k, v in arrays.items()}))
    prompt = data.insert_context(data.TokenSequence(method.eval_sets[0].prompts[0], 0),
                                 method._context(method.eval_rankings[0][0]), False).ids
    tokens = list(prompt)
    for _ in range(method.max_new_tokens):
        ids = jnp.asarray([tokens])
        logits = method.llama.apply({"params": params}, ids, jnp.ones_like(ids)).logits
        tokens.append(int(jnp.argmax(logits[0, -1])))
    generated = tokens[len(prompt):]
    eos = generated.index(method.tokenizer.eos_token_id) if method.tokenizer.eos_token_id in generated else None
    expected = method.tokenizer.decode(generated[:eos], skip_special_tokens=True).strip()
    assert method.answer(params, [prompt]) == [expected]


def test_missing_evaluation_rankings_name_the_command(rankings_dir, tmp_path):
    (tmp_path / pseudo_label_path(rankings_dir, QA).name).write_text(pseudo_label_path(rankings_dir, QA).read_text())
    with pytest.raises(FileNotFoundError, match="fc-dev-kilt.jsonl.*kipjax.methods.imprag.pseudo_labels"):
        make_method(tmp_path)
