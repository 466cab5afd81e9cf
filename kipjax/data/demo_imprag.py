"""The tokenizer of ImpRAG's demo, which runs on the bundled KILT-style demo corpus (`kipjax.data.demo_kilt`):
that corpus's word-level vocabulary, in its order, followed by the words of ImpRAG's prompt templates
(`kipjax.methods.imprag.templates`: "Q:", "A:", "Is this statement true?", the [START] / [END] markers, ...),
so a tiny Llama trained from scratch reads every prompt without unknown words. `<pad>`=0, `</s>`=1 (EOS),
`<unk>`=2, no BOS. `python -m kipjax.data.demo_imprag --out DIR` regenerates the bundled copy in
`kipjax/data/demo_imprag/` byte for byte.
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
from kipjax.methods.imprag import templates

DEMO_IMPRAG_DIR = Path(__file__).resolve().parent / "demo_imprag"
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


def write_corpus(out_dir: Path) -> None:
    """`tokenizer/` in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    save_word_tokenizer(list(dict.fromkeys([*demo_kilt_words(), *template_words()])), out_dir / "tokenizer")


@gin.configurable
def demo_imprag_path(name: str = gin.REQUIRED) -> str:
    """A file or folder of the bundled ImpRAG demo files ('tokenizer'), for gin configs."""
    return bundled_file(DEMO_IMPRAG_DIR, name)


@gin.configurable
def demo_kilt_source(name: str = gin.REQUIRED) -> str:
    """"kilt:PATH" of a task file of the bundled demo KILT corpus: an `Imprag` train or eval file."""
    return f"kilt:{demo_kilt_path(name)}"


def main(argv: Sequence[str] | None = None) -> None:
    regenerate_main(argv, __doc__.split("\n\n")[0], write_corpus, {})


if __name__ == "__main__":
    main()
