"""Deterministic demo corpus for EntQA (entity linking as inverted question answering): a fictional KB in KILT's
knowledge-source layout, news documents in the AIDA-CoNLL (AIDA-YAGO2 TSV) layout split train / testa / testb,
and a small out-of-domain test set in GERBIL's NIF Turtle layout.

The world (`_world`): 12 countries, each with cities, rivers, football clubs, political parties and politicians,
companies and their chief executives, bands, their members and albums, films, novels, their directors,
writers and actors, and (for the five cricket countries, `CRICKET_COUNTRIES`) county cricket clubs and
cricketers, plus national football and cricket teams: about 2,400 entities. Names are invented stems
(`kipjax.data.demo_kilt.name_stems`) shared on purpose, as on Wikipedia: the bundled world has the city "Povnas",
the band "Povnas (band)", the "Povnas River", the club "Povnas Wanderers", the company "Povnas Telecom" and
"Greta Povnas", and text calls the first five "Povnas"; people share surnames (some common, `SURNAME_SKEW`)
and, now and then, full names ("Bram Krodrin (footballer)", "Bram Krodrin (musician)"); a country's name
also names its national teams in sports news (AIDA's "England" for the England cricket team); parties share
names across countries ("Liberal Party (Arvenia)"), and albums, films and novels share titles (a film keeps
the title of the novel it adapts). Each entity's description (`_describe`) states its kind and the facts the
documents use: a footballer's club and country, a politician's party and office, a band's city and members,
so that reading the description against the passage resolves a name the surface form leaves ambiguous.

Documents (`STORIES`): nine kinds of news story (league and international football, county and test cricket,
politics, business, music, film, books), each a headline that starts with its topic word ("SOCCER - STUVKRE
LOSE AT FATHBETH ."), as AIDA's documents do (EntQA reads the first token as the document's topic), a
dateline, an opening and body sentences from templates whose mentions are drawn from one consistent cast (a
club's own players, a party's own members, a film's own director). An entity is named in full the first time
(clubs and counties often by the short name at once, `FIRST_SHORT`) and mostly by its short name after
(`LATER_SHORT`); headlines and datelines write names in capitals. People outside the KB (referees,
spokesmen, critics, some with non-ASCII names, some sharing a KB surname), their firms and villages are
`--NME--` mentions. Entities are drawn with Zipf-like popularity (`POPULARITY_SKEW`), so a mention-to-entity
prior learned on train is a strong but far from perfect baseline (tests/data/test_demo_entqa.py measures it).

Files:
  kb.jsonl         one entity per line {"wikipedia_id": "<int>", "wikipedia_title", "text": [title, paragraph
                   1, paragraph 2?]}, each text entry ending in a newline as in KILT, in wikipedia_id order
  aida_{train,testa,testb}.tsv  AIDA-YAGO2 TSV: `-DOCSTART- (<n>[testa|testb] <TOPIC>)` headers (numbered
                   across splits, as AIDA's 1..1393), one token per line, a blank line after each sentence;
                   mention tokens `token, B|I, mention, YAGO2 entity, Wikipedia URL, wikipedia_id` or `token,
                   B|I, mention, --NME--` (a few names are not ASCII: YAGO2 names write them `\\uXXXX`, URLs
                   percent-encode them)
  nif_test.ttl     GERBIL NIF: 20 documents (no headline or topic word; ordinary punctuation and spacing) as
                   nif:Context resources and their in-KB mentions as nif:Phrase resources with
                   itsrdf:taIdentRef <http://en.wikipedia.org/wiki/Title>
  README.md        what the folder holds, its sizes, the seed and the command
`python -m kipjax.data.demo_entqa --out DIR` regenerates the bundled copy in `kipjax/data/demo_entqa/` byte for
byte (string-seeded `random.Random`, no set or hash order).
"""
from __future__ import annotations

import collections
import dataclasses
import json
import random
from pathlib import Path
from typing import Any, Sequence

import gin

from kipjax.data.bundled import bundled_file, regenerate_main
from kipjax.data.demo_kilt import name_stems
from kipjax.data.nif import wikipedia_url
from kipjax.data.tokenizer import SPECIAL_TOKENS, save_wordpiece_tokenizer, word_vocabulary

DEMO_ENTQA_DIR = Path(__file__).resolve().parent / "demo_entqa"
SEED = "kipjax-demo-entqa-v1"
SPLIT_SIZES = {"train": 300, "testa": 60, "testb": 60}
KB_FILE, NIF_FILE, README_FILE, TOKENIZER_DIR = "kb.jsonl", "nif_test.ttl", "README.md", "tokenizer"
ENTQA_MARKERS = ("[unused1]", "[unused2]")  # kipjax.methods.entqa.inputs' TOPIC_MARKER and TITLE_MARKER
NIF_DOCUMENTS = 20
NIF_QUOTE_SHARE = 0.3  # of NIF documents that also quote someone, as news does (and Turtle must escape)
DOCUMENT_TOKENS = (80, 250)
NIF_DOCUMENT_URI = "http://example.org/kipjax/demo_entqa/nif/doc{:02d}"
NME = "--NME--"


def split_file(split: str) -> str:
    """The AIDA TSV file of a split, e.g. 'aida_testa.tsv'."""
    return f"aida_{split}.tsv"


# ------------------------------------------------------------------------------------------------ world knobs

COUNTRIES = (("Arvenia", "Arvenian"), ("Castrel", "Castrelian"), ("Dovmark", "Dovmarkish"), ("Elsora", "Elsoran"),
             ("Feyland", "Feylish"), ("Gorvatia", "Gorvatian"), ("Halvenor", "Halvenian"), ("Istrova", "Istrovan"),
             ("Jarnland", "Jarnish"), ("Kelvadia", "Kelvadian"), ("Lumeria", "Lumerian"), ("Morvand", "Morvandian"))
CRICKET_COUNTRIES = 5  # the first five play cricket: counties, cricketers and a national cricket team
PER_COUNTRY = {"city": 18, "river": 4, "club": 8, "company": 10, "band": 6, "film": 5, "novel": 5, "director": 3,
               "writer": 3, "actor": 5}
COUNTIES_PER_CRICKET_COUNTRY = 6
PLAYERS_PER_CLUB, CRICKETERS_PER_COUNTY = 6, 8
SHARED_STEM_SHARE = {"river": 0.7, "band": 0.6, "company": 0.5}  # names that reuse a city's stem
SURNAMES_FROM_CITIES, OWN_SURNAMES = 80, 180
FRESH_STEMS, OUTSIDE_STEMS = 200, 60  # names of rivers, bands and companies not a city's; of NME people, villages
ALBUM_TITLES, WORK_TITLES_FROM = 200, 120
SURNAME_SKEW = 0.6  # Zipf exponent of surname frequencies: a few surnames are common
POPULARITY_SKEW = 0.8  # Zipf exponent of how often documents pick an entity within its pool
ADAPTED_FILM_SHARE = 0.4  # films that adapt a novel of their country and keep its title
LOCATIONS = ("on the coast of the Sundic Sea", "in the northern highlands", "on the eastern plains",
             "on the western shore of the Grey Gulf", "between the Sundic Sea and the Ash Mountains",
             "in the river basin of the south", "on a peninsula in the Cold Sea", "in the lake district of the north")
INDUSTRIES = ("fishing", "shipbuilding", "steel making", "wine growing", "textiles", "coal mining", "tourism",
              "brewing", "car making", "banking", "printing", "glass making")
CLUB_PATTERNS = ("{} United", "FC {}", "{} Rovers", "{} Athletic", "Real {}", "Sporting {}", "{} City",
                 "{} Wanderers")
PARTY_NAMES = ("Liberal Party", "National Party", "Labour Party", "Green Party", "People's Party", "Farmers' Party",
               "Social Democratic Party", "Christian Union", "Reform Party", "Alliance for Progress")
COMPANY_KINDS = (("Motors", "car maker", "cars"), ("Steel", "steel maker", "steel pipes"),
                 ("Foods", "food company", "canned fish"), ("Airlines", "airline", "cheap flights"),
                 ("Bank", "bank", "savings accounts"), ("Telecom", "telephone company", "mobile phones"),
                 ("Group", "shipping group", "container ships"), ("& Sons", "family firm", "furniture"),
                 ("Works", "engineering company", "tractors"), ("Brewery", "brewer", "lager"))
MUSIC_GENRES = ("rock", "folk", "jazz", "punk", "pop", "metal", "soul", "reggae", "electronic", "blues")
FILM_GENRES = ("drama", "comedy", "thriller", "crime", "war", "romance", "horror")
TITLE_WORDS = (("Silver", "Quiet", "Broken", "Golden", "Northern", "Paper", "Electric", "Hollow", "Velvet",
                "Winter", "Burning", "Distant", "Silent", "Crimson", "Last", "Iron"),
               ("Harbour", "Lights", "Roads", "Hearts", "Rain", "Garden", "Machines", "Fires", "Bells", "Dreams",
                "Windows", "Horses", "Summer", "Island", "Letters", "Voices"))
# A few names are not ASCII, so titles, URLs (percent-encoded), YAGO2 names (\uXXXX) and NIF offsets (code
# points) all meet them.
FIRST_NAMES = {"m": ("Ivo", "Jon", "Karel", "Emil", "Oren", "Tamas", "Luca", "Anton", "Viktor", "Milo", "Arne",
                     "Pavel", "Rune", "Teodor", "Bram", "Cas", "Dorian", "Elias", "Gustav", "Henrik", "Søren",
                     "Jürgen"),
               "f": ("Mira", "Ada", "Lena", "Sara", "Ilse", "Nadia", "Greta", "Hanna", "Irma", "Jana", "Katya",
                     "Lotte", "Marit", "Nina", "Olga", "Petra", "Rina", "Selma", "Tova", "Vera", "Zoë", "Renée")}
OUTSIDE_FIRMS = ("Securities", "Research", "Capital", "Partners")  # analysts' firms, outside the KB
NME_FIRST_NAMES = ("José", "Mats", "Dirk", "Fay", "Gil", "Ute", "Åsa", "Luís")
PRONOUNS = {"m": "He", "f": "She"}
POSITIONS = ("goalkeeper", "defender", "midfielder", "striker")
CRICKET_ROLES = ("batsman", "fast bowler", "spin bowler", "wicketkeeper", "all-rounder")
MUSICIAN_ROLES = ("singer", "guitarist", "drummer", "bassist", "keyboard player")
# Qualifiers that tell apart titles of entities named alike (the city keeps the bare name, as on Wikipedia).
QUALIFIERS = {"band": "band", "album": "album", "film": "film", "novel": "novel", "footballer": "footballer",
              "cricketer": "cricketer", "politician": "politician", "executive": "businessperson",
              "musician": "musician", "director": "director", "writer": "writer", "actor": "actor"}
# How text names an entity: the share of first mentions by the short name, and of later ones.
FIRST_SHORT = {"club": 0.4, "county": 0.85, "company": 0.25}
LATER_SHORT = {"person": 0.85, "club": 0.7, "county": 0.9, "company": 0.6, "river": 0.3}


@dataclasses.dataclass(eq=False)
class Entity:
    """A thing of the world: `kind`, how text names it in full (`name`) and in short (`short`: a person's
    surname, a club's city), `attrs` (facts; related entities as `Entity`), and once titled, `title` (None:
    outside the KB, an `--NME--` mention), `wikipedia_id` and `paragraphs` (the description). Compared by
    identity, so entities can key dicts."""

    kind: str
    name: str
    short: str
    attrs: dict[str, Any]
    title: str | None = None
    wikipedia_id: str = ""
    weight: float = 1.0
    paragraphs: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class World:
    """The KB entities (in KB order once `_world` returns) and the out-of-KB stems (villages, NME surnames)."""

    entities: list[Entity]
    outside_stems: list[str]

    def of(self, kind: str, **attrs: Any) -> list[Entity]:
        """Entities of `kind` whose `attrs` are the given ones (entities compare by identity)."""
        return [e for e in self.entities if e.kind == kind and all(e.attrs.get(k) == v for k, v in attrs.items())]


def _zipf(rng: random.Random, items: Sequence[Entity], skew: float) -> None:
    """Gives `items` popularity weights 1 / rank ** skew in a random rank order."""
    order = list(range(len(items)))
    rng.shuffle(order)
    for rank, i in enumerate(order):
        items[i].weight = 1.0 / (1 + rank) ** skew


def _sample(rng: random.Random, pool: Sequence[Entity], k: int) -> list[Entity]:
    """`k` distinct entities of `pool` drawn by weight (Efraimidis-Spirakis keys), fewer if the pool is small."""
    keyed = sorted(range(len(pool)), key=lambda i: -rng.random() ** (1.0 / pool[i].weight))
    return [pool[i] for i in keyed[:k]]


def _listing(names: Sequence[str]) -> str:
    """'A', 'A and B', 'A, B and C'."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _a(word: str) -> str:
    """`word` with its indefinite article."""
    return ("an " if word[0].lower() in "aeiou" else "a ") + word


class _People:
    """Makes people: a gendered first name and a surname drawn with Zipf-like frequencies (`SURNAME_SKEW`);
    full names are unique within a role, though people of different roles may share one."""

    def __init__(self, rng: random.Random, surnames: Sequence[str]):
        self.rng, self.surnames = rng, list(surnames)
        self.weights = [1.0 / (1 + i) ** SURNAME_SKEW for i in range(len(self.surnames))]
        self.taken: set[tuple[str, str]] = set()

    def new(self, role: str, **attrs: Any) -> Entity:
        """A person of `role` with `attrs` and a full name no other person of that role has."""
        while True:
            gender = self.rng.choice("mf")
            surname = self.rng.choices(self.surnames, self.weights)[0]
            name = f"{self.rng.choice(FIRST_NAMES[gender])} {surname}"
            if (name, role) not in self.taken:
                self.taken.add((name, role))
                return Entity("person", name, surname, {"role": role, "gender": gender, **attrs})


def _world(rng: random.Random) -> World:
    """All entities with their facts, titled, numbered and described, in KB (wikipedia_id) order."""
    taken = ({c for c, _ in COUNTRIES} | {n for names in FIRST_NAMES.values() for n in names} | _template_words()
             | {w for words in TITLE_WORDS for w in words})
    n_cities = PER_COUNTRY["city"] * len(COUNTRIES)
    stems = iter(name_stems(rng, n_cities + OWN_SURNAMES + FRESH_STEMS + OUTSIDE_STEMS, taken))
    city_stems, own_surnames = [next(stems) for _ in range(n_cities)], [next(stems) for _ in range(OWN_SURNAMES)]
    fresh = iter([next(stems) for _ in range(FRESH_STEMS)])
    outside = list(stems)
    surnames = rng.sample(city_stems, SURNAMES_FROM_CITIES) + own_surnames
    rng.shuffle(surnames)
    people = _People(rng, surnames)
    entities: list[Entity] = []
    names: set[str] = set()  # of rivers, bands and companies, which must not repeat

    def add(e: Entity) -> Entity:
        entities.append(e)
        return e

    def unique(kind: str, country_stems: list[str], pattern: str = "{}") -> tuple[str, str]:
        """(name, stem) of a new river, band or company, the stem most often a city's (`SHARED_STEM_SHARE`)."""
        while True:
            stem = rng.choice(country_stems) if rng.random() < SHARED_STEM_SHARE[kind] else next(fresh)
            if (name := pattern.format(stem)) not in names:
                names.add(name)
                return name, stem

    titles = [f"{a} {b}" for a in TITLE_WORDS[0] for b in TITLE_WORDS[1]]
    titles += [f"The {t}" for t in titles]
    rng.shuffle(titles)
    # Albums take the first ALBUM_TITLES titles, films and novels those from WORK_TITLES_FROM on: the titles in
    # between can name an album and a film or a novel.
    album_titles, work_titles = iter(titles[:ALBUM_TITLES]), iter(titles[WORK_TITLES_FROM:])
    for index, (name, adjective) in enumerate(COUNTRIES):
        country = add(Entity("country", name, name, {"adjective": adjective, "location": rng.choice(LOCATIONS),
                                                     "independence": rng.randint(1800, 1990)}))
        own = city_stems[index * PER_COUNTRY["city"]:(index + 1) * PER_COUNTRY["city"]]
        cities = [add(Entity("city", s, s, {"country": country, "industry": rng.choice(INDUSTRIES)})) for s in own]
        _zipf(rng, cities, POPULARITY_SKEW)
        country.attrs["capital"] = cities[0]
        cities[0].attrs["capital"] = True
        for _ in range(PER_COUNTRY["river"]):
            river = add(Entity("river", *unique("river", own, "{} River"), {"country": country}))
            for city in rng.sample(cities, 2):
                city.attrs.setdefault("river", river)
        add(Entity("football_team", name, name, {"country": country}))
        clubs = []
        for stem, pattern in zip(rng.sample(own, PER_COUNTRY["club"]), rng.sample(CLUB_PATTERNS, PER_COUNTRY["club"])):
            city = cities[own.index(stem)]
            clubs.append(add(Entity("club", pattern.format(stem), stem, {"country": country, "city": city,
                                                                          "founded": rng.randint(1870, 1950)})))
            for _ in range(PLAYERS_PER_CLUB):
                add(people.new("footballer", country=country, club=clubs[-1], birthplace=rng.choice(cities),
                               born=rng.randint(1962, 1978), position=rng.choice(POSITIONS)))
        if index < CRICKET_COUNTRIES:
            add(Entity("cricket_team", name, name, {"country": country}))
            for stem in rng.sample(own, COUNTIES_PER_CRICKET_COUNTRY):
                county = add(Entity("county", f"{stem} County Cricket Club", stem,
                                    {"country": country, "city": cities[own.index(stem)],
                                     "founded": rng.randint(1850, 1920)}))
                for _ in range(CRICKETERS_PER_COUNTY):
                    add(people.new("cricketer", country=country, club=county, birthplace=rng.choice(cities),
                                   born=rng.randint(1960, 1977), cricket_role=rng.choice(CRICKET_ROLES)))
        parties = [add(Entity("party", p, p, {"country": country, "founded": rng.randint(1870, 1990),
                                              "ruling": i == 0}))
                   for i, p in enumerate(rng.sample(PARTY_NAMES, 3))]
        offices = [(0, "prime minister"), (0, "foreign minister"), (0, "finance minister"), (1, "leader"),
                   (2, "leader"), (0, "mp"), (0, "mp"), (0, "mp"), (1, "mp"), (1, "mp"), (1, "mp"), (2, "mp"),
                   (2, "mp"), (rng.randrange(3), "mayor"), (rng.randrange(3), "mayor")]
        for k, (party_index, office) in enumerate(offices):
            seat = cities[1 + k % (len(cities) - 1)]
            person = add(people.new("politician", country=country, party=parties[party_index], office=office,
                                    seat=seat, birthplace=rng.choice(cities), born=rng.randint(1930, 1965),
                                    since=rng.randint(1986, 1996)))
            if office in ("prime minister", "leader"):
                parties[party_index].attrs["leader"] = person
        for _ in range(PER_COUNTRY["company"]):
            suffix, sector, product = rng.choice(COMPANY_KINDS)
            stems_of_company = own if rng.random() < 0.7 else surnames  # a city's name or a family's, or a new one
            company = add(Entity("company", *unique("company", stems_of_company, "{} " + suffix),
                                 {"country": country, "hq": rng.choice(cities), "sector": sector, "product": product,
                                  "founded": rng.randint(1850, 1990)}))
            company.attrs["ceo"] = add(people.new("executive", country=country, company=company,
                                                  birthplace=rng.choice(cities), born=rng.randint(1935, 1960),
                                                  since=rng.randint(1980, 1996)))
        for _ in range(PER_COUNTRY["band"]):
            band = add(Entity("band", *unique("band", own), {
                "country": country, "city": rng.choice(cities), "genre": rng.choice(MUSIC_GENRES),
                "formed": rng.randint(1965, 1992)}))
            band.attrs["members"] = [add(people.new("musician", country=country, band=band,
                                                    instrument=rng.choice(MUSICIAN_ROLES),
                                                    birthplace=rng.choice(cities), born=rng.randint(1945, 1975)))
                                     for _ in range(rng.randint(2, 4))]
            band.attrs["albums"] = []
            for k in range(rng.randint(1, 3)):
                title = next(album_titles)
                band.attrs["albums"].append(add(Entity("album", title, title, {
                    "band": band, "year": band.attrs["formed"] + 1 + 3 * k, "recorded": rng.choice(cities)})))
        directors = [add(people.new("director", country=country, born=rng.randint(1930, 1965), films=[]))
                     for _ in range(PER_COUNTRY["director"])]
        writers = [add(people.new("writer", country=country, born=rng.randint(1925, 1965), novels=[],
                                  residence=rng.choice(cities))) for _ in range(PER_COUNTRY["writer"])]
        actors = [add(people.new("actor", country=country, born=rng.randint(1940, 1975), films=[]))
                  for _ in range(PER_COUNTRY["actor"])]
        novels = []  # every writer, director and actor has a work: the k-th work goes to the k-th of them first
        for k in range(PER_COUNTRY["novel"]):
            title, writer = next(work_titles), writers[k % len(writers)]
            novels.append(add(Entity("novel", title, title, {"country": country, "writer": writer,
                                                             "city": rng.choice(cities),
                                                             "year": rng.randint(1950, 1990)})))
            writer.attrs["novels"].append(novels[-1])
        for k, novel in enumerate(rng.sample(novels, PER_COUNTRY["film"])):
            adapted = rng.random() < ADAPTED_FILM_SHARE
            title = novel.name if adapted else next(work_titles)
            cast = [actors[k % len(actors)], rng.choice([a for a in actors if a is not actors[k % len(actors)]])]
            film = add(Entity("film", title, title, {"country": country, "director": directors[k % len(directors)],
                                                     "actors": cast, "genre": rng.choice(FILM_GENRES),
                                                     "shot": rng.choice(cities), "year": rng.randint(1975, 1996)}))
            if adapted:
                film.attrs["novel"], novel.attrs["film"] = novel, film
            film.attrs["director"].attrs["films"].append(film)
            for actor in film.attrs["actors"]:
                actor.attrs["films"].append(film)
    for kind in ("club", "county", "company", "band", "album", "film", "novel", "river", "party"):
        _zipf(rng, [e for e in entities if e.kind == kind], POPULARITY_SKEW)
    for role in QUALIFIERS:
        _zipf(rng, [e for e in entities if e.attrs.get("role") == role], POPULARITY_SKEW)
    _zipf(rng, [e for e in entities if e.kind == "country"], 0.3)
    _assign_titles(entities)
    for e in entities:  # what the descriptions of cities and rivers list
        if e.kind in ("club", "county"):
            e.attrs["city"].attrs.setdefault("based", []).append(e.name)
        if e.kind == "city" and "river" in e.attrs:
            e.attrs["river"].attrs.setdefault("cities", []).append(e.name)
    rng.shuffle(entities)
    for e, wikipedia_id in zip(entities, sorted(rng.sample(range(10_000, 60_000_000), len(entities)))):
        e.wikipedia_id = str(wikipedia_id)
        e.paragraphs = _describe(e)
    return World(entities, outside)


def _assign_titles(entities: list[Entity]) -> None:
    """Unique titles: a name shared by several entities keeps its bare form for the city, if one is among them,
    and takes a qualifier ("Povnas (band)", "The Northern Rain (novel)") for the others; parties always name their
    country, national teams are "<Country> national football team"."""
    by_name: dict[str, list[Entity]] = collections.defaultdict(list)
    for e in entities:
        if e.kind == "party":
            e.title = f"{e.name} ({e.attrs['country'].name})"
        elif e.kind in ("football_team", "cricket_team"):
            e.title = f"{e.name} national {e.kind.split('_')[0]} team"
        else:
            by_name[e.name].append(e)
    for name, group in by_name.items():
        for e in group:
            kind = e.attrs["role"] if e.kind == "person" else e.kind
            e.title = name if len(group) == 1 or kind in ("city", "country") else f"{name} ({QUALIFIERS[kind]})"
    assert len({e.title for e in entities}) == len(entities)


def _describe(e: Entity) -> list[str]:
    """The KILT `text` of an entity: the title, then one or two paragraphs stating its kind and the facts the
    documents name it with (a footballer's club and country, a band's city and members)."""
    a = e.attrs
    adj = a["country"].attrs["adjective"] if "country" in a else ""
    if e.kind == "country":
        paragraphs = [f"{e.name} is a country {a['location']}. Its capital and largest city is {a['capital'].name}, "
                      f"and its people are known as {a['adjective']}s.",
                      f"{e.name} became independent in {a['independence']}."]
    elif e.kind == "football_team":
        paragraphs = [f"The {e.title} represents {e.name} in international association football. It is run by the "
                      f"{adj} football association and plays its home matches in {a['country'].attrs['capital'].name}."]
    elif e.kind == "cricket_team":
        paragraphs = [f"The {e.title} represents {e.name} in international cricket and plays test matches against the "
                      f"other cricket nations of the region."]
    elif e.kind == "party":
        status = "It leads the government" if a["ruling"] else "It is in opposition"
        paragraphs = [f"The {e.name} is a political party in {a['country'].name}. It was founded in {a['founded']} and "
                      f"is led by {a['leader'].name}. {status}."]
    elif e.kind == "city":
        first = f"{e.name} is a city in {a['country'].name}"
        first += ", and the capital of the country." if a.get("capital") else "."
        if "river" in a:
            first += f" It lies on the {a['river'].name}."
        paragraphs = [first + f" Its economy is based on {a['industry']}."]
        if "based" in a:
            paragraphs.append(f"It is home to {_listing(a['based'])}.")
    elif e.kind == "river":
        paragraphs = [f"The {e.name} is a river in {a['country'].name}." + (
            f" It flows past {_listing(a['cities'])} on its way to the sea." if a.get("cities") else "")]
    elif e.kind == "club":
        paragraphs = [f"{e.name} is {_a(adj)} football club based in {a['city'].name}. It plays in the {adj} league "
                      f"and was founded in {a['founded']}."]
    elif e.kind == "county":
        paragraphs = [f"{e.name} is one of the county cricket clubs of the {adj} championship. It is based in "
                      f"{a['city'].name} and was founded in {a['founded']}."]
    elif e.kind == "company":
        paragraphs = [f"{e.name} is {_a(adj)} {a['sector']} founded in {a['founded']}, with its headquarters in "
                      f"{a['hq'].name}. It is best known for its {a['product']}.",
                      f"Its chief executive is {a['ceo'].name}."]
    elif e.kind == "band":
        paragraphs = [f"{e.name} is {_a(adj)} {a['genre']} band formed in {a['city'].name} in {a['formed']}. Its "
                      f"members are {_listing([m.name for m in a['members']])}.",
                      f"The band's albums include {_listing([x.name for x in a['albums']])}."]
    elif e.kind == "album":
        band = a["band"]
        paragraphs = [f"{e.name} is an album by the {band.attrs['country'].attrs['adjective']} "
                      f"{band.attrs['genre']} band {band.name}, released in {a['year']}. It was recorded in "
                      f"{a['recorded'].name}."]
    elif e.kind == "film":
        first = (f"{e.name} is a {a['year']} {adj} {a['genre']} film directed by {a['director'].name} and starring "
                 f"{_listing([x.name for x in a['actors']])}. It was shot in {a['shot'].name}.")
        paragraphs = [first] + ([f"It is based on the novel {e.name} by {a['novel'].attrs['writer'].name}."]
                                if "novel" in a else [])
    elif e.kind == "novel":
        paragraphs = [f"{e.name} is a {a['year']} novel by the {adj} writer {a['writer'].name}. It is set in "
                      f"{a['city'].name}."]
        if "film" in a:
            paragraphs.append(f"It was made into a film by {a['film'].attrs['director'].name} in "
                              f"{a['film'].attrs['year']}.")
    else:
        paragraphs = _describe_person(e, adj)
    return [f"{e.title}\n"] + [f"{p}\n" for p in paragraphs]


def _describe_person(e: Entity, adj: str) -> list[str]:
    """A person's paragraphs: birth year, nationality and role with what the role ties them to (club, party)."""
    a = e.attrs
    he = PRONOUNS[a["gender"]]
    opening = f"{e.name} (born {a['born']}) is {_a(adj)}"
    born_in = f"{he} was born in {a['birthplace'].name}." if "birthplace" in a else ""
    role = a["role"]
    if role == "footballer":
        return [f"{opening} footballer who plays as a {a['position']} for {a['club'].name}. {born_in}",
                f"{he} has played for the {a['country'].name} national football team."]
    if role == "cricketer":
        return [f"{opening} cricketer, {_a(a['cricket_role'])} who plays for {a['club'].name}. {born_in}"]
    if role == "politician":
        office = {"prime minister": f"prime minister of {a['country'].name}",
                  "foreign minister": f"foreign minister of {a['country'].name}",
                  "finance minister": f"finance minister of {a['country'].name}", "leader": "leader of the party",
                  "mp": f"a member of parliament for {a['seat'].name}", "mayor": f"mayor of {a['seat'].name}"}
        return [f"{opening} politician of the {a['party'].name}. {he} has been {office[a['office']]} since "
                f"{a['since']}.", born_in]
    if role == "executive":
        return [f"{opening} business executive who has led {a['company'].name} as chief executive since "
                f"{a['since']}. {born_in}"]
    if role == "musician":
        return [f"{opening} {a['instrument']}, a member of the {a['band'].attrs['genre']} band {a['band'].name}. "
                f"{born_in}"]
    if role == "director":
        return [f"{opening} film director whose films include {_listing([f.name for f in a['films']])}."]
    if role == "writer":
        return [f"{opening} novelist, the author of {_listing([n.name for n in a['novels']])}. {he} lives in "
                f"{a['residence'].name}."]
    return [f"{opening} actor who has appeared in {_listing([f.name for f in a['films']])}."]


# ------------------------------------------------------------------------------------------------- stories

@dataclasses.dataclass(frozen=True)
class Story:
    """A kind of news document: its topic word, headline templates (after "<TOPIC> -"), opening sentences and
    body sentences. In a template `@role` is a mention of an entity of the cast (`@role.attr`: an entity fact
    of the role's last pick in the sentence, or of its one entity), with flags `!` (full name), `^` (capitals)
    and `*` (a country's adjective, linked to the country); `{value}` is a plain word (a score, a day). A
    template whose roles the cast lacks is skipped."""

    topic: str
    headlines: tuple[str, ...]
    openings: tuple[str, ...]
    body: tuple[str, ...]


STORIES = {
    "soccer_league": Story("SOCCER", (
        "@A^ BEAT @B^ .", "@pA^ GIVES @A^ WIN OVER @B^ .", "@A^ STAY TOP AFTER WIN OVER @B^ .",
        "@B^ LOSE AT @A^ ."), (
        "@A beat @B {score} in the @C* league on {day} .",
        "@A came from behind to beat @B {score} at home on {day} .",
        "Goals from @pA and @pA gave @A a {score} win over @B on {day} ."), (
        "@pA scored twice for @A before half-time .",
        "@pA put @A ahead after {minute} minutes with a shot from the edge of the area .",
        "@pB pulled a goal back for @B {minute} minutes from the end .",
        "@pB hit the post for @B early in the second half .",
        "The win lifts @A to {ordinal} place , {small} points behind @D .",
        "@B , who lost to @D last week , stay in {ordinal} place .",
        "@A coach @nme_coach said : \" We played well and deserved the points . \"",
        "Referee @nme_referee sent off @pB after {minute} minutes .",
        "@pA , the @C* international , was named man of the match .",
        "A crowd of {crowd} watched the match in @dateline .",
        "@pB missed a penalty for @B just before the break .",
        "@pA has now scored {small} goals in the league this season .",
        "@B play @D on {day} .",
        "The home side dominated the first half but could not find a way through .",
        "Both teams had chances in a lively second half .",
        "@pA was booked for a late tackle on @pB .",
        "@pB was taken off injured after {minute} minutes .",
        "@A have now won {small} matches in a row .",
        "Police said {small} fans were arrested after the match .",
        "@A chairman @nme_chairman said the club would not sell @pA .")),
    "soccer_international": Story("SOCCER", (
        "@A^ BEAT @B^ IN QUALIFIER .", "@A^ AND @B^ DRAW .", "@pA^ SCORES AS @A^ WIN ."), (
        "@A beat @B {score} in a qualifying match in @dateline on {day} .",
        "@A and @B drew {draw} in a friendly in @dateline on {day} ."), (
        "@pA , who plays club football for @pA.club! , opened the scoring after {minute} minutes .",
        "@pA doubled the lead for @A shortly before half-time .",
        "@pB , the @B.country* captain , was sent off after {minute} minutes .",
        "@B coach @nme_coach said the side had been unlucky .",
        "@pA , who plays for @pA.club! , was named man of the match .",
        "The result leaves @A top of the group , {small} points ahead of @B .",
        "About {crowd} fans watched the match in @dateline .",
        "@pB almost equalised for @B in the last minute but hit the bar .",
        "@pB of @pB.club! came on as a substitute after {minute} minutes .",
        "The home side pressed from the start .",
        "@pA was booked for a foul on @pB .",
        "@B must now beat @A in @C2 next month to stay in the competition .",
        "Police said the match passed off without trouble .",
        "@pB was carried off on a stretcher after {minute} minutes .",
        "Referee @nme_referee booked {small} players .",
        "@pA said : \" We knew we had to win this match . \"")),
    "cricket_county": Story("CRICKET", (
        "@A^ BEAT @B^ BY {wickets} WICKETS .", "@pA^ HITS CENTURY FOR @A^ .", "@C*^ CHAMPIONSHIP SCORES ."), (
        "@A beat @B by {wickets} wickets in the @C* county championship on {day} .",
        "Close of play scores on the {match_day} day of the championship match between @A and @B in @dateline "
        "on {day} :"), (
        "@A {runs} ( @pA {century} , @pA {fifty} ) v @B .",
        "@pA hit {century} for @A against @B .",
        "@pB took {five} wickets for @B .",
        "@B were bowled out for {runs} , with @pA taking {five} for {fifty} .",
        "@pA and @pA put on {runs} for the {ordinal} wicket .",
        "@A captain @pA said the pitch in @dateline had helped the bowlers .",
        "@B now face @D at home next week .",
        "Umpire @nme_umpire stopped play for bad light in the afternoon .",
        "@A {points} points , @B {small} points .",
        "@pB made {fifty} before being caught by @pA .",
        "Rain delayed the start of play by two hours .",
        "@pA was out for {small} , caught behind off @pB .",
        "@B , set {runs} to win , were {fifty} for {five} at the close .",
        "@pB bowled unchanged for {small} overs after lunch .",
        "@A coach @nme_coach said the side had batted well .",
        "@A captain @pA said : \" The pitch was hard work for the bowlers . \"")),
    "cricket_test": Story("CRICKET", (
        "@A^ BEAT @B^ IN FIRST TEST .", "@pA^ LEADS @A^ FIGHTBACK ."), (
        "@A beat @B by {wickets} wickets in the first test in @dateline on {day} .",
        "@A were {runs} for {five} at the close of the first day of the test against @B in @dateline ."), (
        "@pA , who plays county cricket for @pA.club! , hit {century} .",
        "@pB took {five} wickets as @A were bowled out for {runs} .",
        "@B captain @pB said the side would fight back in the second innings .",
        "The second test starts in @city2 next week .",
        "@pA and @pA added {runs} for the {ordinal} wicket .",
        "@B.country* selectors will name the squad for the next test on {day} .",
        "Umpire @nme_umpire turned down an appeal against @pA .",
        "@pB , the @pB.club! bowler , finished with {five} for {fifty} .",
        "Rain stopped play shortly after lunch .",
        "@pA was run out for {small} .",
        "@B need {runs} more runs to win with {five} wickets left .",
        "The pitch offered little help to the bowlers .",
        "@A coach @nme_coach praised @pA .",
        "@B captain @pB said : \" We can still win this series . \"")),
    "politics": Story("POLITICS", (
        "@PM^ WINS CONFIDENCE VOTE .", "@C^ OPPOSITION CALLS FOR EARLY ELECTION .", "@C^ , @C2^ SIGN TRADE DEAL ."), (
        "@C 's prime minister @PM won a vote of confidence in parliament on {day} .",
        "The @O called on {day} for an early election in @C .",
        "@C and @C2 signed a trade agreement in @dateline on {day} ."), (
        "@PM , leader of the @R! , said the budget would cut taxes for families .",
        "Opposition leader @OL of the @O called the plan a mistake .",
        "The @O wants an early election , @OL told reporters in @dateline .",
        "Foreign minister @FM will travel to @C2 next week to meet @F .",
        "@FIN , the finance minister , said the economy would grow by {pct} percent this year .",
        "@mp , a member of parliament for @mp.seat , voted against the government .",
        "@C* farmers protested outside parliament in @dateline on {day} .",
        "@PM 's government has a majority of {small} seats .",
        "A spokesman for the @R , @nme_spokesman , said the party was united .",
        "@mp of the @mp.party said the vote would be close .",
        "Floods on the @river forced {crowd} people from their homes near @village .",
        "@mayor , the mayor of @mayor.seat , asked the government for help .",
        "The vote is expected later this month .",
        "Opinion polls show the two main parties level .",
        "@OL said the government had lost touch with voters in @city .",
        "@PM told a news conference in @dateline that talks with @C2 would continue .",
        "Unions called a strike in @city for next week , union leader @nme_union said .",
        "Political analyst @nme_analyst of @nme_firm said the government would survive the vote .",
        "@PM told parliament : \" This budget is fair to every family . \"")),
    "business": Story("BUSINESS", (
        "@K^ PROFIT RISES {pct} PCT .", "@K^ TO CUT {jobs} JOBS .", "@K^ IN TALKS WITH @K2^ ."), (
        "@K said on {day} its first-half profit rose {pct} percent to {money} million .",
        "@K will cut {jobs} jobs at its offices in @dateline , the company said on {day} .",
        "@K is in talks to buy its rival @K2 , the @C* company said on {day} ."), (
        "Chief executive @ceo said sales of {product} had been strong in @C and abroad .",
        "@K , based in @dateline , is the largest {sector} in @C .",
        "@ceo said @K would open a new office in @city2 next year .",
        "Shares in @K rose {pct} percent on the @capital stock exchange .",
        "@K2 , a rival , reported a loss last month .",
        "Analyst @nme_analyst of @nme_firm said the results were better than expected .",
        "Analysts said @ceo had turned @K around since taking over .",
        "The @C* government owns {pct} percent of @K .",
        "@K2 chief executive @K2.ceo declined to comment .",
        "The company gave no forecast for the full year .",
        "Analysts had expected a smaller rise .",
        "@K employs about {jobs} people in @C .",
        "The results were published after the close of trading .",
        "Shares in @K2 fell {pct} percent .",
        "Union leader @nme_union said workers at @K would strike if jobs were cut .",
        "Chief executive @ceo said : \" We expect a better second half . \"")),
    "music": Story("MUSIC", (
        "@D^ TO RELEASE NEW ALBUM .", "@D^ PLAY SOLD-OUT SHOW IN @city^ .", "@mem^ LEAVES @D^ ."), (
        "The @C* {genre} band @D will release a new album next month , band member @mem said on {day} .",
        "@D played to {crowd} fans in @city on {day} ."), (
        "The group 's album @album sold well in @C .",
        "@mem said the band had recorded the new songs in @city2 .",
        "@D was formed in @D.city .",
        "@mem and @mem wrote most of the songs .",
        "Fans queued for hours to see @D , who last played in @city in {year} .",
        "The band 's manager @nme_manager said the tour would go on to @C2 .",
        "Critics have compared @D to @D2 .",
        "@album was recorded in @album.recorded .",
        "Tickets for the show sold out within an hour .",
        "@mem said the group had no plans to split .",
        "The band last toured abroad in {year} .",
        "The new single has been played widely on radio in @C .",
        "The concert ended with a long encore .",
        "Producer @nme_producer said the new songs were the best the band had made .",
        "@mem told reporters : \" We have never sounded better . \"")),
    "film": Story("FILM", (
        "@F^ WINS TOP PRIZE AT @city^ FESTIVAL .", "@dir^ 'S @F^ OPENS ."), (
        "@dir 's film @F won the top prize at the festival in @city on {day} .",
        "@F , the new film by @dir , opened in cinemas across @C on {day} ."), (
        "@act and @act star in the film , which was shot in @F.shot .",
        "@dir said the film had taken {small} years to make .",
        "The film is based on the novel @N by @N.writer .",
        "@act won the prize for best performance .",
        "Critic @nme_critic called @F the best @C* film in years .",
        "@F will be shown in @C2 next month .",
        "@dir 's previous film , @F2 , was a success in @C .",
        "The festival ends on {day} .",
        "The jury praised the film 's use of music .",
        "@act said working with @dir had been a joy .",
        "The film has already been sold to distributors in @C2 .",
        "Tickets for the first showing sold out in minutes .",
        "The film was produced by @nme_producer .",
        "Jury president @nme_jury said the decision had been easy .",
        "@dir said : \" It is a film about the town where I grew up . \"")),
    "books": Story("BOOKS", (
        "@writer^ WINS BOOK PRIZE FOR @N^ .", "NEW NOVEL BY @writer^ ."), (
        "@writer won the @C* book prize on {day} for the novel @N .",
        "@writer 's novel @N went on sale in @C on {day} ."), (
        "The novel is set in @N.city and follows a family over {small} generations .",
        "@N was made into a film , @F , by @F.director in {year} .",
        "@writer , who lives in @writer.residence , read from the book in @city .",
        "Critic @nme_critic called @N a masterpiece .",
        "The book has sold {crowd} copies in @C .",
        "@writer 's earlier novel @N2 is set in @N2.city .",
        "The prize is worth {money} thousand .",
        "The jury said the book was brave and funny .",
        "@writer said the idea for the book came during a trip to @C2 .",
        "A second printing is planned for next month .",
        "The publisher said sales had doubled since the prize was announced .",
        "Publisher @nme_publisher said a second novel would follow next year .",
        "@writer said : \" I wrote the book in {small} months . \"")),
}
STORY_WEIGHTS = {"soccer_league": 22, "soccer_international": 8, "cricket_county": 11, "cricket_test": 5,
                 "politics": 16, "business": 15, "music": 10, "film": 7, "books": 6}
MAIN_KIND = {"music": "band", "film": "film", "books": "novel"}  # what these stories are about
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth")


def _template_words() -> set[str]:
    """The capitalised words of the templates and of the fixed parts of names: invented names must not look like
    them."""
    texts = [t for s in STORIES.values() for t in (*s.headlines, *s.openings, *s.body)]
    texts += [*CLUB_PATTERNS, *PARTY_NAMES, *(k[0] for k in COMPANY_KINDS)]
    return {w.capitalize() for t in texts for w in t.split() if w.isalpha()} | {w.capitalize() for w in DAYS}


def _cast(rng: random.Random, world: World, story: str) -> dict[str, list[Entity]]:
    """The entities a story's roles draw from, consistent with the world's facts (a club's own players)."""
    def pick(pool: Sequence[Entity]) -> Entity:
        return _sample(rng, pool, 1)[0]

    main = pick(world.of(MAIN_KIND[story])) if story in MAIN_KIND else None  # a story about one band, film, novel
    countries = world.of("country")
    if story.startswith("cricket"):
        countries = [c for c in countries if world.of("cricket_team", country=c)]
    country = main.attrs["country"] if main else pick(countries)
    others = [c for c in (countries if story == "cricket_test" else world.of("country")) if c is not country]
    abroad = pick(others)
    cities = world.of("city", country=country)
    cast: dict[str, list[Entity]] = {"C": [country], "C2": [abroad], "capital": [country.attrs["capital"]],
                                     "city": [pick(cities)]}
    cast["city2"] = [pick([c for c in cities if c is not cast["city"][0]])]
    if story in ("soccer_league", "cricket_county"):
        kind = "club" if story == "soccer_league" else "county"
        home, away, third = _sample(rng, world.of(kind, country=country), 3)
        cast.update(A=[home], B=[away], D=[third], dateline=[home.attrs["city"]],
                    pA=_sample(rng, world.of("person", club=home), rng.randint(2, 3)),
                    pB=_sample(rng, world.of("person", club=away), 2))
    elif story in ("soccer_international", "cricket_test"):
        team, role = {"soccer_international": ("football_team", "footballer"),
                      "cricket_test": ("cricket_team", "cricketer")}[story]
        cast.update(A=world.of(team, country=country), B=world.of(team, country=abroad), dateline=cast["capital"],
                    pA=_sample(rng, world.of("person", role=role, country=country), 3),
                    pB=_sample(rng, world.of("person", role=role, country=abroad), 2))
    elif story == "politics":
        office = collections.defaultdict(list)
        for p in world.of("person", role="politician", country=country):
            office[p.attrs["office"]].append(p)
        ruling = [p for p in world.of("party", country=country) if p.attrs["ruling"]][0]
        opposition = pick([p for p in world.of("party", country=country) if not p.attrs["ruling"]])
        cast.update(PM=office["prime minister"], FM=office["foreign minister"], FIN=office["finance minister"],
                    R=[ruling], O=[opposition], OL=[opposition.attrs["leader"]], dateline=cast["capital"],
                    mp=_sample(rng, office["mp"], 2), mayor=_sample(rng, office["mayor"], 1),
                    F=[p for p in world.of("person", role="politician", country=abroad)
                       if p.attrs["office"] == "prime minister"],
                    river=[pick(world.of("river", country=country))])
    elif story == "business":
        company, rival = _sample(rng, world.of("company", country=country), 2)
        cast.update(K=[company], K2=[rival], ceo=[company.attrs["ceo"]], dateline=[company.attrs["hq"]])
    elif story == "music":
        cast.update(D=[main], D2=[pick([b for b in world.of("band") if b is not main])], dateline=cast["city"],
                    mem=_sample(rng, main.attrs["members"], 2), album=[pick(main.attrs["albums"])])
    elif story == "film":
        director = main.attrs["director"]
        cast.update(F=[main], dir=[director], act=main.attrs["actors"], dateline=cast["city"],
                    N=[main.attrs["novel"]] if "novel" in main.attrs else [],
                    F2=[f for f in director.attrs["films"] if f is not main][:1])
    else:
        writer = main.attrs["writer"]
        cast.update(N=[main], writer=[writer], dateline=cast["city"],
                    F=[main.attrs["film"]] if "film" in main.attrs else [],
                    N2=[n for n in writer.attrs["novels"] if n is not main][:1])
    return cast


# ------------------------------------------------------------------------------------------------ documents

@dataclasses.dataclass
class Document:
    """A generated document: its sentences (tokens) and their mentions (start, end exclusive, entity), the
    entity's title None for an `--NME--` mention."""

    id: str
    sentences: list[list[str]]
    mentions: list[list[tuple[int, int, Entity]]]


class _Writer:
    """Writes one document's sentences from templates, remembering which entities it has named: the first
    mention of an entity is mostly its full name, later ones mostly its short one. Roles `nme_*` (a referee,
    a critic) and `village` get an entity outside the KB when first named."""

    def __init__(self, rng: random.Random, world: World, cast: dict[str, list[Entity]]):
        self.rng, self.world, self.cast = rng, world, cast
        self.named: dict[Entity, int] = {}
        self.sentences: list[list[str]] = []
        self.mentions: list[list[tuple[int, int, Entity]]] = []

    @staticmethod
    def _outside(role: str) -> bool:
        """Whether `role` is filled by an entity outside the KB, made when first named."""
        return role.startswith("nme_") or role == "village"

    def _outsider(self, role: str) -> Entity:
        """A person, firm or village outside the KB; a person's surname is now and then a KB surname."""
        stem = self.rng.choice(self.world.outside_stems)
        if role == "village":
            return Entity("village", stem, stem, {})
        if role == "nme_firm":
            return Entity("company", f"{stem} {self.rng.choice(OUTSIDE_FIRMS)}", stem, {})
        if self.rng.random() < 0.3:
            stem = self.rng.choice(self.world.of("person")).short
        first = self.rng.choice(NME_FIRST_NAMES + FIRST_NAMES[self.rng.choice("mf")])
        return Entity("person", f"{first} {stem}", stem, {})

    def usable(self, template: str) -> bool:
        """Whether the cast has every role `template` names."""
        roles = [w[1:].rstrip("!^*").split(".")[0] for w in template.split() if w.startswith("@")]
        return all(self.cast.get(r) or self._outside(r) for r in roles)

    def _surface(self, entity: Entity, flags: str, named: dict[Entity, int]) -> str:
        """How the text names `entity` (see `Story` for the flags), counting the naming in `named`."""
        if "*" in flags:
            text = entity.attrs["adjective"]
        elif "!" in flags:
            text = entity.name
        else:
            count = named.get(entity, 0)
            share = LATER_SHORT.get(entity.kind, 0.0) if count else FIRST_SHORT.get(entity.kind, 0.0)
            if "^" in flags:
                share = max(share, 0.6)
            text = entity.short if self.rng.random() < share else entity.name
        named[entity] = named.get(entity, 0) + 1
        return text.upper() if "^" in flags else text

    def sentence(self, template: str) -> bool:
        """Appends `template` rendered with fresh values and cast picks (distinct within the sentence), unless
        the document already has that very sentence; returns whether it did."""
        tokens: list[str] = []
        spans: list[tuple[int, int, Entity]] = []
        picks: dict[str, Entity] = {}
        named = dict(self.named)
        for word in template.format(**self._values()).split():
            if not word.startswith("@"):
                tokens.append(word)
                continue
            path = word[1:].rstrip("!^*")
            flags = word[1 + len(path):]
            role, _, attr = path.partition(".")
            if attr:  # a fact of the role's pick (a role of one entity may be named after its fact)
                entity = (picks.get(role) or self.cast[role][0]).attrs[attr]
            else:
                if self._outside(role) and role not in self.cast:
                    self.cast[role] = [self._outsider(role)]
                fresh = [e for e in self.cast[role] if e not in picks.values()] or self.cast[role]
                entity = picks[role] = _sample(self.rng, fresh, 1)[0]
            if "*" in flags and entity.kind != "country":
                entity = entity.attrs["country"]
            words = self._surface(entity, flags, named).split()
            spans.append((len(tokens), len(tokens) + len(words), entity))
            tokens.extend(words)
        if tokens in self.sentences:
            return False
        self.sentences.append(tokens)
        self.mentions.append(spans)
        self.named = named
        return True

    def _values(self) -> dict[str, str]:
        """Fresh plain words for a template: scores, days, numbers, and the company's or band's own facts."""
        rng = self.rng
        values = {"day": rng.choice(DAYS), "ordinal": rng.choice(ORDINALS), "small": str(rng.randint(2, 9)),
                  "match_day": rng.choice(ORDINALS[:3]), "minute": str(rng.randint(5, 88)),
                  "score": f"{(w := rng.randint(1, 4))}-{rng.randint(0, w - 1)}",
                  "draw": f"{(g := rng.randint(0, 3))}-{g}", "crowd": f"{rng.randint(2, 60)},{rng.randint(0, 9)}00",
                  "pct": f"{rng.randint(1, 19)}.{rng.randint(0, 9)}", "money": str(rng.randint(12, 950)),
                  "jobs": f"{rng.randint(1, 9)},{rng.randint(0, 9)}00", "wickets": str(rng.randint(2, 9)),
                  "runs": str(rng.randint(150, 460)), "century": str(rng.randint(100, 190)),
                  "fifty": str(rng.randint(50, 99)), "five": str(rng.randint(3, 7)), "points": str(rng.randint(16, 24)),
                  "year": str(rng.randint(1985, 1995)),
                  "date": f"1996-{rng.randint(8, 12):02d}-{rng.randint(1, 28):02d}"}
        for role, fact in (("K", "product"), ("K", "sector"), ("D", "genre")):  # the company's, the band's
            if role in self.cast and fact in self.cast[role][0].attrs:
                values[fact] = self.cast[role][0].attrs[fact]
        return values


def _document(rng: random.Random, world: World, story_name: str, doc_id: str) -> Document:
    """A news document of `DOCUMENT_TOKENS` tokens: headline (topic word first), dateline, an opening, then
    body sentences (each template once, in random order, before any is used again, never the same sentence
    twice) until its drawn length."""
    story = STORIES[story_name]
    writer = _Writer(rng, world, _cast(rng, world, story_name))
    writer.sentence(f"{story.topic} - " + rng.choice([h for h in story.headlines if writer.usable(h)]))
    writer.sentence("@dateline^ {date}")
    writer.sentence(rng.choice([t for t in story.openings if writer.usable(t)]))
    body = [t for t in story.body if writer.usable(t)]
    target = rng.randint(DOCUMENT_TOKENS[0] + 10, DOCUMENT_TOKENS[1] - 20)
    pending: list[str] = []
    added = True
    while sum(map(len, writer.sentences)) < target and (pending or added):
        if not pending:
            pending, added = rng.sample(body, len(body)), False
        added |= writer.sentence(pending.pop())
    if sum(map(len, writer.sentences)) > DOCUMENT_TOKENS[1]:
        writer.sentences.pop()
        writer.mentions.pop()
    return Document(doc_id, writer.sentences, writer.mentions)


def _stories(rng: random.Random, count: int) -> list[str]:
    """`count` story kinds drawn by `STORY_WEIGHTS`."""
    names = list(STORY_WEIGHTS)
    return rng.choices(names, [STORY_WEIGHTS[n] for n in names], k=count)


# ---------------------------------------------------------------------------------------------------- NIF

NO_SPACE_BEFORE = (",", ".", ":", ";", "?", "!", "'s", ")")


def _detokenize(sentences: Sequence[Sequence[str]], mentions: Sequence[Sequence[tuple[int, int, Entity]]]
                ) -> tuple[str, list[tuple[int, int, Entity]]]:
    """Plain text as GERBIL's datasets write it (no space before punctuation, quotes hugging their words) and
    the mentions' character spans in it."""
    text, links, open_quote = "", [], False
    for tokens, spans in zip(sentences, mentions):
        starts, ends, glue_next = [], [], False
        for token in tokens:
            closing = token == '"' and open_quote
            if text and not (glue_next or closing or token in NO_SPACE_BEFORE):
                text += " "
            glue_next = token == '"' and not open_quote
            open_quote ^= token == '"'
            starts.append(len(text))
            text += token
            ends.append(len(text))
        links += [(starts[s], ends[e - 1], entity) for s, e, entity in spans]
    return text, links


def _turtle_string(text: str) -> str:
    """A Turtle short string literal (ECHAR escapes; other characters as UTF-8)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return '"' + escaped.replace("\t", "\\t") + '"'


def _nif(documents: Sequence[tuple[str, list[tuple[int, int, Entity]]]]) -> str:
    """The NIF Turtle of (text, in-KB links) documents, contexts and phrases in document and text order."""
    integer = '"{}"^^xsd:nonNegativeInteger'
    lines = ["@prefix nif: <http://persistence.uni-leipzig.org/nlp2rdf/ontologies/nif-core#> .",
             "@prefix itsrdf: <http://www.w3.org/2005/11/its/rdf#> .",
             "@prefix xsd: <http://www.w3.org/2001/XMLSchema#> .", ""]
    for i, (text, links) in enumerate(documents):
        base = NIF_DOCUMENT_URI.format(i + 1)
        context = f"<{base}#char=0,{len(text)}>"
        lines += [context, "        a nif:String , nif:Context , nif:RFC5147String ;",
                  f"        nif:beginIndex {integer.format(0)} ;",
                  f"        nif:endIndex {integer.format(len(text))} ;",
                  f"        nif:isString {_turtle_string(text)} .", ""]
        for start, end, entity in links:
            lines += [f"<{base}#char={start},{end}>", "        a nif:String , nif:RFC5147String , nif:Phrase ;",
                      f"        nif:anchorOf {_turtle_string(text[start:end])} ;",
                      f"        nif:beginIndex {integer.format(start)} ;",
                      f"        nif:endIndex {integer.format(end)} ;",
                      f"        nif:referenceContext {context} ;",
                      f"        itsrdf:taIdentRef <{wikipedia_url(entity.title)}> .", ""]
    return "\n".join(lines)


def _nif_documents(rng: random.Random, world: World) -> list[tuple[str, list[tuple[int, int, Entity]]]]:
    """Short out-of-domain documents: a story's opening and up to two body sentences, no headline, dateline or
    topic word, in plain text, some with quoted speech (`NIF_QUOTE_SHARE`); only in-KB mentions are annotated
    (GERBIL's InKB setting). A document whose opening first names what an earlier one's does is drawn again,
    so that twenty documents are about twenty things."""
    out, subjects = [], []
    stories = _stories(rng, NIF_DOCUMENTS)
    while stories:
        story = STORIES[stories[-1]]
        writer = _Writer(rng, world, _cast(rng, world, stories[-1]))
        writer.sentence(rng.choice([t for t in story.openings if writer.usable(t)]))
        subject = writer.mentions[0][0][2]
        if subject in subjects:
            continue
        subjects.append(subject)
        stories.pop()
        body = [t for t in story.body if writer.usable(t)]
        templates = rng.sample(body, rng.randint(0, 2))
        quotes = [t for t in body if '"' in t and t not in templates]
        if rng.random() < NIF_QUOTE_SHARE and quotes:
            templates.append(rng.choice(quotes))
        for template in templates:
            writer.sentence(template)
        text, links = _detokenize(writer.sentences, writer.mentions)
        out.append((text, [link for link in links if link[2].title is not None]))
    return out


# ------------------------------------------------------------------------------------------------- writing

@dataclasses.dataclass
class DemoEntqa:
    """The generated corpus: the world, the AIDA documents by split and the NIF documents."""

    world: World
    documents: dict[str, list[Document]]
    nif: list[tuple[str, list[tuple[int, int, Entity]]]]


def build_corpus(seed: str = SEED) -> DemoEntqa:
    """The world, then each split's documents and the NIF set, each from its own seeded generator."""
    world = _world(random.Random(f"{seed}/world"))
    documents, number = {}, 1
    for split, size in SPLIT_SIZES.items():
        rng = random.Random(f"{seed}/{split}")
        tag = "" if split == "train" else split
        documents[split] = []
        for story in _stories(rng, size):
            documents[split].append(_document(rng, world, story, f"{number}{tag} {STORIES[story].topic}"))
            number += 1
    return DemoEntqa(world, documents, _nif_documents(random.Random(f"{seed}/nif"), world))


def _yago_name(title: str) -> str:
    """A title as a YAGO2 entity name: underscores for spaces, characters outside ASCII as `\\uXXXX`."""
    return "".join(c if c.isascii() else f"\\u{ord(c):04x}" for c in title.replace(" ", "_"))


def _aida_lines(doc: Document) -> list[str]:
    """`doc` in the AIDA-YAGO2 TSV layout: its -DOCSTART- line, then a line per token, a blank one per sentence."""
    lines = [f"-DOCSTART- ({doc.id})"]
    for tokens, spans in zip(doc.sentences, doc.mentions):
        columns = [[t] for t in tokens]
        for start, end, entity in spans:
            surface = " ".join(tokens[start:end])
            link = ([_yago_name(entity.title), wikipedia_url(entity.title), entity.wikipedia_id]
                    if entity.title is not None else [NME])
            for i in range(start, end):
                columns[i] += ["B" if i == start else "I", surface, *link]
        lines += ["\t".join(c) for c in columns] + [""]
    return lines


def _readme(corpus: DemoEntqa, seed: str) -> str:
    """The folder's README: what it is, its sizes (counted, so they cannot go stale), the command and the seed."""
    rows = []
    for split, docs in corpus.documents.items():
        spans = [s for d in docs for sentence in d.mentions for s in sentence]
        nme = sum(e.title is None for _, _, e in spans)
        tokens = sum(len(t) for d in docs for t in d.sentences)
        rows.append(f"| {split_file(split)} | {len(docs)} | {tokens} | {len(spans) - nme} | {nme} |")
    kinds = collections.Counter(e.attrs.get("role", e.kind) for e in corpus.world.entities)
    nif_links = sum(len(links) for _, links in corpus.nif)
    return "\n".join([
        "# EntQA demo corpus (generated, fictional)", "",
        "A small fictional world for end-to-end entity linking as in EntQA (dissertation chapter 6): a KB in KILT's",
        "knowledge-source layout, AIDA-CoNLL-style news documents (AIDA-YAGO2 TSV) and a GERBIL NIF test set. Names",
        "are invented and deliberately ambiguous (a city, a band, a river, a football club and a company can all be",
        "called the same; a country's name also names its national teams in sports news); the first token of every",
        "AIDA document is its topic word. Nothing in it describes real people, places or events.", "",
        f"- `{KB_FILE}`: {len(corpus.world.entities)} entities ("
        + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) + ")",
        f"- `{NIF_FILE}`: {len(corpus.nif)} out-of-domain documents with {nif_links} in-KB mentions",
        f"- `{TOKENIZER_DIR}/`: a lower-cased BERT WordPiece tokenizer over every word of the KB and the documents, "
        "with EntQA's markers `[unused1]` and `[unused2]`", "",
        "| file | documents | tokens | in-KB mentions | --NME-- mentions |", "| --- | --- | --- | --- | --- |",
        *rows, "",
        "Generated by `python -m kipjax.data.demo_entqa --out DIR`, which reproduces this folder byte for byte,",
        f"from the seed `{seed}`; the module docstring of `kipjax/data/demo_entqa.py` says how the world and",
        "the documents are made.", ""])


def write_corpus(out_dir: Path, seed: str = SEED) -> None:
    """`kb.jsonl`, the three AIDA splits, `nif_test.ttl`, `README.md` and `tokenizer/` in `out_dir`."""
    corpus = build_corpus(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / KB_FILE).open("w", encoding="utf-8") as f:
        for e in sorted(corpus.world.entities, key=lambda x: int(x.wikipedia_id)):
            f.write(json.dumps({"wikipedia_id": e.wikipedia_id, "wikipedia_title": e.title, "text": e.paragraphs},
                               ensure_ascii=False) + "\n")
    for split, docs in corpus.documents.items():
        lines = [line for d in docs for line in _aida_lines(d)]
        (out_dir / split_file(split)).write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out_dir / NIF_FILE).write_text(_nif(corpus.nif), encoding="utf-8")
    (out_dir / README_FILE).write_text(_readme(corpus, seed), encoding="utf-8")
    write_tokenizer(corpus, out_dir / TOKENIZER_DIR)


def write_tokenizer(corpus: DemoEntqa, out_dir: Path) -> None:
    """A lower-cased BERT WordPiece tokenizer with every word of the KB and the documents as one piece, and
    EntQA's reserved markers `[unused1]` / `[unused2]` right after BERT's special tokens (as in BERT's vocab),
    for the tiny encoders the demo trains from scratch."""
    texts = [text for e in corpus.world.entities for text in (e.title, *e.paragraphs)]
    texts += [" ".join(tokens) for docs in corpus.documents.values() for d in docs for tokens in d.sentences]
    texts += [text for text, _ in corpus.nif]
    vocab = word_vocabulary(texts)
    head = len(SPECIAL_TOKENS)
    save_wordpiece_tokenizer([*vocab[:head], *ENTQA_MARKERS, *vocab[head:]], out_dir)


@gin.configurable
def demo_entqa_path(name: str = gin.REQUIRED) -> str:
    """A file of the bundled corpus, e.g. 'kb.jsonl', 'aida_testa.tsv', 'nif_test.ttl' or 'tokenizer' (for gin
    configs)."""
    return bundled_file(DEMO_ENTQA_DIR, name)


def main(argv: Sequence[str] | None = None) -> None:
    regenerate_main(argv, __doc__.split("\n\n")[0], write_corpus, SPLIT_SIZES)


if __name__ == "__main__":
    main()
