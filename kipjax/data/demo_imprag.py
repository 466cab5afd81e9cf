"""What ImpRAG's demo adds to the bundled KILT-style demo corpus (`kipjax.data.demo_kilt`), which it runs on:

  tokenizer/                     that corpus's word-level vocabulary, in its order, followed by the words of
                                 ImpRAG's prompt templates (`kipjax.methods.imprag.templates`: "Q:", "A:", "Is
                                 this statement true?", the [START] / [END] markers, ...), so a tiny Llama trained
                                 from scratch reads every prompt without unknown words. `<pad>`=0, `</s>`=1 (EOS),
                                 `<unk>`=2, no BOS.
  psgs_w32.tsv                   the passage corpus ImpRAG's demo retrieves from: the demo KILT knowledge source
  psgs_w32.wikipedia_ids.tsv     cut into 32-word passages (`python -m kipjax.data.kilt passages --words 32
                                 --first_id 1`; DPR's layout) and their pages. The chapter's passages are
                                 DPR's 100 words; a tiny model on 2 CPU cores learns to read a 32-word passage
                                 (about 45 tokens with its title) in minutes, where 100-word ones (128 tokens,
                                 kipjax/data/demo_kilt/passages.tsv) cost 6x the time a step and, in 2,000
                                 steps, taught it to retrieve but not to read.
  reading_comprehension.json     an instruction-tuning task without retrieval, in SQuAD v2's layout: each qa
                                 training question with a context from its gold paragraph, the sentence that
                                 holds the answer and the next one (questions whose answer the paragraph does not
                                 spell out are left out). It plays the chapter's reading
                                 comprehension sets (Table C.4): the model learns to copy an answer from text in
                                 its context, with the same attention that reads retrieved passages.
`python -m kipjax.data.demo_imprag --out DIR` regenerates the bundled copy in `kipjax/data/demo_imprag/` byte
for byte.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

import gin

from kipjax.data.bundled import bundled_file, regenerate_main
from kipjax.data.demo_coref import save_word_tokenizer
from kipjax.data.demo_kilt import DEMO_KILT_DIR, demo_kilt_path
from kipjax.data.kilt import passage_file_names, read_kilt_task, read_knowledge_source, write_passages
from kipjax.methods.imprag import templates

DEMO_IMPRAG_DIR = Path(__file__).resolve().parent / "demo_imprag"
READING_COMPREHENSION = "reading_comprehension.json"
PASSAGE_WORDS = 32
PASSAGES = passage_file_names(PASSAGE_WORDS)[0]  # psgs_w32.tsv
WINDOW_SENTENCES = 2  # a context's sentences: short prompts keep the demo's training sequences short
TEMPLATE_TEXTS = (*templates.TEMPLATES.values(), *templates.MENTION_MARKERS, *templates.FEVER_ANSWERS.values(),
                  "next sentence", "previous sentence")


def template_words() -> list[str]:
    """Every whitespace-separated word of the templates but their {slots}, in order of appearance."""
    words = (w for text in TEMPLATE_TEXTS for w in text.split())
    return list(dict.fromkeys(w for w in words if not re.fullmatch(r"\{\w+\}|\.\.\.", w)))


def demo_kilt_words() -> list[str]:
    """The demo KILT tokenizer's words by id (its special and number tokens are added back by the helper)."""
    vocab = json.loads((DEMO_KILT_DIR / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    return sorted(vocab, key=vocab.__getitem__)


def answer_window(paragraph: str, answer: str) -> str | None:
    """The paragraph's first sentence that holds `answer` and the sentence after it (the demo writes a sentence
    as words ending in " ."), or None when no sentence holds it."""
    sentences = [s.strip() + " ." for s in paragraph.split(" .") if s.strip()]
    for i, sentence in enumerate(sentences):
        if answer in sentence:
            return " ".join(sentences[i:i + WINDOW_SENTENCES])
    return None


def reading_comprehension() -> dict:
    """The SQuAD v2-layout task (module docstring), one article per gold page, in question order."""
    paragraphs = {page.wikipedia_id: page.paragraphs for page in read_knowledge_source(
        demo_kilt_path("kilt_knowledgesource.json"))}
    articles: dict[str, dict] = {}
    for example in read_kilt_task(demo_kilt_path("qa-train-kilt.jsonl")):
        span = example.spans[0]
        paragraph = " ".join(p.strip() for p in paragraphs[span.wikipedia_id][span.start_paragraph_id:
                                                                                span.end_paragraph_id + 1])
        context = answer_window(paragraph, example.answers[0])
        if context is None:
            continue
        answer = example.answers[0]
        start = context.find(answer)
        article = articles.setdefault(span.wikipedia_id, {"title": span.wikipedia_id, "paragraphs": []})
        article["paragraphs"].append({"context": context, "qas": [{
            "id": f"rc-{example.id}", "question": example.input, "is_impossible": False,
            "answers": [{"text": answer, "answer_start": start}]}]})
    return {"version": "v2.0", "data": list(articles.values())}


def write_corpus(out_dir: Path) -> None:
    """`tokenizer/`, the passages and the reading comprehension task in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_passages(demo_kilt_path("kilt_knowledgesource.json"), out_dir, PASSAGE_WORDS, first_id=1, force=True)
    (out_dir / READING_COMPREHENSION).write_text(json.dumps(reading_comprehension(), ensure_ascii=False) + "\n",
                                                 encoding="utf-8")
    save_word_tokenizer(list(dict.fromkeys([*demo_kilt_words(), *template_words()])), out_dir / "tokenizer")


@gin.configurable
def demo_imprag_path(name: str = gin.REQUIRED) -> str:
    """A file or folder of the bundled ImpRAG demo files ('tokenizer', 'psgs_w32.tsv',
    'reading_comprehension.json'), for gin configs."""
    return bundled_file(DEMO_IMPRAG_DIR, name)


@gin.configurable
def demo_kilt_source(name: str = gin.REQUIRED) -> str:
    """"kilt:PATH" of a task file of the bundled demo KILT corpus: an `Imprag` train or eval file."""
    return f"kilt:{demo_kilt_path(name)}"


@gin.configurable
def demo_reading_comprehension_source() -> str:
    """"squad_v2:PATH" of the bundled reading comprehension task: an `Imprag` train file."""
    return f"squad_v2:{demo_imprag_path(READING_COMPREHENSION)}"


def main(argv: Sequence[str] | None = None) -> None:
    regenerate_main(argv, __doc__.split("\n\n")[0], write_corpus, {})


if __name__ == "__main__":
    main()
