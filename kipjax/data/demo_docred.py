"""Deterministic demo corpus for document-level relation extraction, in DocRED's exact JSON layout, with the two
tokenizers LMRC trains from scratch (a BERT WordPiece one for stage 1, a word-level Llama one for stage 2).

Each document (4-7 sentences) is about one fictional person: where and when they were born, who employs them
and where that organisation is based, whom they married, which country they are a citizen of, and where the
cities mentioned lie (city -> province -> country). Eight real DocRED relations are used, with DocRED's ids and
names (`RELATIONS`). The text alone decides every label (no label noise; tests/data/test_demo_docred.py
recovers all of them with a dozen regular expressions):
  "X was born in C on D ."  X P19 C, X P569 D          "X works for O ." / "X joined O in T ."  X P108 O
  "O is based in C ." / "O has its headquarters in C ."  O P159 C
  "X is a citizen of Z ."  X P27 Z                      "X married S in T ."  X P26 S and S P26 X (both ways)
  "C is a city in R ."  C P131 R     "R is a province of Z ."  R P17 Z     "C is a city in Z ."  C P17 Z
(whether a place is a province or a country is fixed by its name, the two pools being disjoint, as world
knowledge decides it in DocRED). Three kinds of fact need two sentences, and their evidence lists both: a
city's country stated through its province ("C is a city in R ." ... "R is a province of Z ."), a marriage
told as "X met S in C . They married in T .", and citizenship told as "X moved to Z in T . Later , X became a
citizen there .". Distractor sentences put entities side by side without a relation, some worded exactly as
the first half of those pairs ("X met F in C ." with no marriage after it, "X moved to Z in T ." alone), others
"X visited C in T .", "O opened an office in C in T .", awards, employee counts, friends; so most ordered
entity pairs are negatives, as in DocRED.

A person is named in full at first mention and mostly by surname afterwards; an organisation by its full
name, then often by its first word. Names come from shared pools of first names, surnames, organisation words,
cities, provinces and countries; the person and organisation name *combinations* are split between train, dev
and test, so test documents are about people unseen in training whose every word was seen in training.
Places are assigned to provinces and countries per document, so geography cannot be memorised either.

Files (test.json keeps its labels, unlike DocRED's, so the demo can score test):
  train_annotated.json, dev.json, test.json   documents
  rel2id.json, rel_info.json                  the relation vocabulary ({"Na": 0, ...}) and names
  bert_tokenizer/   WordPiece over the corpus words (`kipjax.data.tokenizer.word_vocabulary`), lower-cased,
                    with the ATLOP mention marker `*` as an ordinary character token
  llama_tokenizer/  word level: `<pad>`=0, `<s>`=1 (bos, prepended), `</s>`=2 (eos, never added: append it
                    to targets), `<unk>`=3, then `PROMPT_WORDS`, then every corpus and relation-name word. The
                    pre-tokenizer splits on whitespace and isolates each punctuation character, so prompts may
                    write pairs either spaced or as "(Novak| -| Lorvik)" / answers "(Novak| place of birth|
                    Lorvik)". Corpus words contain no punctuation inside, so they stay whole. Decoding joins
                    tokens with single spaces.

`python -m kipjax.data.demo_docred --out DIR` regenerates the bundled copy in `kipjax/data/demo_docred/` byte
for byte (string-seeded `random.Random` per split, no set or hash order).
"""
from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Any, Sequence

import gin
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from kipjax.data.bundled import bundled_file, regenerate_main
from kipjax.data.tokenizer import save_wordpiece_tokenizer, word_vocabulary

DEMO_DOCRED_DIR = Path(__file__).resolve().parent / "demo_docred"
SEED = "kipjax-demo-docred-v1"
SPLIT_FILES = {"train": "train_annotated.json", "dev": "dev.json", "test": "test.json"}
SPLIT_SIZES = {"train": 400, "dev": 50, "test": 50}
MIN_SENTENCES, MAX_SENTENCES = 4, 7
ENTITY_MARKER = "*"  # ATLOP's mention marker; must be a known token of the BERT tokenizer

# DocRED's property ids and names (its rel_info.json), in rel2id order after "Na".
RELATIONS = {"P17": "country", "P131": "located in the administrative territorial entity",
             "P27": "country of citizenship", "P569": "date of birth", "P19": "place of birth",
             "P108": "employer", "P159": "headquarters location", "P26": "spouse"}
SYMMETRIC_RELATIONS = ("P26",)

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
# Words a stage-2 prompt may use besides the documents' words and the relation names.
PROMPT_WORDS = ("Document", "Pairs", "Answer", "Relations", "Candidates", "none", ":", "(", ")", "|", "-", ";",
                ",")

FIRST_NAMES = ("Anna", "Bruno", "Clara", "Dario", "Elena", "Felix", "Greta", "Hugo", "Irene", "Jonas", "Karla",
               "Lukas", "Marta", "Nils", "Olga", "Pavel", "Rosa", "Stefan", "Tilda", "Umberto", "Vera", "Walter",
               "Xenia", "Yannick", "Zora", "Agnes", "Boris", "Celine", "Dmitri", "Edith", "Fabio", "Gisela",
               "Henrik", "Ida", "Jakob", "Lena", "Milan", "Nora", "Oskar", "Petra")
SURNAMES = ("Albrecht", "Bauer", "Castell", "Dorn", "Eckhart", "Falk", "Gruber", "Hollis", "Ingram", "Jansen",
            "Keller", "Lindqvist", "Moravec", "Novak", "Oberg", "Pascal", "Quist", "Rainer", "Sorel", "Tamm",
            "Ulrich", "Varga", "Weller", "Yorke", "Zeller", "Amsel", "Brandt", "Corvin", "Delacroix", "Ferrand",
            "Gallo", "Hartig", "Ivers", "Kovac", "Lorenz", "Marek", "Nyberg", "Orsini", "Petrov", "Rask")
ORG_WORDS = ("Halden", "Meridian", "Northgate", "Silverline", "Bluestone", "Crestwood", "Ironbridge", "Oakfield",
             "Redwater", "Sunvale", "Westmark", "Greyhaven", "Lakeshore", "Highpoint", "Brightwell", "Stonegate",
             "Clearwater", "Fairhaven", "Goldcrest", "Riverton")
ORG_KINDS = ("Bank", "Press", "Airlines", "Motors", "Records", "Studios", "Insurance", "Foods")
CITIES = ("Arvik", "Belmora", "Calvero", "Dunmere", "Estravo", "Falkirsk", "Gorvale", "Halvik", "Istrana",
          "Jorvale", "Kelmar", "Lunetta", "Marvos", "Nordby", "Ormont", "Pellago", "Quenby", "Rivasto", "Selmark",
          "Tarvik", "Ulmora", "Valdena", "Wexmoor", "Yselle", "Zandor", "Brevik", "Corlano", "Dravik", "Elmora",
          "Lorvik")
PROVINCES = ("Alvara", "Brisca", "Cantora", "Delmara", "Esquira", "Fontana", "Galdor", "Harrow", "Ilvaro",
             "Kastel", "Lombra", "Morvain", "Nerisa", "Orlanda")
COUNTRIES = ("Aldovia", "Brennia", "Carvania", "Dorvania", "Estmark", "Faldoria", "Galicor", "Hesperia",
             "Illyria", "Kordavia", "Lusenia", "Montavia")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
OCCUPATIONS = ("writer", "painter", "engineer", "architect", "physician", "lawyer", "economist", "chemist",
               "journalist", "composer")
AWARD_ADJECTIVES = ("Golden", "Silver", "Crystal", "Ivory")
AWARD_NOUNS = ("Quill", "Compass", "Lantern", "Anchor")
AWARD_KINDS = ("Prize", "Medal", "Award")
EMPLOYEE_COUNTS = ("120", "250", "400", "800", "1500", "3000", "6000", "12000")
EVENT_YEARS = tuple(str(y) for y in range(1975, 2021))
BIRTH_YEARS = tuple(str(y) for y in range(1930, 1975))
# Person and organisation name combinations held out for dev and test (the rest are train's).
HELD_OUT_PEOPLE = {"dev": 160, "test": 160}
HELD_OUT_ORGS = {"dev": 20, "test": 20}


class _Entity:
    """An entity while a document is written: full and short name, type, and its mentions as DocRED records."""

    def __init__(self, name: str, type_: str, short: str | None = None):
        self.name, self.type, self.short = name, type_, short or name
        self.mentions: list[dict[str, Any]] = []


Part = str | _Entity  # words (split on spaces) or a mention
Triple = tuple[_Entity, str, _Entity]


@dataclasses.dataclass
class _Block:
    """Consecutive sentences and the facts they state; a fact's evidence is every sentence of its block."""

    sentences: list[tuple[Part, ...]]
    facts: list[Triple]


def _say(*parts: Part, facts: Sequence[Triple] = ()) -> _Block:
    """A one-sentence block."""
    return _Block([parts], list(facts))


class _DocumentWriter:
    """Writes blocks as sentences, choosing each mention's surface form, and collects the facts."""

    SHORT_NAME_PROBABILITY = {"PER": 0.75, "ORG": 0.5}  # of a mention after the first

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.sents: list[list[str]] = []
        self.entities: list[_Entity] = []  # in order of first mention
        self.facts: list[tuple[_Entity, str, _Entity, list[int]]] = []

    def _sentence(self, parts: Sequence[Part]) -> int:
        sent_id, tokens = len(self.sents), []
        for part in parts:
            if isinstance(part, str):
                tokens.extend(part.split())
                continue
            surface = part.name
            if part.mentions and self.rng.random() < self.SHORT_NAME_PROBABILITY.get(part.type, 0.0):
                surface = part.short
            if not part.mentions:
                self.entities.append(part)
            words = surface.split()
            part.mentions.append({"name": surface, "sent_id": sent_id,
                                  "pos": [len(tokens), len(tokens) + len(words)], "type": part.type})
            tokens.extend(words)
        self.sents.append(tokens)
        return sent_id

    def write(self, block: _Block) -> None:
        sent_ids = [self._sentence(parts) for parts in block.sentences]
        for head, relation, tail in block.facts:
            self.facts.append((head, relation, tail, sent_ids))
            if relation in SYMMETRIC_RELATIONS:
                self.facts.append((tail, relation, head, sent_ids))

    def record(self, title: str) -> dict[str, Any]:
        """The document as a DocRED record. A fact stated twice keeps the union of its evidence; C P131 R and
        R P17 Z give C P17 Z (evidence: both facts'), unless the text states C P17 Z itself."""
        index = {id(e): i for i, e in enumerate(self.entities)}
        labels: dict[tuple[int, int, str], list[int]] = {}
        for head, relation, tail, evidence in self.facts:
            key = (index[id(head)], index[id(tail)], relation)
            labels[key] = sorted(set(labels.get(key, []) + evidence))
        for (city, province, relation), city_evidence in list(labels.items()):
            for (head, country, r), province_evidence in list(labels.items()):
                if relation == "P131" and r == "P17" and head == province and (city, country, "P17") not in labels:
                    labels[city, country, "P17"] = sorted(set(city_evidence + province_evidence))
        return {"title": title, "sents": self.sents, "vertexSet": [e.mentions for e in self.entities],
                "labels": [{"h": h, "t": t, "r": r, "evidence": ev} for (h, t, r), ev in labels.items()]}


def _split_combinations(rng: random.Random, firsts: Sequence[str], seconds: Sequence[str],
                        held_out: dict[str, int]) -> dict[str, list[str]]:
    """Every "first second" name, shuffled and dealt: `held_out[split]` names to each held-out split, the rest
    to train."""
    names = [f"{a} {b}" for a in firsts for b in seconds]
    rng.shuffle(names)
    pools, start = {}, 0
    for split, size in held_out.items():
        pools[split] = names[start:start + size]
        start += size
    pools["train"] = names[start:]
    return pools


class _Geography:
    """The places of one document: two provinces, each in its own country, a third (foreign) country, and
    cities, each in a province or directly in one of the first two countries."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.free_cities = rng.sample(CITIES, 7)  # the most a plan uses
        self.provinces = [_Entity(p, "LOC") for p in rng.sample(PROVINCES, 2)]
        self.countries = [_Entity(c, "LOC") for c in rng.sample(COUNTRIES, 3)]
        self.cities: list[tuple[_Entity, _Entity]] = []  # (city, its province or country), in order of creation

    def city(self) -> _Entity:
        city = _Entity(self.free_cities.pop(), "LOC")
        self.cities.append((city, self.rng.choice(self.provinces + self.countries[:2])))
        return city

    def country_of(self, city: _Entity) -> _Entity:
        place = next(p for c, p in self.cities if c is city)
        return self.countries[self.provinces.index(place)] if place in self.provinces else place

    def describe(self, keep: float) -> list[_Block]:
        """Blocks placing each city (with probability `keep`) and, once, each province a city was placed in
        without its country ("C is a city in R ." needs "R is a province of Z ." for C's country)."""
        blocks, described = [], []
        for city, place in self.cities:
            if self.rng.random() >= keep:
                continue
            country = self.country_of(city)
            if place is country:
                blocks.append(_say(city, "is a city in", country, ".", facts=[(city, "P17", country)]))
            elif self.rng.random() < 0.35:
                blocks.append(_say(city, "is a city in", place, ",", country, ".",
                                   facts=[(city, "P131", place), (city, "P17", country), (place, "P17", country)]))
            else:
                blocks.append(_say(city, "is a city in", place, ".", facts=[(city, "P131", place)]))
                if place not in described:
                    described.append(place)
                    blocks.append(_say(place, "is a province of", country, ".", facts=[(place, "P17", country)]))
        return blocks


def _date(rng: random.Random) -> _Entity:
    return _Entity(f"{rng.randint(1, 28)} {rng.choice(MONTHS)} {rng.choice(BIRTH_YEARS)}", "TIME")


def _draw_person(rng: random.Random, pool: Sequence[str], taken: list[str]) -> str:
    """A name of `pool` whose surname differs from those of `taken` (so surnames are unambiguous within a
    document); appends it to `taken`."""
    while True:
        name = rng.choice(pool)
        if all(name.split()[-1] != other.split()[-1] for other in taken):
            taken.append(name)
            return name


def _plan(rng: random.Random, title: str, people: Sequence[str], orgs: Sequence[str]) -> list[_Block]:
    """The blocks of one document about the person `title`: an introduction, then the rest in random order."""
    geo = _Geography(rng)
    years = rng.sample(EVENT_YEARS, 8)  # more than a plan uses
    person_names: list[str] = [title]

    def year() -> _Entity:  # each event its own year
        return _Entity(years.pop(), "TIME")

    def person() -> _Entity:
        name = _draw_person(rng, people, person_names)
        return _Entity(name, "PER", name.split()[-1])

    main = _Entity(title, "PER", title.split()[-1])
    birth_city, birth_date = geo.city(), _date(rng)
    born = [(main, "P19", birth_city), (main, "P569", birth_date)]
    intro = rng.randrange(4)
    if intro == 0:
        blocks = [_say(main, "was born in", birth_city, "on", birth_date, ".", facts=born)]
    elif intro == 1:
        blocks = [_say(main, "was born on", birth_date, "in", birth_city, ".", facts=born)]
    else:
        occupation = rng.choice(OCCUPATIONS)
        occupation = f"{'an' if occupation[0] in 'aeiou' else 'a'} {occupation}"
        if intro == 2:
            blocks = [_say(main, "( born", birth_date, ") is", occupation, ".", facts=born[1:])]
        else:
            blocks = [_say(main, "is", occupation, "who lives in", geo.city(), ".")]
        if rng.random() < 0.8:
            blocks.append(_say(main, "was born in", birth_city, ".", facts=born[:1]))
    body: list[_Block] = []

    employer = None
    if rng.random() < 0.85:
        org_name = rng.choice(orgs)
        employer = _Entity(org_name, "ORG", org_name.split()[0])
        hq = birth_city if rng.random() < 0.25 else geo.city()
        employs, based = (main, "P108", employer), (employer, "P159", hq)
        style = rng.randrange(4)
        if style == 0:
            body.append(_say(main, "works for", employer, ", which is based in", hq, ".", facts=[employs, based]))
        else:
            if style == 1:
                body.append(_say(main, "works for", employer, ".", facts=[employs]))
            elif style == 2:
                body.append(_say(main, "joined", employer, "in", year(), ".", facts=[employs]))
            else:
                body.append(_say("In", year(), ",", main, "joined", employer, ".", facts=[employs]))
            body.append(_say(employer, rng.choice(("is based in", "has its headquarters in")), hq, ".",
                             facts=[based]))
        if rng.random() < 0.3:
            body.append(_say(employer, "opened an office in", geo.city(), "in", year(), "."))
        elif rng.random() < 0.3:
            body.append(_say(employer, "has", _Entity(rng.choice(EMPLOYEE_COUNTS), "NUM"), "employees ."))

    if rng.random() < 0.55:
        spouse = person()
        married = [(main, "P26", spouse)]
        style = rng.randrange(3)
        if style == 0:
            body.append(_say(main, "married", spouse, "in", year(), ".", facts=married))
        elif style == 1:  # the relation needs both sentences
            body.append(_Block([(main, "met", spouse, "in", geo.city(), "."), ("They married in", year(), ".")],
                               married))
        else:
            spouse_birth = _date(rng)
            while spouse_birth.name == birth_date.name:
                spouse_birth = _date(rng)
            body.append(_say(spouse, ", the spouse of", main, ", was born on", spouse_birth, ".",
                             facts=married + [(spouse, "P569", spouse_birth)]))

    if rng.random() < 0.5:
        friend = person()
        style = rng.randrange(3)
        if style == 0 and employer is not None:
            body.append(_say(friend, ", a friend of", main, ", works for", employer, ".",
                             facts=[(friend, "P108", employer)]))
        elif style == 1:
            # Worded as a spouse is met, but no "They married" follows.
            body.append(_say(main, "met", friend, "in", geo.city(), "."))
        else:
            friend_city = geo.city()
            body.append(_say(friend, ", a friend of", main, ", was born in", friend_city, ".",
                             facts=[(friend, "P19", friend_city)]))

    if rng.random() < 0.5:
        country = rng.choice([geo.country_of(birth_city), geo.countries[2]])
        citizen = [(main, "P27", country)]
        style = rng.randrange(3)
        if style == 0:
            body.append(_say(main, "is a citizen of", country, ".", facts=citizen))
        elif style == 1:
            body.append(_say(main, "became a citizen of", country, "in", year(), ".", facts=citizen))
        else:  # the relation needs both sentences
            body.append(_Block([(main, "moved to", country, "in", year(), "."),
                                ("Later ,", main, "became a citizen there .")], citizen))
    if rng.random() < 0.4:
        style = rng.randrange(3)
        if style < 2:
            body.append(_say(main, ("travelled to", "moved to")[style], geo.countries[2], "in", year(), "."))
        else:
            body.append(_say(main, "visited", geo.city(), "in", year(), "."))
    if rng.random() < 0.3:
        award = " ".join((rng.choice(AWARD_ADJECTIVES), rng.choice(AWARD_NOUNS), rng.choice(AWARD_KINDS)))
        body.append(_say(main, "received the", _Entity(award, "MISC"), "in", year(), "."))

    body += geo.describe(keep=0.8)
    rng.shuffle(body)
    return blocks + body


def _document(rng: random.Random, title: str, people: Sequence[str], orgs: Sequence[str]) -> dict[str, Any]:
    """One document record about the person `title`, of MIN_SENTENCES..MAX_SENTENCES sentences."""
    while True:
        blocks = _plan(rng, title, people, orgs)
        if MIN_SENTENCES <= sum(len(b.sentences) for b in blocks) <= MAX_SENTENCES:
            break
    writer = _DocumentWriter(rng)
    for block in blocks:
        writer.write(block)
    return writer.record(title)


def build_corpus(seed: str = SEED) -> dict[str, list[dict[str, Any]]]:
    """{split: DocRED document records}; each split draws from its own seeded generator."""
    names_rng = random.Random(f"{seed}/names")
    people = _split_combinations(names_rng, FIRST_NAMES, SURNAMES, HELD_OUT_PEOPLE)
    orgs = _split_combinations(names_rng, ORG_WORDS, ORG_KINDS, HELD_OUT_ORGS)
    corpus = {}
    for split, size in SPLIT_SIZES.items():
        rng = random.Random(f"{seed}/{split}")
        titles = rng.sample(people[split], size)  # one document per person: titles are unique
        corpus[split] = [_document(rng, title, people[split], orgs[split]) for title in titles]
    return corpus


def save_llama_tokenizer(words: Sequence[str], out_dir: Path) -> PreTrainedTokenizerFast:
    """A word-level decoder tokenizer: `<pad>`=0, `<s>`=1, `</s>`=2, `<unk>`=3, then `words`; whitespace and
    each punctuation character split; `<s>` prepended as Llama's tokenizer does."""
    vocab = [PAD, BOS, EOS, UNK]
    vocab += [w for w in dict.fromkeys(words) if w not in vocab]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                       pre_tokenizers.Punctuation("isolated")])
    tokenizer.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B:1",
                                                             special_tokens=[(BOS, 1)])
    tokenizer.add_special_tokens([PAD, BOS, EOS, UNK])
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=PAD, bos_token=BOS, eos_token=EOS,
                                      unk_token=UNK)
    wrapped.save_pretrained(str(out_dir))
    return wrapped


def write_corpus(out_dir: Path, seed: str = SEED) -> None:
    """The documents, relation files and both tokenizers in `out_dir`."""
    corpus = build_corpus(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, docs in corpus.items():
        (out_dir / SPLIT_FILES[split]).write_text(json.dumps(docs, ensure_ascii=False), encoding="utf-8")
    rel2id = {"Na": 0, **{r: i + 1 for i, r in enumerate(RELATIONS)}}
    for name, value in (("rel2id.json", rel2id), ("rel_info.json", RELATIONS)):
        (out_dir / name).write_text(json.dumps(value, indent=1) + "\n", encoding="utf-8")
    sentences = [" ".join(s) for docs in corpus.values() for d in docs for s in d["sents"]]
    save_wordpiece_tokenizer(word_vocabulary(sentences + [ENTITY_MARKER]), out_dir / "bert_tokenizer")
    words = sorted({w for s in sentences for w in s.split()} | {w for n in RELATIONS.values() for w in n.split()})
    save_llama_tokenizer([*PROMPT_WORDS, *words], out_dir / "llama_tokenizer")


@gin.configurable
def demo_docred_path(name: str = gin.REQUIRED) -> str:
    """A file or folder of the bundled corpus, e.g. 'dev.json' or 'bert_tokenizer' (for gin configs)."""
    return bundled_file(DEMO_DOCRED_DIR, name)


def main(argv: Sequence[str] | None = None) -> None:
    regenerate_main(argv, __doc__.split("\n\n")[0], write_corpus, SPLIT_SIZES)


if __name__ == "__main__":
    main()
