"""Deterministic demo corpus for TACO's multi-task dense retrieval: a fictional Wikipedia in the formats of the
KILT benchmark, four KILT-style tasks over it, the 100-word passage knowledge base they retrieve from, and a
word tokenizer for a tiny T5 trained from scratch.

The world: 400 pages of seven kinds (`PAGE_COUNTS`), each stating a few facts among fact-free sentences: 10
countries (capital, official language, currency, year of independence), 110 cities (country, river, year
founded, founder, industry, population), 30 rivers (source mountain, sea, length, country), 15 mountains
(height, country, first climber and year), 50 bands (genre, city and year formed, members, first album), 40
companies (founder, year, headquarters, product) and 145 people (birthplace, birth year, occupation,
residence, year of death). Names are invented two-syllable stems, and most bands, rivers, mountains and
companies and 80% of surnames reuse a city's (`SHARED_STEMS`), as on Wikipedia: the city "Tolbek", the band
"Tolbek (band)", the "Tolbek River" (which need not flow through Tolbek), "Mount Tolbek", "Tolbek Works" and
the painter "Mira Tolbek" can all exist. Every fact is stated once, on its subject's page (the city's page
says which river flows through it, the river's page does not list its cities; a band's page lists its
members, their own pages do not name the band), so each question has one gold page. Each paragraph that
states a fact opens by naming the subject in full; later sentences say "the city", "she" or a person's
surname. The fact-free sentences also name other people, cities, countries and bands and years of the page's
era ("She was a close friend of Ada Vumstos .", "The theatre was rebuilt in 1904 ."), never a fact.

Files (KILT's and DPR's layouts; read with `kipjax.data.kilt`):
  kilt_knowledgesource.json   one page per line {"_id", "wikipedia_id", "wikipedia_title", "text"}; `text` is
                              the list of paragraphs, the first repeating the title, each ending in a newline
                              as in KILT; 3-6 body paragraphs
  passages.tsv                DPR's psgs_w100.tsv layout (`id`, `text`, `title`; ids 1..P): each page's body
                              (its paragraphs after the first) cut into disjoint 100-word windows with
                              `kipjax.data.kilt.cut_page`, never crossing pages; every page has 2-4 passages
  passage_to_page.tsv         `passage_id`, `wikipedia_id` (with that header)
  {task}-{train,dev}-kilt.jsonl  KILT task files, {"id", "input", "output": [{"answer", "provenance":
                              [{"wikipedia_id", "title", "start_paragraph_id", "end_paragraph_id"}]}]}; the
                              paragraph ids index the page's `text` (0 = title) and name the paragraph that
                              states the evidence (start = end)
  tokenizer/                  see below
The four tasks (`SPLIT_SIZES`; within a task, train and dev ask about disjoint facts, el's dev about the same
pages in other sentences):
  qa  open-domain questions, like NQ, half in the page's words and half not ("what river flows through
      Tolbek ?", "what waterway passes Tolbek ?"), the answer a span of the gold paragraph; 80% of the facts
      that can be asked the other way round are (`INVERSE_SHARE`): "which settlement did Ivo Marsk
      establish ?", whose gold page is the city's, not Ivo Marsk's, "which river in Varnia flows into the
      Grey Sea ?" (such questions are asked only when one page fits; their provenance lists the paragraph of
      each fact used). A band's members are one output each.
  fc  claims, like FEVER: "Tolbek is located in Ostrel ." -> SUPPORTS / REFUTES, the gold page the subject's.
      A refuting claim puts another value of the relation (another country, year, founder) where the world
      holds exactly one, never a value the evidence paragraph states; some claims name the subject by a
      description instead ("The city founded by Ivo Marsk is located in Ostrel .").
  sf  slot filling, like T-REx / zsRE: "Tolbek [SEP] country" -> "Varnia" (only pairs that name one page:
      a band and a city with one stem are never asked their inception).
  el  entity linking, like AIDA-CoNLL in KILT, and the smallest task: a sentence with one mention in
      `[START_ENT] ... [END_ENT]`, a bare stem for cities and bands and mostly for the others, with context
      from one fact of the gold page ("Fans of ska queued for hours to see [START_ENT] Tolbek [END_ENT] ."),
      beside one or two unmarked sentences about other pages, as a news article names many entities. The
      answer is the page title, the provenance paragraph the one stating the context's fact.
Why a model must read: a question names the fact's other side or a description as often as the subject, in
words the page may not use; pages that share a stem compete for every name; and the pages of the entities a
question names (Ivo Marsk's own page) hold its rarest words without stating the fact. Facts about people,
companies and mountains, whose names no other page shares, are asked less (`KIND_SHARE`). A BM25 baseline
over pages finds the gold page of two thirds to four fifths of the qa, sf and fc dev queries and under a third
of el's (tests/data/test_demo_kilt.py).

The tokenizer (`kipjax.data.demo_coref.save_word_tokenizer`) is word level and case-sensitive (nothing is
lower-cased): T5's `<pad>`=0, `</s>`=1, `<unk>`=2, that helper's numbers 0..63, then `<extra_id_0>`,
`<extra_id_1>`, the TACO query prefixes (`PREFIX_WORDS`: the demo task names QA / FC / SF / EL, KILT's task
names and the task-type markers), `Title:` and `Text:` (passages read "Title: <title> Text: <text>"),
`[START_ENT]`, `[END_ENT]`, `[SEP]`, and every whitespace-separated word of the corpus (titles, text, inputs,
answers). It splits on whitespace only, so the generated text writes punctuation as separate words
("Tolbek ?", "Kesh , Varnia") and a title's "(band)" is one word; `<extra_id_1>` is one token wherever
whitespace delimits it, as TACO's `query_text` writes it; `</s>` (what TACO turns `[SEP]` into) is a special
token, id 1 wherever it stands. `python -m kipjax.data.demo_kilt --out DIR` regenerates the bundled copy in
`kipjax/data/demo_kilt/` byte for byte (string-seeded `random.Random`, no set or hash order).
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import json
import random
import re
from pathlib import Path
from typing import Any, Sequence

import gin

from kipjax.data.bundled import bundled_file, regenerate_main
from kipjax.data.demo_coref import save_word_tokenizer
from kipjax.data.kilt import MAPPING_HEADER, PASSAGE_HEADER, cut_page

DEMO_KILT_DIR = Path(__file__).resolve().parent / "demo_kilt"
SEED = "kipjax-demo-kilt-v1"
TASKS = ("qa", "fc", "sf", "el")
SPLIT_SIZES = {"qa": {"train": 1400, "dev": 150}, "fc": {"train": 1000, "dev": 150},
               "sf": {"train": 1000, "dev": 150}, "el": {"train": 500, "dev": 100}}
KNOWLEDGE_SOURCE, PASSAGES, PASSAGE_TO_PAGE = "kilt_knowledgesource.json", "passages.tsv", "passage_to_page.tsv"
PASSAGE_WORDS = 100
INVERSE_SHARE = 0.8  # of qa facts that can be asked the other way round, the share that is
# Of the facts about a kind of page, the share a task asks about: people, companies and mountains have names no
# other page shares, so a task made mostly of them would be a title lookup.
KIND_SHARE = {"qa": {"person": 0.3}, "fc": {"person": 0.3},
              "sf": {"person": 0.2, "company": 0.5, "mountain": 0.5}}
MIN_BODY_WORDS, MAX_BODY_WORDS = PASSAGE_WORDS + 10, 3 * PASSAGE_WORDS + 60  # 2-4 passages a page
SUPPORTS, REFUTES = "SUPPORTS", "REFUTES"
START_ENT, END_ENT, SEP = "[START_ENT]", "[END_ENT]", "[SEP]"
EXTRA_IDS = ("<extra_id_0>", "<extra_id_1>")
PREFIX_WORDS = ("QA", "FC", "SF", "EL", "DIALOGUE", "NQ", "TQA", "HOPO", "WOW", "TREX", "FEVER", "ZSRE", "AIDA")
PASSAGE_MARKERS = ("Title:", "Text:")


def task_file(task: str, split: str) -> str:
    """KILT's file name of a task split, e.g. 'qa-dev-kilt.jsonl'."""
    return f"{task}-{split}-kilt.jsonl"


PAGE_COUNTS = {"country": 10, "city": 110, "river": 30, "mountain": 15, "band": 50, "company": 40, "person": 145}
# How many pages of a kind take a city's name ("Tolbek (band)", "Tolbek River", "Mount Tolbek", "Tolbek Works").
SHARED_STEMS = {"band": 45, "river": 25, "mountain": 12, "company": 35}
COUNTRIES = (("Varnia", "Varnian", "crown"), ("Ostrel", "Ostrelic", "mark"), ("Kaldora", "Kaldoran", "florin"),
             ("Merune", "Merunese", "ducat"), ("Sovkar", "Sovkari", "taler"), ("Dravina", "Dravinian", "guilder"),
             ("Tessavo", "Tessavan", "shilling"), ("Quorvia", "Quorvian", "dinar"),
             ("Belmark", "Belmarkish", "pound"), ("Issendor", "Issendic", "lev"))
FIRST_NAMES = {"m": ("Ivo", "Jon", "Karel", "Emil", "Oren", "Tamas", "Luca", "Anton", "Viktor", "Milo", "Arne",
                     "Pavel", "Rune", "Teodor", "Bram", "Cas", "Dorian", "Elias", "Gustav", "Henrik", "Joris",
                     "Lars", "Matthias", "Nico", "Otto", "Piet", "Ruben", "Silas", "Tobias", "Vidar"),
               "f": ("Mira", "Ada", "Lena", "Sara", "Ilse", "Nadia", "Greta", "Hanna", "Irma", "Jana", "Katya",
                     "Lotte", "Marit", "Nina", "Olga", "Petra", "Rina", "Selma", "Tova", "Una", "Vera", "Wanda",
                     "Yara", "Zelda", "Britt", "Carla", "Dana", "Elsa", "Freya", "Gerda")}
PRONOUNS = {"m": ("he", "him", "his"), "f": ("she", "her", "her")}
INDUSTRIES = ("glass making", "fishing", "salt mining", "wool weaving", "shipbuilding", "clock making",
              "paper milling", "wine growing", "copper mining", "brewing", "pottery", "silk weaving", "tea trading",
              "timber", "printing", "cheese making", "leather tanning", "coal mining")
SEAS = ("Grey Sea", "Amber Sea", "Northern Sea", "Salt Sea", "Iron Bay", "Lake Vessa", "Lake Moren",
        "Lake Dunmere")
GENRES = ("folk rock", "jazz", "punk rock", "synth pop", "heavy metal", "blues", "reggae", "techno", "soul",
          "bluegrass", "hip hop", "ska", "surf rock", "dream pop")
ALBUM_WORDS = (("Silver", "Quiet", "Broken", "Golden", "Northern", "Paper", "Electric", "Hollow", "Velvet",
                "Winter", "Burning", "Distant"),
               ("Harbour", "Lights", "Roads", "Hearts", "Rain", "Garden", "Machines", "Fires", "Bells", "Dreams",
                "Windows", "Horses"))
COMPANY_SUFFIXES = ("Works", "Group", "Brothers", "Industries", "Company", "Holdings", "Trading", "Mills")
PRODUCTS = ("cars", "bicycles", "glassware", "paper", "canned fish", "radios", "shoes", "chocolate", "steel",
            "ships", "clocks", "soap", "tractors", "pianos", "cameras", "furniture")
OCCUPATIONS = {"city": ("merchant", "knight", "monk", "trader", "land owner"),
               "band": ("singer", "guitarist", "drummer", "bassist", "pianist"),
               "company": ("engineer", "merchant", "banker", "chemist", "inventor"),
               "mountain": ("explorer", "mountaineer", "surveyor", "geologist"),
               None: ("painter", "poet", "architect", "sculptor", "composer", "novelist", "sailor", "actor",
                      "historian", "photographer", "physician", "judge")}
ONSETS = ("b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "kr",
          "st", "tr", "sk", "th")
VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o")
CODAS = ("", "", "n", "r", "l", "k", "s", "m", "nd", "rk", "sk", "th", "v")


@dataclasses.dataclass
class Page:
    """A page of the world: its kind, `title` (unique), `label` (how text names it: "Tolbek" for the band
    "Tolbek (band)"), `attrs` (relation name -> value, a list for band members; plus helper values) and, once
    written, its `paragraphs` (the KILT `text`, [0] the title) and `facts` {relation: paragraph index}."""

    wikipedia_id: str
    kind: str
    title: str
    label: str
    stem: str
    attrs: dict[str, Any]
    paragraphs: list[str] = dataclasses.field(default_factory=list)
    facts: dict[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Relation:
    """How one relation of one kind of page is written: `page` sentences ({s} the subject, {o} the value; any
    attribute by name), `qa` questions asking the value, `inverse` questions asking the subject given the
    attributes named (the value first), `fc` claims, the `sf` slot name, `el` mention contexts ({m} the
    mention), and whether the subject has exactly one value (`single`: a refuting claim can swap it)."""

    kind: str
    page: tuple[str, ...]
    qa: tuple[str, ...]
    inverse: tuple[tuple[str, tuple[str, ...]], ...]
    fc: tuple[str, ...]
    sf: str
    el: tuple[str, ...] = ()
    single: bool = True


R = Relation
RELATIONS: dict[str, dict[str, Relation]] = {
    "country": {
        "capital": R("country", ("The capital of {s} is {o} .",
                                 "{o} has been the capital of {s} since {independence} ."),
                     ("what is the capital of {s} ?", "where does the government of {s} sit ?"),
                     (("{o} is the capital of which country ?", ("capital",)),
                      ("the government of which nation sits in {o} ?", ("capital",))),
                     ("{o} is the capital of {s} .", "The government of {s} sits in {o} ."), "capital",
                     ("the government of {m} met in {o} on monday .",)),
        "language": R("country", ("The official language of {s} is {o} .", "Most people in {s} speak {o} ."),
                      ("what language is spoken in {s} ?", "what tongue do citizens of {s} use ?"),
                      (("in which country is {o} the official language ?", ("language",)),
                       ("where do citizens use the {o} tongue ?", ("language",))),
                      ("People in {s} speak {o} .", "Citizens of {s} use the {o} tongue ."), "official language",
                      ("radio stations in {m} broadcast in {o} .",)),
        "currency": R("country", ("The currency of {s} is the {o} .", "{s} pays with the {o} ."),
                      ("what is the currency of {s} ?", "what money do shoppers in {s} use ?"),
                      (("which nation has the {o} as its money ?", ("currency",)),),
                      ("{s} uses the {o} as its currency .", "Shoppers in {s} use the {o} ."), "currency",
                      ("the {o} of {m} fell against other currencies .",)),
        "independence": R("country", ("{s} became independent in {o} .",
                                      "{s} has been an independent state since {o} ."),
                          ("when did {s} become independent ?", "since what year has {s} been a free nation ?"),
                          (("which nation became free in {o} ?", ("independence",)),),
                          ("{s} gained its independence in {o} .", "{s} has been a free nation since {o} ."),
                          "inception",
                          ("{m} marked the day it became independent in {o} .",)),
    },
    "city": {
        "country": R("city", ("{s} is a city in {o} .",
                              "{s} lies in the north of {o} .", "{s} is a town in the south of {o} ."),
                     ("which country is {s} in ?", "what nation does {s} belong to ?"),
                     (), ("{s} is located in {o} .", "{s} belongs to the nation of {o} ."), "country",
                     ("the president of {o} visited {m} on monday .", "police in {m} , {o} , made two arrests .")),
        "river": R("city", ("The {o} flows through {s} .",
                            "{s} lies on the banks of the {o} .", "{s} was built where the {o} bends ."),
                   ("what river flows through {s} ?", "what waterway passes {s} ?", "which stream crosses {s} ?"),
                   (("which city in {country} lies on the {o} ?", ("river", "country")),
                    ("what settlement of {country} does the {o} pass ?", ("river", "country"))),
                   ("{s} lies on the {o} .", "The {o} passes {s} ."), "located in or next to body of water",
                   ("the boat left {m} and sailed down the {o} .", "floods hit {m} as the {o} rose .")),
        "inception": R("city", ("{s} was founded in {o} .", "The first houses of {s} were built in {o} ."),
                       ("when was {s} founded ?", "in what year did settlers establish {s} ?"),
                       (("which city was founded in {o} ?", ("inception",)),
                        ("what settlement was established in {o} ?", ("inception",))),
                       ("{s} was founded in {o} .", "{s} dates back to {o} ."), "inception",
                       ("{m} , first settled in {o} , held a street party .",)),
        "founded_by": R("city", ("{s} was founded by {o} .",
                                 "The founder of {s} was {o} .", "{o} laid out the first streets of {s} ."),
                        ("who founded {s} ?", "who established the settlement of {s} ?"),
                        (("which city was founded by {o} ?", ("founded_by",)),
                         ("what settlement did {o} establish ?", ("founded_by",))),
                        ("{s} was founded by {o} .", "{o} established {s} ."), "founded by",
                        ("a statue of {o} stands in the centre of {m} .",)),
        "industry": R("city", ("{s} is known for {o} .",
                               "The economy of {s} rests on {o} .", "For centuries {s} has lived from {o} ."),
                      ("what is {s} known for ?", "what trade made {s} rich ?"),
                      (("which city in {country} is known for {o} ?", ("industry", "country")),
                       ("what settlement of {country} grew rich on {o} ?", ("industry", "country"))),
                      ("{s} is famous for {o} .", "{s} grew rich on {o} ."), "industry",
                      ("workers in {m} said the {o} trade was doing well .",)),
        "population": R("city", ("{s} has a population of {o} .", "About {o} people live in {s} ."),
                        ("how many people live in {s} ?", "how many residents does {s} have ?"),
                        (), ("{s} is home to {o} people .", "{s} has {o} residents ."), "population"),
    },
    "river": {
        "source": R("river", ("The {s} rises on {o} .", "The source of the {s} is on {o} ."),
                    ("where does the {s} rise ?", "on what peak does the {s} start ?"),
                    (("which river rises on {o} ?", ("source",)), ("what waterway starts on {o} ?", ("source",))),
                    ("The {s} has its source on {o} .", "The {s} starts on {o} ."), "origin of the watercourse",
                    ("walkers followed the {m} up to {o} .",)),
        "mouth": R("river", ("The {s} flows into the {o} .", "The {s} empties into the {o} ."),
                   ("into which sea does the {s} flow ?", "where does the {s} reach open water ?"),
                   (("which river in {country} flows into the {o} ?", ("mouth", "country")),),
                   ("The {s} ends in the {o} .", "The {s} reaches open water at the {o} ."), "mouth of the watercourse",
                   ("ships sailed from the {o} up the {m} .",)),
        "length": R("river", ("The {s} is {o} kilometres long .", "The {s} runs for {o} kilometres ."),
                    ("how long is the {s} ?", "what distance does the {s} cover ?"),
                    (), ("The {s} is {o} kilometres long .", "The {s} covers a distance of {o} kilometres ."),
                    "length"),
        "country": R("river", ("The {s} is a river in {o} .", "The {s} runs mostly through {o} ."),
                     ("in which country is the {s} ?", "what nation does the {s} cross ?"),
                     (), ("The {s} is a river of {o} .", "The {s} crosses the nation of {o} ."), "country",
                     ("farmers in {o} said the {m} was low this summer .",)),
    },
    "mountain": {
        "elevation": R("mountain", ("{s} rises to {o} metres .", "{s} is {o} metres high ."),
                       ("how high is {s} ?", "how tall is the peak {s} ?"),
                       (), ("{s} is {o} metres tall .",), "elevation above sea level"),
        "country": R("mountain", ("{s} is a mountain in {o} .", "{s} stands in the east of {o} ."),
                     ("in which country is {s} ?", "what nation is home to the peak {s} ?"), (),
                     ("{s} is in {o} .", "The peak {s} belongs to {o} ."), "country",
                     ("snow closed the roads to {m} , the peak in {o} .",)),
        "first_ascent": R("mountain", ("{s} was first climbed by {o} in {ascent_year} .",
                                       "The first person to reach the top of {s} was {o} ."),
                          ("who first climbed {s} ?", "who made the first ascent of the peak {s} ?"),
                          (("which mountain was first climbed by {o} ?", ("first_ascent",)),
                           ("what peak did {o} conquer first ?", ("first_ascent",))),
                          ("{o} was the first to climb {s} .", "{o} made the first ascent of {s} ."), "first ascent by",
                          ("climbers retraced the route of {o} on {m} .",)),
        "ascent_year": R("mountain", ("The top of {s} was first reached in {o} .",),
                         ("when was {s} first climbed ?", "in what year was the peak {s} conquered ?"),
                         (("which mountain was first climbed in {o} ?", ("ascent_year",)),),
                         ("{s} was first climbed in {o} .",), "time of first ascent"),
    },
    "band": {
        "genre": R("band", ("{s} is a {o} band .", "{s} plays {o} .", "The music of {s} is mostly {o} ."),
                   ("what kind of music does the band {s} play ?", "what style are the songs of the group {s} ?"),
                   (("which {o} band was formed in {formed_in} ?", ("genre", "formed_in")),
                    ("what {o} group comes from {formed_in} ?", ("genre", "formed_in"))),
                   ("The band {s} plays {o} .", "{s} is a {o} group ."), "genre",
                   ("fans of {o} queued for hours to see {m} .", "the {o} group {m} sold out the hall .")),
        "formed_in": R("band", ("{s} was formed in {o} .", "The band {s} started out in {o} ."),
                       ("where was the band {s} formed ?", "what is the home town of the group {s} ?"),
                       (), ("The band {s} was formed in {o} .", "{s} comes from {o} ."), "location of formation",
                       ("{m} returned to {o} to play in the square where they began .",)),
        "inception": R("band", ("{s} was formed in {o} .", "The band {s} came together in {o} ."),
                       ("when was the band {s} formed ?", "since what year has the group {s} existed ?"),
                       (("which band was formed in {formed_in} in {o} ?", ("inception", "formed_in")),),
                       ("The band {s} was formed in {o} .", "{s} started playing together in {o} ."), "inception"),
        "members": R("band", ("The members of {s} are {o} .", "{s} is made up of {o} ."),
                     ("who plays in the band {s} ?", "who are the musicians of the group {s} ?"),
                     (("which band does {o} play in ?", ("members",)),
                      ("what group is {o} a musician in ?", ("members",))),
                     ("{o} is a member of the band {s} .", "{o} is a musician in the group {s} ."), "has part",
                     ("{o} said {m} would record again next year .",), single=False),
        "album": R("band", ("The first album of {s} , {o} , came out in {album_year} .",
                            "{s} released their first album {o} in {album_year} ."),
                   ("what was the first album of {s} ?", "what was the debut record of the group {s} ?"),
                   (("which band released the album {o} ?", ("album",)),
                    ("what group made the record {o} ?", ("album",))),
                   ("The first album by {s} was {o} .", "The debut record of {s} was {o} ."), "debut album",
                   ("{m} played every song from {o} at the concert .",)),
    },
    "company": {
        "founded_by": R("company", ("{s} was founded by {o} .", "{o} started {s} in a small workshop ."),
                        ("who founded {s} ?", "who set up the business {s} ?"),
                        (("which company was founded by {o} ?", ("founded_by",)),
                         ("what business did {o} set up ?", ("founded_by",))),
                        ("{s} was set up by {o} .", "{o} founded {s} ."), "founded by",
                        ("{m} , the firm started by {o} , posted a profit .",)),
        "inception": R("company", ("{s} was founded in {o} .", "{s} opened its doors in {o} ."),
                       ("when was {s} founded ?", "in what year was the business {s} set up ?"),
                       (("which company was founded in {o} ?", ("inception",)),
                        ("what business was set up in {o} ?", ("inception",))),
                       ("{s} was set up in {o} .", "The business {s} dates from {o} ."), "inception"),
        "headquarters": R("company", ("{s} has its headquarters in {o} .", "{s} is based in {o} ."),
                          ("where is {s} based ?", "where are the head offices of the business {s} ?"),
                          (("which company has its headquarters in {o} ?", ("headquarters",)),
                           ("what business keeps its head offices in {o} ?", ("headquarters",))),
                          ("{s} is based in {o} .", "The head offices of {s} are in {o} ."), "headquarters location",
                          ("{m} will cut jobs at its offices in {o} .",)),
        "product": R("company", ("{s} makes {o} .", "{s} is best known for its {o} ."),
                     ("what does {s} make ?", "what goods does the business {s} sell ?"),
                     (("which company in {headquarters} makes {o} ?", ("product", "headquarters")),
                      ("what business in {headquarters} sells {o} ?", ("product", "headquarters"))),
                     ("{s} produces {o} .", "The business {s} sells {o} ."), "product or material produced",
                     ("{m} said sales of its {o} rose last year .",)),
    },
    "person": {
        "birthplace": R("person", ("{s} was born in {o} .", "{s} grew up in {o} , where {pronoun} was born ."),
                        ("where was {s} born ?", "what is the home town of {s} ?"),
                        (("which {occupation} was born in {o} ?", ("birthplace", "occupation")),
                         ("who is a {occupation} from {o} ?", ("birthplace", "occupation"))),
                        ("{s} was born in {o} .", "{s} is a native of {o} ."), "place of birth",
                        ("{m} , who was born in {o} , spoke at the meeting .",)),
        "birth_year": R("person", ("{s} was born in {o} .",),
                        ("when was {s} born ?", "what is the birth year of {s} ?"),
                        (("which {occupation} was born in {o} ?", ("birth_year", "occupation")),),
                        ("{s} was born in {o} .", "The birth year of {s} is {o} ."), "date of birth"),
        "occupation": R("person", ("{s} was {a_o} .", "{s} worked as {a_o} ."),
                        ("what was the job of {s} ?", "what did {s} do for a living ?"),
                        (("which {o} lived in {residence} ?", ("occupation", "residence")),),
                        ("{s} worked as {a_o} .", "{s} earned a living as {a_o} ."), "occupation",
                        ("the {o} {m} gave an interview on friday .",)),
        "residence": R("person", ("{s} later lived in {o} .", "For many years {s} lived in {o} ."),
                       ("where did {s} live ?", "where did {s} settle down ?"),
                       (("who was born in {birthplace} and later lived in {o} ?", ("residence", "birthplace")),),
                       ("{s} lived in {o} .", "{s} settled down in {o} ."), "residence",
                       ("{m} moved back to {o} last year .",)),
        "death_year": R("person", ("{s} died in {o} .",),
                        ("when did {s} die ?", "in what year did {s} pass away ?"), (),
                        ("{s} died in {o} .", "{s} passed away in {o} ."), "date of death"),
    },
}
del R
ANAPHORS = {"country": "the country", "city": "the city", "river": "the river", "mountain": "the mountain",
            "band": "the band", "company": "the company"}  # people: their pronoun

# Fact-free sentences: each kind's groups of (subjects, predicates) that read well together.
FILLERS = {
    "country": [(("The coast", "The northern plain", "The border region", "The interior", "The south"),
                 ("is crossed by many small roads", "is often covered in fog", "has changed little in a hundred years",
                  "draws visitors every summer", "is dotted with small farms", "was badly damaged in the long war")),
                (("The parliament", "The national museum", "The railway network", "The postal service"),
                 ("was rebuilt after the war", "is the subject of many old songs", "is run by an elected council",
                  "was modernised in recent years", "is a source of national pride"))],
    "city": [(("The old town", "The harbour", "The main square", "The market", "The city park", "The river front"),
              ("is busy on market days", "draws many visitors in summer", "is lit by lanterns at night",
               "lies close to the centre", "hosts a festival every spring", "was painted by many artists",
               "is reached by a narrow bridge")),
             (("The cathedral", "The railway station", "The town hall", "The university", "The museum",
               "The theatre"),
              ("was rebuilt after a great fire", "has a famous clock tower", "was restored by local craftsmen",
               "stands near the main square", "is one of the oldest buildings in the region"))],
    "river": [(("The valley", "The lower course", "The river bank", "The delta", "The upper course"),
               ("is home to many birds", "is lined with willow trees", "is popular with anglers",
                "floods after heavy rain", "is protected as a nature reserve", "freezes in hard winters")),
              (("Its water", "The current"),
               ("carries much sand", "is cold even in summer", "was used by traders for centuries",
                "drives several old mills"))],
    "mountain": [(("The summit", "The north face", "The lower slope", "The glacier", "The east ridge"),
                  ("is covered in snow for most of the year", "is known for sudden storms", "offers a wide view",
                   "is steep and rocky", "has grown smaller in recent years", "is closed in winter")),
                 (("A mountain hut", "A narrow path", "An old chapel"),
                  ("stands below the summit", "was built by local shepherds", "is open only in summer"))],
    "band": [(("Their second album", "A live recording", "Their first single", "A later album"),
              ("received warm reviews", "was often played on the radio", "sold well abroad",
               "was recorded in a single week", "split the opinion of listeners", "won a small prize")),
             (("The group", "The singer", "The drummer"),
              ("toured widely in the following years", "changed the sound of the scene", "rarely gave interviews",
               "played in small clubs at first", "moved to a larger label", "took a long break"))],
    "company": [(("The firm", "The board", "The brand", "Its owner"),
                 ("grew quickly after the war", "struggled during the crisis", "is well known at home",
                  "was renamed several times", "opened shops abroad", "avoided large debts")),
                (("Its first factory", "A new plant", "Its main warehouse"),
                 ("was expanded twice", "employs many people", "was built beside the railway",
                  "burned down and was rebuilt"))],
    "person": [(("{Pronoun}", "In later life {pronoun}", "As a young adult {pronoun}",
                 "According to friends {pronoun}"),
                ("kept a diary for many years", "wrote many letters", "rarely gave interviews", "enjoyed long walks",
                 "gave much money to the poor", "travelled widely", "collected old maps", "learned three languages",
                 "was known for a dry sense of humour", "spent long winters reading")),
               (("Friends", "Neighbours", "Colleagues", "Later writers"),
                ("remembered {him} as kind", "described {him} as shy", "admired {his} patience",
                 "often asked {him} for advice"))],
}

LABEL_FILLERS = {
    "country": ("{s} has a long coast and many islands .", "{s} is a land of hills and lakes .",
                "Much of {s} is covered by forest .", "The people of {s} celebrate many old holidays .",
                "{s} has a mild climate .", "Tourism in {s} has grown in recent years .",
                "The roads of {s} are narrow and winding ."),
    "city": ("The old town of {s} has narrow streets .", "The main square of {s} is busy on market days .",
             "{s} has a small harbour and a museum .", "Many visitors come to {s} in summer .",
             "The cathedral of {s} was rebuilt after a great fire .", "{s} is divided into seven districts .",
             "The streets of {s} are lit by lanterns at night ."),
    "river": ("The {s} is popular with anglers .", "The valley of the {s} is home to many birds .",
              "The {s} floods after heavy rain .", "Old stone bridges cross the {s} .",
              "The banks of the {s} are lined with willow trees .", "The {s} freezes in hard winters .",
              "Boats once carried salt along the {s} ."),
    "mountain": ("{s} is covered in snow for most of the year .", "{s} is known for sudden storms .",
                 "The summit of {s} offers a wide view .", "A path leads to the top of {s} .",
                 "The slopes of {s} are steep and rocky .", "Shepherds graze their flocks below {s} .",
                 "{s} is closed to walkers in winter ."),
    "band": ("{s} toured widely in the following years .", "Critics praised the second album of {s} .",
             "The songs of {s} were often played on the radio .", "{s} won a small prize for a live show .",
             "{s} played in small clubs at first .", "{s} took a long break after a difficult tour .",
             "The sound of {s} changed over the years ."),
    "company": ("{s} grew quickly after the war .", "{s} employs many people .",
                "{s} struggled during the crisis .", "The brand of {s} is well known at home .",
                "{s} opened shops abroad .", "{s} was renamed several times .", "{s} avoided large debts ."),
    "person": ("{s} kept a diary for many years .", "{s} rarely gave interviews .", "{s} wrote many letters .",
               "{s} lived a quiet life with few friends .", "{s} travelled widely .", "{s} collected old maps .",
               "{s} learned three languages ."),
}

# Fact-free sentences that name other things of the world: a year of the page's era, a person, city, country
# or band (never a city a river passes: that is a fact, stated on the city's page).
MENTION_FILLERS = {
    "country": ("A new railway line was opened in {year} .", "{person} wrote a well known history of the country .",
                "The border with {country} was redrawn in {year} .",
                "The national library holds the papers of {person} ."),
    "city": ("The theatre was rebuilt in {year} .", "{person} once gave a famous speech in the main square .",
             "A direct train to {city} runs every hour .", "The great flood of {year} damaged many houses .",
             "A street in the old town is named after {person} ."),
    "river": ("A new bridge across the river was built in {year} .", "{person} painted the river many times .",
              "A dam was planned in {year} but never built .", "{person} swam across the river in {year} ."),
    "mountain": ("A hut was built below the summit in {year} .", "{person} wrote a guide book about the mountain .",
                 "On clear days the summit can be seen from {city} .", "A storm in {year} destroyed the old chapel ."),
    "band": ("The group played a famous concert in {city} in {year} .", "{person} produced their second album .",
             "They once shared a stage with {band} .", "{person} joined them on a tour in {year} ."),
    "company": ("A new plant opened near {city} in {year} .", "{person} led the firm for many years .",
                "It bought a rival firm in {year} .", "It opened a shop in {city} in {year} ."),
    "person": ("In {year} {pronoun} spent a summer in {city} .", "{Pronoun} was a close friend of {person} .",
               "{Pronoun} met {person} in {city} .", "In {year} {pronoun} visited {country} for the first time ."),
}


def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def name_stems(rng: random.Random, count: int, taken: set[str]) -> list[str]:
    """`count` distinct invented two-syllable names, none in `taken`."""
    out: list[str] = []
    while len(out) < count:
        syllables = [rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(2)]
        stem = "".join(syllables).capitalize()
        if 4 <= len(stem) <= 9 and stem not in taken and stem not in out:
            out.append(stem)
    return out


def _join(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else " , ".join(names[:-1]) + " and " + names[-1]


class _People:
    """Distinct full names with a gender; surnames are stems, most of them city names."""

    def __init__(self, rng: random.Random, shared: Sequence[str], own: Sequence[str]):
        self.rng, self.shared, self.own, self.names = rng, shared, own, {}

    def new(self) -> str:
        while True:
            gender = self.rng.choice("mf")
            surnames = self.shared if self.rng.random() < 0.8 else self.own
            name = f"{self.rng.choice(FIRST_NAMES[gender])} {self.rng.choice(surnames)}"
            if name not in self.names:
                self.names[name] = gender
                return name


def _world(rng: random.Random) -> list[Page]:
    """The pages with their attributes (no text yet), in random order."""
    stems = name_stems(rng, 190, {c[0] for c in COUNTRIES} | {n for names in FIRST_NAMES.values() for n in names})
    city_stems, new_stems = stems[:PAGE_COUNTS["city"]], iter(stems[PAGE_COUNTS["city"]:150])

    def stems_of(kind: str) -> list[str]:
        """Most of a kind's names reuse city names (`SHARED_STEMS`), the rest are new."""
        shared = rng.sample(city_stems, SHARED_STEMS[kind])
        return shared + [next(new_stems) for _ in range(PAGE_COUNTS[kind] - len(shared))]
    pages: list[Page] = []

    def page(kind: str, title: str, label: str, stem: str, **attrs: Any) -> Page:
        p = Page("", kind, title, label, stem, attrs)
        pages.append(p)
        return p

    people = _People(rng, city_stems, stems[150:])
    roles: list[tuple[str, str, int]] = []  # (name, role kind, year of the deed)
    countries = [page("country", name, name, name, language=lang, currency=cur,
                      independence=str(rng.randint(1790, 1990))) for name, lang, cur in COUNTRIES]
    cities = []
    for i, stem in enumerate(city_stems):
        country = countries[i % len(countries)] if i < 2 * len(countries) else rng.choice(countries)
        year = rng.randint(1100, 1850)
        founder = people.new()
        roles.append((founder, "city", year))
        cities.append(page("city", stem, stem, stem, country=country.title, inception=str(year), founded_by=founder,
                           industry=rng.choice(INDUSTRIES), population=str(rng.randint(8, 900) * 500)))
    for country in countries:
        country.attrs["capital"] = rng.choice([c.title for c in cities if c.attrs["country"] == country.title])
    mountain_stems = stems_of("mountain")
    mountains = []
    for i, stem in enumerate(mountain_stems):
        year = rng.randint(1780, 1960)
        climber = people.new()
        roles.append((climber, "mountain", year))
        mountains.append(page("mountain", f"Mount {stem}", f"Mount {stem}", stem, country=countries[i % 10].title,
                              elevation=str(rng.randint(120, 480) * 10), first_ascent=climber,
                              ascent_year=str(year)))
    river_stems = stems_of("river")
    rivers = []
    for i, stem in enumerate(river_stems):
        country = countries[i % 10].title
        sources = [m.label for m in mountains if m.attrs["country"] == country] or [m.label for m in mountains]
        rivers.append(page("river", f"{stem} River", f"{stem} River", stem, country=country,
                           source=rng.choice(sources), mouth=rng.choice(SEAS), length=str(rng.randint(6, 120) * 10)))
    for city in cities:
        options = [r.label for r in rivers if r.attrs["country"] == city.attrs["country"]]
        if rng.random() < 0.8 and options:
            city.attrs["river"] = rng.choice(options)
    albums = [f"{a} {b}" for a in ALBUM_WORDS[0] for b in ALBUM_WORDS[1]]
    rng.shuffle(albums)
    for i, stem in enumerate(stems_of("band")):
        year = rng.randint(1960, 2015)
        members = [people.new() for _ in range(rng.randint(2, 4))]
        roles.extend((m, "band", year) for m in members)
        title = f"{stem} (band)" if stem in city_stems else stem
        page("band", title, stem, stem, genre=rng.choice(GENRES), formed_in=rng.choice(cities).title,
             inception=str(year), members=members, album=albums[i], album_year=str(year + rng.randint(1, 4)))
    for stem in stems_of("company"):
        year = rng.randint(1840, 1995)
        founder = people.new()
        roles.append((founder, "company", year))
        name = f"{stem} {rng.choice(COMPANY_SUFFIXES)}"
        page("company", name, name, stem, founded_by=founder, inception=str(year),
             headquarters=rng.choice(cities).title, product=rng.choice(PRODUCTS))
    with_page = rng.sample(roles, PAGE_COUNTS["person"] - 20) + [(people.new(), None, 0) for _ in range(20)]
    for name, role, deed in with_page:
        born = deed - rng.randint(18, 45) if role else rng.randint(1750, 1990)
        occupation = rng.choice(OCCUPATIONS[role])
        birthplace = rng.choice(cities).title
        gender = people.names[name]
        attrs = dict(birthplace=birthplace, birth_year=str(born), occupation=occupation,
                     residence=rng.choice([c.title for c in cities if c.title != birthplace]),
                     gender=gender, pronoun=PRONOUNS[gender][0])
        if born < 1935:
            attrs["death_year"] = str(born + rng.randint(35, 90))
        page("person", name, name, name.split()[1], **attrs)
    assert [sum(p.kind == k for p in pages) for k in PAGE_COUNTS] == list(PAGE_COUNTS.values())
    assert len({p.title for p in pages}) == len(pages)
    rng.shuffle(pages)
    for p, wikipedia_id in zip(pages, sorted(rng.sample(range(1000, 999999), len(pages)))):
        p.wikipedia_id = str(wikipedia_id)
    return pages


def _value(page: Page, relation: str) -> str:
    value = page.attrs[relation]
    return _join(value) if isinstance(value, list) else value


def _sentence(template: str, page: Page, relation: str | None, subject: str) -> str:
    fields = {k: v for k, v in page.attrs.items() if isinstance(v, str)}
    if relation is not None:
        fields["o"] = _value(page, relation)
        fields["a_o"] = _article(fields["o"])
    text = template.format(s=subject, **fields)
    return text[0].upper() + text[1:]


def _era(page: Page) -> tuple[int, int]:
    """The years a fact-free sentence about `page` may name: after its founding, within a person's adult life."""
    if page.kind == "person":
        born = int(page.attrs["birth_year"])
        return born + 16, int(page.attrs.get("death_year", min(born + 70, 2020)))
    start = {"city": "inception", "band": "inception", "company": "inception", "mountain": "ascent_year"}.get(page.kind)
    return (int(page.attrs[start]) + 1 if start else 1800), 2020


def _fillers(rng: random.Random, page: Page, names: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    """The page's fact-free sentences, shuffled: ones that name it (to open a paragraph) and others, 1-3 of
    which name other things of the world (`names`: kind -> labels)."""
    pronoun, him, his = PRONOUNS[page.attrs["gender"]] if page.kind == "person" else ("", "", "")
    others = [f"{subject} {predicate} .".format(pronoun=pronoun, Pronoun=pronoun.capitalize(), him=him, his=his)
              for subjects, predicates in FILLERS[page.kind] for subject in subjects for predicate in predicates]
    named = [t.format(s=_short(page)) for t in LABEL_FILLERS[page.kind]]
    rng.shuffle(others)
    for template in rng.sample(MENTION_FILLERS[page.kind], rng.randint(1, 3)):
        fields = {kind: rng.choice([n for n in names[kind] if n != page.label]) for kind in names}
        others.insert(rng.randrange(len(others) // 3), template.format(
            year=rng.randint(*_era(page)), pronoun=pronoun, Pronoun=pronoun.capitalize(), **fields))
    rng.shuffle(named)
    return [t[0].upper() + t[1:] for t in named], [t[0].upper() + t[1:] for t in others]


def _short(page: Page) -> str:
    """How a page names its subject after the first sentence: a person by the surname, the rest in full."""
    return page.stem if page.kind == "person" else page.label


def _fact_sentence(rng: random.Random, page: Page, relation: str, first: bool, named: bool) -> str:
    """A sentence stating `relation`, naming the subject by its label (the page's `first` sentence), its short
    name, or (unless `named`) sometimes by an anaphor ("the city", "she") when the template starts with it."""
    template = rng.choice(RELATIONS[page.kind][relation].page)
    subject = page.label if first or named else _short(page)
    anaphor = page.attrs["pronoun"] if page.kind == "person" else ANAPHORS.get(page.kind)
    if not named and rng.random() < 0.4:
        if template.startswith("The {s}"):
            template, subject = template[4:], anaphor
        elif template.startswith("{s}"):
            subject = anaphor
    return _sentence(template, page, relation, subject)


def _write_page(rng: random.Random, page: Page, names: dict[str, list[str]]) -> None:
    """Fills `page.paragraphs` (title first, each ending in a newline) and `page.facts`: each relation one
    sentence, the first in the first paragraph, the others in random ones; every paragraph opens with a
    sentence naming the page; fact-free sentences until the body has its (random) length."""
    named, others = _fillers(rng, page, names)
    relations = [r for r in RELATIONS[page.kind] if r in page.attrs]
    paragraphs: list[list[str]] = [[] for _ in range(rng.randint(3, 6))]
    for i, relation in enumerate(relations[:1] + rng.sample(relations[1:], len(relations) - 1)):
        k = 0 if i == 0 else rng.randrange(len(paragraphs))
        paragraphs[k].append(_fact_sentence(rng, page, relation, first=i == 0, named=not paragraphs[k]))
        page.facts[relation] = k + 1
    for sentences in paragraphs:
        if not sentences or f" {_short(page)} " not in f" {sentences[0]} ":
            sentences.insert(0, named.pop())
    target = rng.randint(MIN_BODY_WORDS + 10, MAX_BODY_WORDS - 60)
    while sum(len(t.split()) for sentences in paragraphs for t in sentences) < target:
        sentences = rng.choice(paragraphs)
        if not others:  # a long page: the fact-free sentences again, in a new order
            others = _fillers(rng, page, names)[1]
        sentences.insert(rng.randint(1, len(sentences)), others.pop(0))
    words = sum(len(t.split()) for sentences in paragraphs for t in sentences)
    assert MIN_BODY_WORDS <= words <= MAX_BODY_WORDS, (page.title, words)
    page.paragraphs = [f"{page.title}\n"] + [" ".join(sentences) + "\n" for sentences in paragraphs]


# ------------------------------------------------------------------------------------------------ tasks

@dataclasses.dataclass(frozen=True)
class Example:
    """One task instance and what it was built from: the gold page, the relation asked or used, and for fc the
    claimed value. `outputs`: (answer, ((wikipedia_id, title, paragraph), ...)) each."""

    id: str
    input: str
    outputs: tuple[tuple[str, tuple[tuple[str, str, int], ...]], ...]
    page: str
    relation: str
    value: str = ""

    def record(self) -> dict[str, Any]:
        return {"id": self.id, "input": self.input, "output": [
            {"answer": answer, "provenance": [{"wikipedia_id": w, "title": t, "start_paragraph_id": p,
                                               "end_paragraph_id": p} for w, t, p in provenance]}
            for answer, provenance in self.outputs]}


def _provenance(page: Page, relations: Sequence[str]) -> tuple[tuple[str, str, int], ...]:
    paragraphs = list(dict.fromkeys(page.facts[r] for r in relations))
    return tuple((page.wikipedia_id, page.title, p) for p in paragraphs)


def _answers(page: Page, relation: str) -> list[str]:
    value = page.attrs[relation]
    return list(value) if isinstance(value, list) else [value]


def _matches(page: Page, relation: str, value: str) -> bool:
    attr = page.attrs.get(relation)
    return value in attr if isinstance(attr, list) else attr == value


class _Tasks:
    """How the tasks' instances are made from the world's facts ((page, relation) pairs)."""

    def __init__(self, pages: list[Page]):
        self.pages = pages
        self.by_kind = {k: [p for p in pages if p.kind == k] for k in PAGE_COUNTS}
        self.facts = [(p, r) for p in pages for r in RELATIONS[p.kind] if r in p.attrs]

    def sample(self, rng: random.Random, task: str) -> list[tuple[Page, str]]:
        """The facts `task` may ask about: each kept with its kind's `KIND_SHARE`."""
        return [(p, r) for p, r in self.facts if rng.random() < KIND_SHARE[task].get(p.kind, 1.0)]

    def unique(self, page: Page, attrs: Sequence[str], values: dict[str, str]) -> bool:
        """Whether exactly one page of `page`'s kind has all of `attrs` at `values`."""
        return sum(all(_matches(q, a, values[a]) for a in attrs) for q in self.by_kind[page.kind]) == 1

    def qa(self, page: Page, relation: str) -> tuple[list[tuple[str, list]], list[tuple[str, list]]]:
        """(questions naming the subject, questions naming the value and asking the subject)."""
        spec = RELATIONS[page.kind][relation]
        fields = {k: v for k, v in page.attrs.items() if isinstance(v, str)}
        inverse = []
        provenance = _provenance(page, [relation])
        forward = [(q.format(s=page.label, **fields), [(a, provenance) for a in _answers(page, relation)])
                   for q in spec.qa]
        for template, attrs in spec.inverse:
            for value in _answers(page, relation):
                values = {**fields, relation: value}
                if self.unique(page, attrs, values):
                    inverse.append((template.format(**{**values, "o": value}),
                                    [(page.label, _provenance(page, attrs))]))
        return forward, inverse

    def sf(self, page: Page, relation: str) -> tuple[str, list] | None:
        """("subject [SEP] slot", outputs), or None where another page with that label has the slot too."""
        slot = RELATIONS[page.kind][relation].sf
        clash = [q for q in self.pages if q.label == page.label and q is not page
                 and any(RELATIONS[q.kind][r].sf == slot for r in RELATIONS[q.kind] if r in q.attrs)]
        if clash:
            return None
        provenance = _provenance(page, [relation])
        return f"{page.label} {SEP} {slot}", [(a, provenance) for a in _answers(page, relation)]

    def description(self, page: Page, relation: str) -> str | None:
        """Another way to name `page` in a claim: 'the city founded by Ivo Marsk', if that names only it."""
        options = {"city": ("the city founded by {founded_by}", ("founded_by",)),
                   "band": ("the band that released {album}", ("album",)),
                   "company": ("the company founded by {founded_by}", ("founded_by",)),
                   "mountain": ("the mountain first climbed by {first_ascent}", ("first_ascent",)),
                   "river": ("the river that rises on {source}", ("source",)),
                   "person": ("the {occupation} born in {birthplace}", ("occupation", "birthplace"))}
        if page.kind not in options or relation in options[page.kind][1]:
            return None
        template, attrs = options[page.kind]
        fields = {k: v for k, v in page.attrs.items() if isinstance(v, str)}
        return template.format(**fields) if self.unique(page, attrs, fields) else None

    def fc(self, rng: random.Random, page: Page, relation: str) -> tuple[str, str, str]:
        """(claim, label, claimed value)."""
        spec = RELATIONS[page.kind][relation]
        true = _answers(page, relation)
        paragraph = page.paragraphs[page.facts[relation]]
        if spec.single and rng.random() < 0.5:
            pool = sorted({v for q in self.by_kind[page.kind] if relation in q.attrs
                           for v in _answers(q, relation)} - set(true))
            pool = [v for v in pool if not re.search(rf"(?<!\S){re.escape(v)}(?!\S)", paragraph)]
            value, label = rng.choice(pool), REFUTES
        else:
            value, label = rng.choice(true), SUPPORTS
        subject = page.label
        if rng.random() < 0.5:
            subject = self.description(page, relation) or subject
        fields = {k: v for k, v in page.attrs.items() if isinstance(v, str)}
        text = rng.choice(spec.fc).format(**{**fields, "s": subject, "o": value, "a_o": _article(value)})
        return text[0].upper() + text[1:], label, value

    @staticmethod
    def context(rng: random.Random, page: Page, mention: str) -> tuple[str, str] | None:
        """(relation, a news-like sentence naming `page` as `mention` with a value of that relation)."""
        options = [(r, c) for r in RELATIONS[page.kind] if r in page.attrs for c in RELATIONS[page.kind][r].el]
        if not options:
            return None
        relation, template = rng.choice(options)
        fields = {k: v for k, v in page.attrs.items() if isinstance(v, str)}
        return relation, template.format(**{**fields, "m": mention, "o": rng.choice(_answers(page, relation))})

    def el(self, rng: random.Random, page: Page) -> tuple[str, str, str] | None:
        """(text with the marked mention, the context relation, the mention's sentence). The mention is the
        bare stem for cities and bands, mostly for the others; one or two sentences about other pages (unmarked,
        named in full) come before or after it, as an AIDA document names many entities."""
        if page.kind in ("city", "band", "country"):
            mention = page.label
        elif page.kind == "person":
            mention = page.stem if rng.random() < 0.7 else page.label
        else:
            mention = page.stem if rng.random() < 0.6 else page.label
        drawn = self.context(rng, page, f"{START_ENT} {mention} {END_ENT}")
        if drawn is None:
            return None
        relation, sentence = drawn
        others, count = [], 1 if rng.random() < 0.6 else 2
        while len(others) < count:
            other = rng.choice(self.pages)
            if other is not page and (found := self.context(rng, other, other.label)) is not None:
                others.append(found[1])
        others.insert(rng.randint(0, len(others)), sentence)
        if rng.random() < 0.5:
            others[0] = f"{rng.choice(NEWS_OPENERS)} {others[0]}"
        return " ".join(t[0].upper() + t[1:] for t in others), relation, sentence


NEWS_OPENERS = ("in a statement ,", "according to reports ,", "as expected ,", "in other news ,",
                "reporters said that", "officials confirmed that")


def _split_facts(rng: random.Random, facts: list, dev_size: int) -> tuple[list, list]:
    facts = list(facts)
    rng.shuffle(facts)
    return facts[dev_size:], facts[:dev_size]


def _build_tasks(seed: str, pages: list[Page]) -> dict[str, dict[str, list[Example]]]:
    tasks = _Tasks(pages)
    out: dict[str, dict[str, list[Example]]] = {}

    def finish(task: str, split: str, made: list[Example]) -> None:
        size = SPLIT_SIZES[task][split]
        assert len(made) >= size, (task, split, len(made))
        out.setdefault(task, {})[split] = [dataclasses.replace(e, id=f"{task}-{split}-{i:04d}")
                                           for i, e in enumerate(made[:size])]

    # qa: per fact one question (an inverse one, when there is one, with INVERSE_SHARE); train then asks its facts
    # again (other questions, up to three rounds) until it has its size.
    rng = random.Random(f"{seed}/qa")
    train, dev = _split_facts(rng, tasks.sample(rng, "qa"), 190)
    for split, facts in (("train", train), ("dev", dev)):
        made, seen = [], set()
        for _ in range(3 if split == "train" else 1):
            for page, relation in facts:
                forward, inverse = tasks.qa(page, relation)
                pool = inverse if inverse and rng.random() < INVERSE_SHARE else forward
                question, outputs = rng.choice(pool)
                if question in seen:
                    continue
                seen.add(question)
                made.append(Example("", question, tuple((a, p) for a, p in outputs), page.wikipedia_id, relation))
        rng.shuffle(made)
        finish("qa", split, made)
    # sf: one input per fact.
    rng = random.Random(f"{seed}/sf")
    askable = [(p, r) for p, r in tasks.sample(rng, "sf") if tasks.sf(p, r) is not None]
    train, dev = _split_facts(rng, askable, SPLIT_SIZES["sf"]["dev"])
    for split, facts in (("train", train), ("dev", dev)):
        made = []
        for page, relation in facts:
            text, outputs = tasks.sf(page, relation)
            made.append(Example("", text, tuple(outputs), page.wikipedia_id, relation))
        finish("sf", split, made)
    # fc: one claim per fact, train's facts up to three times (other claims).
    rng = random.Random(f"{seed}/fc")
    train, dev = _split_facts(rng, tasks.sample(rng, "fc"), 170)
    for split, facts in (("train", train), ("dev", dev)):
        made, seen = [], set()
        for _ in range(3 if split == "train" else 1):
            for page, relation in facts:
                claim, label, value = tasks.fc(rng, page, relation)
                if claim in seen:
                    continue
                seen.add(claim)
                made.append(Example("", claim, ((label, _provenance(page, [relation])),), page.wikipedia_id,
                                    relation, value))
        rng.shuffle(made)
        finish("fc", split, made)
    # el: sentences about pages drawn with more weight on shared stems; dev sentences differ from train's.
    rng = random.Random(f"{seed}/el")
    stem_pages: dict[str, int] = {}
    for p in pages:
        stem_pages[p.stem] = stem_pages.get(p.stem, 0) + 1
    weighted = [p for p in pages for _ in range(min(stem_pages[p.stem], 3))]
    made, seen = [], set()
    while len(made) < SPLIT_SIZES["el"]["train"] + SPLIT_SIZES["el"]["dev"]:
        page = rng.choice(weighted)
        drawn = tasks.el(rng, page)
        if drawn is None or drawn[2] in seen:
            continue
        sentence, relation, core = drawn
        seen.add(core)
        made.append(Example("", sentence, ((page.title, _provenance(page, [relation])),), page.wikipedia_id,
                            relation))
    finish("el", "dev", made[:SPLIT_SIZES["el"]["dev"]])
    finish("el", "train", made[SPLIT_SIZES["el"]["dev"]:])
    return {task: {split: out[task][split] for split in ("train", "dev")} for task in TASKS}


@dataclasses.dataclass
class DemoKilt:
    """The generated world: pages in knowledge-source order, passages (id, title, text, wikipedia_id) and the
    task examples {task: {split: [Example]}}."""

    pages: list[Page]
    passages: list[tuple[str, str, str, str]]
    tasks: dict[str, dict[str, list[Example]]]

    def facts(self) -> dict[tuple[str, str], list[str]]:
        """{(wikipedia_id, relation): values}: everything the world holds true."""
        return {(p.wikipedia_id, r): _answers(p, r) for p in self.pages for r in RELATIONS[p.kind]
                if r in p.attrs}


def build_corpus(seed: str = SEED) -> DemoKilt:
    """The world, its pages written out and cut into passages, and the tasks; each part from its own seeded
    generator."""
    rng = random.Random(f"{seed}/world")
    pages = _world(rng)
    text_rng = random.Random(f"{seed}/text")
    names = {kind: [p.label for p in pages if p.kind == kind] for kind in ("city", "country", "band")}
    names["person"] = list(dict.fromkeys([p.label for p in pages if p.kind == "person"] + [
        n for p in pages for r in ("founded_by", "first_ascent", "members") if r in p.attrs
        for n in _answers(p, r)]))
    for page in pages:
        _write_page(text_rng, page, names)
    passages = []
    for page in pages:
        for text in cut_page(page.paragraphs, PASSAGE_WORDS):
            passages.append((str(len(passages) + 1), page.title, text, page.wikipedia_id))
    per_page = collections.Counter(p[3] for p in passages)
    assert all(2 <= per_page[page.wikipedia_id] <= 4 for page in pages)
    return DemoKilt(pages, passages, _build_tasks(seed, pages))


def write_corpus(out_dir: Path, seed: str = SEED) -> None:
    """The knowledge source, passages, mapping, task files and `tokenizer/` in `out_dir`."""
    corpus = build_corpus(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / KNOWLEDGE_SOURCE).open("w", encoding="utf-8") as f:
        for p in corpus.pages:
            f.write(json.dumps({"_id": p.wikipedia_id, "wikipedia_id": p.wikipedia_id, "wikipedia_title": p.title,
                                "text": p.paragraphs}, ensure_ascii=False) + "\n")
    with (out_dir / PASSAGES).open("w", encoding="utf-8", newline="") as f, \
            (out_dir / PASSAGE_TO_PAGE).open("w", encoding="utf-8", newline="") as g:
        passages = csv.writer(f, delimiter="\t", quotechar='"', lineterminator="\n")
        mapping = csv.writer(g, delimiter="\t", quotechar='"', lineterminator="\n")
        passages.writerow(PASSAGE_HEADER)
        mapping.writerow(MAPPING_HEADER)
        for passage_id, title, text, wikipedia_id in corpus.passages:
            passages.writerow((passage_id, text, title))
            mapping.writerow((passage_id, wikipedia_id))
    texts = [p.title for p in corpus.pages] + [t for p in corpus.pages for t in p.paragraphs]
    for task, splits in corpus.tasks.items():
        for split, examples in splits.items():
            with (out_dir / task_file(task, split)).open("w", encoding="utf-8") as f:
                for e in examples:
                    f.write(json.dumps(e.record(), ensure_ascii=False) + "\n")
            texts += [e.input for e in examples] + [a for e in examples for a, _ in e.outputs]
    words = sorted({w for t in texts for w in t.split()})
    save_word_tokenizer(list(dict.fromkeys([*EXTRA_IDS, *PREFIX_WORDS, *PASSAGE_MARKERS, START_ENT, END_ENT,
                                            SEP, *words])), out_dir / "tokenizer")


@gin.configurable
def demo_kilt_path(name: str = gin.REQUIRED) -> str:
    """A file or folder of the bundled corpus, e.g. 'passages.tsv', 'qa-dev-kilt.jsonl' or 'tokenizer' (for gin
    configs)."""
    return bundled_file(DEMO_KILT_DIR, name)


def main(argv: Sequence[str] | None = None) -> None:
    regenerate_main(argv, __doc__.split("\n\n")[0], write_corpus,
                    {f"{task}_{split}": n for task, sizes in SPLIT_SIZES.items() for split, n in sizes.items()})


if __name__ == "__main__":
    main()
