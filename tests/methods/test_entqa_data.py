"""EntQA's passage examples on the bundled demo: golds are the KB rows of the mentions inside each passage, their
spans map back to the mention text, and out-of-KB links are counted, not linked."""
import pytest

from kipjax.data import aida
from kipjax.data.demo_entqa import demo_entqa_path
from kipjax.data.entity_kb import read_kilt_entities
from kipjax.methods.entqa import data, inputs
from kipjax.models.hf import load_tokenizer


@pytest.fixture(scope="module")
def demo():
    kb = read_kilt_entities(demo_entqa_path("kb.jsonl"))
    documents = [aida.gold_links(d) for d in aida.read_aida(demo_entqa_path("aida_testa.tsv"))]
    return kb, documents, load_tokenizer(demo_entqa_path("tokenizer"))


def test_passages_hold_the_kb_rows_and_spans_of_their_mentions(demo):
    kb, documents, tokenizer = demo
    examples = data.corpus_examples(documents[:10], kb, tokenizer)
    assert examples.out_of_kb_links == 0
    found = 0
    for example in examples.passages:
        doc = next(d for d in documents if d["id"] == example.passage.doc_id)
        links = {(s, e): t for s, e, t in doc["links"]}
        assert len(example.gold_entities) == len(set(example.gold_entities)) == len(example.gold_spans)
        for entity, spans in zip(example.gold_entities, example.gold_spans):
            for first, last in spans:
                start, end = example.passage.char_span(first, last)
                assert links[(start, end)] == kb.titles[entity]  # the span is that entity's mention
                found += 1
        assert example.topic_ids == tuple(inputs.pieces(tokenizer, doc["text"].split(" ", 1)[0]))
    assert found > len(examples.passages)  # most passages mention something; overlaps repeat mentions


def test_links_outside_the_kb_are_counted_not_linked(demo):
    kb, documents, tokenizer = demo
    record = {"id": "x", "text": "SOCCER - Nowhere beat nobody .", "links": [[9, 16, "Nowhere At All"]]}
    examples = data.document_examples(record, kb, tokenizer, topic_mode="none")
    assert examples.out_of_kb_links == 1 and examples.passages[0].gold_entities == ()
    assert examples.passages[0].topic_ids == ()
