"""The seq2seq coreference method: training arrays, the loss, constrained decoding to valid annotations, the
evaluation's mapping back to words, and starting from a Hugging Face checkpoint."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from kipjax.data import demo_coref
from kipjax.data.coref import canonical, read_jsonlines, write_jsonlines
from kipjax.methods.coref import featurize as feat
from kipjax.methods.coref.seq2seq import Seq2seqCoref
from kipjax.metrics.coref import coref_scores
from kipjax.models import hf
from kipjax.models.t5 import T5, T5Config

TINY = dict(vocab_size=256, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4, dropout_rate=0.0,
            feed_forward_proj="gated-gelu", tie_word_embeddings=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    train = read_jsonlines(demo_coref.demo_coref_path("train.jsonlines"))[:6]
    dev = read_jsonlines(demo_coref.demo_coref_path("dev.jsonlines"))[:5]
    write_jsonlines(root / "train.jsonlines", train)
    write_jsonlines(root / "dev.jsonlines", dev)
    return root


def method(corpus, **kwargs):
    settings = dict(train_file=str(corpus / "train.jsonlines"), eval_file=str(corpus / "dev.jsonlines"),
                    tokenizer_dir=demo_coref.demo_coref_path("tokenizer"), max_segment_length=64,
                    segment_stride=32, eval_max_length=128, beam_size=2, eval_batch_size=4, max_clusters=16)
    if "pretrained" not in kwargs:
        settings["model_config"] = T5Config(**TINY)
    return Seq2seqCoref(**{**settings, **kwargs})


def params_of(m, seed=0):
    batch = {k: v[:2] for k, v in m.train_examples().items()}
    return nn.unbox(m.init(jax.random.PRNGKey(seed), batch))


def gold_linearizations(m, segments):
    return [feat.encode_example(s, m.symbols, m.representation, m.identity, m.actions)[1][1:] + [m.symbols.eos]
            for s in segments]


def test_training_arrays_pair_decoder_inputs_with_targets(corpus):
    m = method(corpus)
    ex = m.train_examples()
    n = len(ex["input_ids"])
    assert n >= 6 and all(len(v) == n for v in ex.values())
    for row in range(n):
        length = ex["target_mask"][row].sum()
        targets, inputs = ex["targets"][row, :length], ex["decoder_input_ids"][row, :length]
        assert targets[-1] == m.symbols.eos and inputs[0] == 0
        # Copy actions: <c> where the next decoder input is a source token, the token itself elsewhere.
        copied = targets[:-1] == m.symbols.copy
        assert np.all(inputs[1:][~copied] == targets[:-1][~copied])
        source = ex["input_ids"][row, :ex["attention_mask"][row].sum() - 1]
        assert np.array_equal(inputs[1:][copied], source)


@pytest.mark.slow
def test_loss_ignores_padded_target_positions(corpus):
    m = method(corpus)
    params = params_of(m)
    batch = {k: jnp.asarray(v[:3]) for k, v in m.train_examples().items()}
    loss, metrics = m.loss(params, batch, jax.random.PRNGKey(0))
    scrambled = {**batch, "targets": jnp.where(batch["target_mask"] == 1, batch["targets"], 7)}
    loss2, _ = m.loss(params, scrambled, jax.random.PRNGKey(0))
    assert float(loss) == pytest.approx(float(loss2)) and float(loss) > 0
    assert 0 <= float(metrics["token_accuracy"]) <= 1
    # The value is the mean token cross-entropy over real target positions.
    logits = m.model.apply({"params": params}, batch["input_ids"], batch["attention_mask"],
                           batch["decoder_input_ids"]).logits
    log_p = jax.nn.log_softmax(logits)
    picked = np.take_along_axis(np.asarray(log_p), np.asarray(batch["targets"])[..., None], -1)[..., 0]
    mask = np.asarray(batch["target_mask"], bool)
    assert float(loss) == pytest.approx(-picked[mask].mean(), rel=1e-5)


def without_markup(out, sym):
    """The tokens of a full linearization outside `<m>`, `| digits </m>` and `</m_l>`: its copy of the source."""
    text, in_identity = [], False
    for token in out:
        if token == sym.separator:
            in_identity = True
        elif token == sym.mention_end:
            in_identity = False
        elif not (in_identity or sym.is_special(token)):
            text.append(token)
    return text


def bracket_spans(out, sym):
    """Distinct piece spans of the mentions of a full linearization, read off its brackets with a stack."""
    spans, open_starts, position, in_identity = set(), [], 0, False
    for token in out:
        if token == sym.mention_start:
            open_starts.append(position)
        elif token == sym.separator:
            in_identity = True
        elif token == sym.mention_end or sym.cluster_index(token) is not None:
            in_identity = False
            spans.add((open_starts.pop(), position - 1))
        elif not in_identity:
            position += 1
    return spans


@pytest.mark.parametrize("representation,identity,actions", [
    ("full", "after", "copy"), ("full", "free", "copy"), ("full", "after", "token"),
    pytest.param("partial", "after", "token", marks=pytest.mark.slow)])
def test_constrained_decoding_of_an_untrained_model_gives_valid_annotations(corpus, representation, identity,
                                                                          actions):
    m = method(corpus, representation=representation, identity=identity, actions=actions, max_decode_length=96)
    decoded = m.decode_segments(params_of(m, seed=3), m.eval_segments)
    sym = m.symbols
    for segment, out in zip(m.eval_segments, decoded):
        assert out[-1] == sym.eos and len(out) <= 96
        assert out.count(sym.mention_start) == out.count(sym.mention_end) + sum(
            sym.cluster_index(t) is not None for t in out)  # every mention closed
        parsed = m.parse(out, segment)
        for cluster in parsed:
            assert all(0 <= s <= e < len(m.eval_documents[segment.doc_index].tokens) for s, e in cluster)
        if representation == "full":
            assert without_markup(out[:-1], sym) == segment.ids  # the source, copied exactly
            spans = bracket_spans(out[:-1], sym)
            assert {span for cluster in parsed for span in cluster} == spans and spans  # every decoded mention
        else:  # a random model's mention words may not align to their sentence, so some may be lost
            assert out.count(sym.sentence_start) == out.count(sym.sentence_end) == len(segment.sentence_lengths)
            assert sum(map(len, parsed)) <= out.count(sym.mention_start)


def test_evaluation_of_gold_linearizations_is_perfect_and_writes_predictions(corpus, tmp_path, monkeypatch):
    out_file = tmp_path / "pred.jsonlines"
    m = method(corpus, predictions_file=str(out_file))
    monkeypatch.setattr(m, "decode_segments", lambda params, segments: gold_linearizations(m, segments))
    metrics = m.evaluate(None)
    assert metrics["conll_f1"] == pytest.approx(1.0) and metrics["mention_f1"] == pytest.approx(1.0)
    gold = [d.clusters for d in m.eval_documents]
    singletons = [[[span] for cluster in doc for span in cluster] for doc in gold]
    assert metrics["singletons_baseline_conll_f1"] == pytest.approx(coref_scores(gold, singletons)["conll_f1"])
    written = read_jsonlines(out_file)
    assert [d.doc_key for d in written] == [d.doc_key for d in m.eval_documents]
    assert [d.clusters for d in written] == [canonical(c) for c in gold]


def test_evaluation_segments_keep_their_clusters_apart(corpus, monkeypatch):
    m = method(corpus, eval_max_length=24)
    assert len(m.eval_segments) > len(m.eval_documents)  # documents were cut
    monkeypatch.setattr(m, "decode_segments", lambda params, segments: gold_linearizations(m, segments))
    predicted = m.predict(None)
    for doc_index, doc in enumerate(m.eval_documents):
        # Independently: each segment's word range, and the gold mentions inside it, clustered per segment.
        expected = []
        for segment in (s for s in m.eval_segments if s.doc_index == doc_index):
            words = {w for w in segment.word_of if w != feat.NOT_A_WORD}
            for cluster in doc.clusters:
                inside = [span for span in cluster if span[0] in words and span[1] in words]
                if inside:
                    expected.append(sorted(inside))
        assert sorted(predicted[doc_index]) == sorted(expected)


def test_starts_from_a_hugging_face_checkpoint_with_mean_rows_for_new_symbols(corpus, tmp_path):
    tokenizer_size = len(hf.load_tokenizer(demo_coref.demo_coref_path("tokenizer")))
    config = T5Config(**{**TINY, "vocab_size": tokenizer_size})
    model = T5(config)
    ids = jnp.ones((1, 4), jnp.int32)
    saved = nn.unbox(model.init(jax.random.PRNGKey(1), ids, ids, ids))["params"]
    hf.save_pretrained(model, saved, tmp_path / "t5")
    m = method(corpus, pretrained=str(tmp_path / "t5"))
    assert m.model_config.vocab_size == len(m.tokenizer) > tokenizer_size
    params = params_of(m)
    emb, saved_emb = np.asarray(params["shared"]["embedding"]), np.asarray(saved["shared"]["embedding"])
    np.testing.assert_allclose(emb[:tokenizer_size], saved_emb, rtol=1e-6)
    np.testing.assert_allclose(emb[tokenizer_size:], np.broadcast_to(saved_emb.mean(0), emb[tokenizer_size:].shape),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(params["encoder_layer_0"]["attention"]["query"]["kernel"],
                               saved["encoder_layer_0"]["attention"]["query"]["kernel"], rtol=1e-6)


def test_configuration_errors_are_clear(corpus):
    with pytest.raises(ValueError, match="exactly one of"):
        method(corpus, pretrained="x", model_config=T5Config(**TINY))
    with pytest.raises(ValueError, match="vocab_size 64 is smaller"):
        method(corpus, model_config=T5Config(**{**TINY, "vocab_size": 64}))
    with pytest.raises(ValueError, match="partial linearization"):
        method(corpus, representation="partial", actions="copy")


def test_the_coref_task_feeds_the_trainer_the_methods_own_examples(corpus, assert_same_rows):
    """demo.gin trains from a coref SeqIO task: its zero-padded features, with the masks `batch_from_features`
    derives, are the method's own padded training rows, as a multiset (the feed shuffles)."""
    import gin
    import tasks.coref  # noqa: F401  (registers the tasks)
    from kipjax.data.feed import SeqioFeed
    gin.clear_config()
    m = method(corpus)
    gin.bind_parameter("coref_task_settings.split_files", {"train": str(corpus / "train.jsonlines")})
    gin.bind_parameter("coref_task_settings.tokenizer_dir", demo_coref.demo_coref_path("tokenizer"))
    gin.bind_parameter("coref_task_settings.max_segment_length", 64)
    gin.bind_parameter("coref_task_settings.segment_stride", 32)
    own = m.train_examples()
    lengths = {"inputs": own["input_ids"].shape[1], "decoder_input_ids": own["targets"].shape[1],
               "targets": own["targets"].shape[1]}
    gin.bind_parameter("SeqioFeed.task_feature_lengths", lengths)
    n = len(own["input_ids"])
    batch = m.batch_from_features(SeqioFeed("coref_seq2seq", n).peek())  # what the trainer does
    gin.clear_config()
    assert_same_rows(batch, own)
