"""Deterministic demo corpus for seq2seq coreference, in the common jsonlines format, with a word tokenizer.

Each document is a short story about one man, one woman and one object, told in 3-6 sentences drawn from
templates. Mentions are the people's names, their pronouns (he / him / his, she / her), the object's noun
phrase ("the lamp") and `it`, possessive noun phrases that nest a pronoun ("[[his] dog]", an entity of its
own), and bystanders ("a stranger"), each a singleton. Which entity a pronoun
refers to is decided by gender (and `it` by the single object), so a model that reads the context resolves
every mention, while a model that does not can at best guess: the all-singletons reference scores MUC 0.

The tokenizer is word level (every corpus word, the cluster numbers 0..63 as whole tokens, and T5's
`<pad>`, `</s>`, `<unk>` at ids 0, 1, 2), saved where `AutoTokenizer` loads it; the coreference symbols are
added by the method at run time, as for a pretrained T5 vocabulary. `python -m kipjax.data.demo_coref --out DIR`
regenerates the bundled copy in `kipjax/data/demo_coref/` byte for byte.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Sequence

import gin
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from kipjax.data.bundled import bundled_file, regenerate_main
from kipjax.data.coref import CorefDocument, write_jsonlines

DEMO_COREF_DIR = Path(__file__).resolve().parent / "demo_coref"
SEED = "kipjax-demo-coref-v1"
SPLIT_SIZES = {"train": 800, "dev": 40, "test": 40}
PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
NUMBER_TOKENS = 64  # cluster numbers written as one token each

MEN = ("Tom", "Sam", "Max", "Leo", "Ben", "Hugo", "Ivan", "Omar", "Raj", "Felix", "Igor", "Noah")
WOMEN = ("Ann", "Eva", "Mia", "Zoe", "Lea", "Nora", "Ines", "Yuki", "Rosa", "Ida", "Vera", "Alma")
OBJECTS = ("lamp", "boat", "letter", "key", "map", "drum", "clock", "kite", "ring", "coat", "book", "cart")
PLACES = ("market", "harbor", "station", "garden", "bridge", "library", "square", "mill")
BYSTANDERS = ("a stranger", "a child", "a guard", "the baker", "a neighbour", "the driver")
PETS = ("dog", "cat", "horse", "parrot")
ADJECTIVES = ("old", "heavy", "broken", "shiny", "new", "small")
PRONOUNS = {"m": ("he", "him", "his"), "f": ("she", "her", "her")}

# A template is a list of words and slots. Slots: M/F (the man's / woman's name), S/O/P + gender (subject,
# object, possessive pronoun: "Sm" = he), T (the object's noun phrase), IT, B (a bystander), N (pet noun
# phrase nesting a possessive: "[[his] dog]", the same pet each time), X (place), A (adjective). Slot order decides mention order.
OPENINGS = (("M", "met", "F", "at", "the", "X", "."), ("F", "met", "M", "at", "the", "X", "."),
            ("M", "and", "F", "walked", "to", "the", "X", "."), ("F", "waited", "for", "M", "near", "the", "X", "."))
TEMPLATES = (
    ("Sm", "gave", "Of", "T", "."), ("Sf", "gave", "Om", "T", "."), ("Sf", "thanked", "Om", "."),
    ("Sm", "thanked", "Of", "."), ("F", "said", "that", "Sf", "liked", "T", "."),
    ("M", "said", "that", "Sm", "needed", "T", "."), ("T", "was", "A", "."), ("IT", "was", "A", "."),
    ("B", "watched", "Om", "."), ("B", "smiled", "at", "Of", "."), ("Nm", "barked", "at", "B", "."),
    ("Nf", "slept", "near", "IT", "."), ("Sm", "carried", "IT", "home", "."), ("Sf", "found", "T", "."),
    ("M", "asked", "F", "about", "T", "."), ("Sf", "told", "M", "about", "Pf", "trip", "."),
    ("Sm", "told", "F", "about", "Pm", "work", "."), ("the", "X", "was", "quiet", "."),
)


def _story(rng: random.Random) -> tuple[list[list[str]], list[list[tuple[int, int]]]]:
    """Sentences and clusters (inclusive word spans) of one story."""
    man, woman, thing = rng.choice(MEN), rng.choice(WOMEN), rng.choice(OBJECTS)
    pet = {"m": rng.choice(PETS), "f": rng.choice(PETS)}
    bystanders = rng.sample(BYSTANDERS, len(BYSTANDERS))  # each bystander at most once: distinct singletons
    entities: dict[str, list[tuple[int, int]]] = {"m": [], "f": [], "t": [], "pet_m": [], "pet_f": []}
    singletons: list[list[tuple[int, int]]] = []
    sentences: list[list[str]] = []
    position = 0

    def add(words: list[str], entity: str | None) -> tuple[int, int]:
        nonlocal position
        span = (position, position + len(words) - 1)
        sentence.extend(words)
        position += len(words)
        if entity is None:
            singletons.append([span])
        else:
            entities[entity].append(span)
        return span

    templates = [rng.choice(OPENINGS)] + [rng.choice(TEMPLATES) for _ in range(rng.randint(2, 5))]
    for template in templates:
        sentence: list[str] = []
        for slot in template:
            if slot in ("M", "F"):
                add([man if slot == "M" else woman], slot.lower())
            elif slot[0] in "SOP" and len(slot) == 2:
                add([PRONOUNS[slot[1]]["SOP".index(slot[0])]], slot[1])
            elif slot == "T":
                add(["the", thing], "t")
            elif slot == "IT":
                add(["it"], "t")
            elif slot == "B":
                add(bystanders.pop().split(), None)
            elif slot[0] == "N":
                start = position
                add([PRONOUNS[slot[1]][2]], slot[1])
                sentence.append(pet[slot[1]])
                position += 1
                entities[f"pet_{slot[1]}"].append((start, position - 1))
            elif slot == "X":
                sentence.append(rng.choice(PLACES))
                position += 1
            elif slot == "A":
                sentence.append(rng.choice(ADJECTIVES))
                position += 1
            else:
                sentence.append(slot)
                position += 1
        sentences.append([w.capitalize() if i == 0 else w for i, w in enumerate(sentence)])
    clusters = [spans for spans in entities.values() if spans] + singletons
    return sentences, clusters


def build_corpus(seed: str = SEED) -> dict[str, list[CorefDocument]]:
    """{split: documents}; each split draws from its own seeded generator."""
    corpus = {}
    for split, size in SPLIT_SIZES.items():
        rng = random.Random(f"{seed}/{split}")
        corpus[split] = [CorefDocument(f"demo_{split}_{i:04d}", *_story(rng)) for i in range(size)]
    return corpus


def save_word_tokenizer(words: Sequence[str], out_dir: Path) -> PreTrainedTokenizerFast:
    """A T5-like word-level tokenizer: `<pad>`=0, `</s>`=1, `<unk>`=2, the numbers, then `words`; appends `</s>`."""
    vocab = [PAD, EOS, UNK, *(str(k) for k in range(NUMBER_TOKENS))]
    vocab += [w for w in words if w not in set(vocab)]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", special_tokens=[(EOS, 1)])
    tokenizer.add_special_tokens([PAD, EOS, UNK])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=PAD, eos_token=EOS, unk_token=UNK)
    wrapped.save_pretrained(str(out_dir))
    return wrapped


def write_corpus(out_dir: Path, seed: str = SEED) -> None:
    """`{train,dev,test}.jsonlines` and `tokenizer/` in `out_dir`."""
    corpus = build_corpus(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, docs in corpus.items():
        write_jsonlines(out_dir / f"{split}.jsonlines", docs)
    words = sorted({w for docs in corpus.values() for d in docs for w in d.tokens})
    save_word_tokenizer(words, out_dir / "tokenizer")


@gin.configurable
def demo_coref_path(name: str = gin.REQUIRED) -> str:
    """A file or folder of the bundled corpus, e.g. 'train.jsonlines' or 'tokenizer' (for gin configs)."""
    return bundled_file(DEMO_COREF_DIR, name)


def main(argv: Sequence[str] | None = None) -> None:
    regenerate_main(argv, __doc__.split("\n\n")[0], write_corpus, SPLIT_SIZES)


if __name__ == "__main__":
    main()
