"""Deterministic demo data in the exact Zeshel layout: a small fictional multiverse for zero-shot entity linking.

Six worlds (three train, one val, two test), each a set of *families* of entities sharing a name root:
"Vel Dorath" (a knight), "Dorath Keep" (a place), "Order of Dorath" (a guild), "Dorath (river)" ... A mention
names its entity by the full title, a partial name ("Dorath", "Vel"), or an alias defined in the entity's
description ("the Ember Hand"), so string matching alone leaves families ambiguous: the hard negatives.
What resolves them is systematic word overlap: the words around a mention (role, trait, home, material,
season ...) are the words that define the entity at the start of its own description.

The test worlds recombine name parts, roles and places seen in the train worlds into new entities and new
families, so a tiny BERT trained from scratch has trained embeddings for every word it must match, yet has
to read descriptions rather than memorise entities. (Measured while building it: a 2-layer, 64-wide encoder
shared by mentions and entities, max_len 32, 16 candidates with hard negatives, batch 16, lr 5e-4, goes
from 3% to about 30% top-1 recall on the test worlds in 600 steps, under 3 minutes on 2 CPU cores; with two
separate towers it stayed near chance in that budget.)

Everything is drawn from string-seeded `random.Random` instances (seeded through SHA-512, so independent of
hash randomization and platform) and the tokenizer's vocabulary is built deterministically from the text
(`kipjax.data.tokenizer.word_vocabulary`), so `python -m kipjax.data.demo --out DIR` reproduces the bundled
copy in `kipjax/data/demo_zeshel/` byte for byte.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import random
from pathlib import Path
from typing import Sequence

import gin

from kipjax.data.tokenizer import save_wordpiece_tokenizer, word_vocabulary
from kipjax.run_log import atomic_write_directory

DEMO_ZESHEL_DIR = Path(__file__).resolve().parent / "demo_zeshel"
SEED = "kipjax-demo-zeshel-v1"

# (world, split of its mentions); train worlds also feed the heldout_train_* splits.
WORLDS = (("ashen_reach", "train"), ("coral_throne", "train"), ("iron_steppe", "train"),
          ("mirror_fens", "val"), ("glass_isles", "test"), ("thorn_vale", "test"))
FAMILIES_PER_WORLD = {"train": 32, "val": 20, "test": 20}
RELATION_SENTENCES = (3, 4, 4, 5)
# Like Zeshel, not every name in a text is annotated; val and test keep a sample of their mentions.
MENTION_KEEP_FRACTION = {"train": 1.0, "val": 0.8, "test": 0.8}
UNSEEN_ENTITIES_PER_TRAIN_WORLD = 3
HELDOUT_SEEN_FRACTION = 0.03

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "r", "s", "t", "v", "z", "th", "br", "dr", "gr", "kr", "tr")
_VOWELS = ("a", "e", "i", "o", "u", "ae", "ei", "ou")
_CODAS = ("", "n", "r", "l", "th", "s", "k", "m", "nd", "rn")

ROLES = ("knight", "healer", "smith", "sage", "hunter", "merchant", "captain", "bard", "priest", "thief",
         "scribe", "herald", "archer", "sailor", "weaver", "shepherd")
PERSON_TRAITS = ("silent", "bold", "grey", "young", "old", "cunning", "gentle", "fierce", "wise", "proud",
                 "blind", "restless")
PLACE_NOUNS = ("Keep", "Harbor", "Forest", "Mine", "Tower", "Marsh", "Pass", "Vale", "Falls", "Isle", "Bridge",
               "Gate")
PLACE_TRAITS = ("ruined", "sunken", "frozen", "hidden", "bright", "ancient", "windy", "quiet")
REGIONS = ("northern hills", "southern coast", "eastern plains", "western woods", "high moors", "deep valleys")
GROUP_PATTERNS = (("Order of {}", "order"), ("House {}", "house"), ("{} Guild", "guild"), ("Clan {}", "clan"),
                  ("Circle of {}", "circle"))
GROUP_PURPOSES = ("smiths", "sailors", "mages", "hunters", "scholars", "traders", "healers", "miners", "singers",
                  "riders")
ARTIFACT_PATTERNS = (("Blade of {}", "blade"), ("Crown of {}", "crown"), ("{} Horn", "horn"),
                     ("Lantern of {}", "lantern"), ("{} Ring", "ring"), ("Shield of {}", "shield"),
                     ("Staff of {}", "staff"))
MATERIALS = ("silver", "iron", "bone", "glass", "amber", "bronze", "obsidian", "oaken")
EVENT_PATTERNS = (("Siege of {}", "siege"), ("Fall of {}", "fall"), ("Battle of {}", "battle"),
                  ("Flood of {}", "flood"), ("Feast of {}", "feast"), ("Plague of {}", "plague"))
EVENT_TRAITS = ("bloody", "long", "bitter", "sudden", "famous", "dark")
SEASONS = ("spring", "summer", "autumn", "winter")
CREATURE_PATTERNS = (("{} Wyrm", "wyrm"), ("{} Hound", "hound"), ("Serpent of {}", "serpent"),
                     ("{} Stag", "stag"), ("Raven of {}", "raven"))
CREATURE_TRAITS = ("savage", "white", "black", "sleepless", "giant", "cursed")
LANDMARK_FEATURES = ("river", "mountain", "lake", "desert", "city", "glacier")
ALIAS_ADJECTIVES = ("Ember", "Frost", "Scarlet", "Golden", "Pale", "Storm", "Ashen", "Hollow", "Dawn", "Thorn",
                    "Dusk", "Cinder")
ALIAS_NOUNS = ("Hand", "Wolf", "Star", "Shadow", "Flame", "Warden", "Oath", "Tide", "Spear", "Veil", "Song",
               "Mask")

# Family members are drawn from this bag without replacement (hence at most two people per family).
_FAMILY_KINDS = ("person", "person", "place", "group", "artifact", "event", "creature", "landmark")
_FAMILY_SIZES = (2, 3, 3, 4, 4, 5)

# Relation sentences, by the kind of the entity mentioned; {s} is the subject, {x} the mention phrase.
_RELATIONS = {
    "person": ("{s} was visited by {x} .", "Songs of {s} remember {x} .", "{s} was once served by {x} .",
               "{s} owes a debt to {x} ."),
    "place": ("{s} sent word to {x} .", "{s} was seen near {x} .", "Roads from {s} lead to {x} ."),
    "group": ("{s} has dealings with {x} .", "{s} was once aided by {x} .", "{s} is watched by {x} ."),
    "artifact": ("{s} once held {x} .", "{s} searched for {x} .", "{s} lost {x} ."),
    "event": ("{s} survived {x} .", "{s} was changed by {x} .", "{s} took part in {x} ."),
    "creature": ("{s} was troubled by {x} .", "{s} hunted {x} .", "{s} fled from {x} ."),
    "landmark": ("{s} lies near {x} .", "{s} is far from {x} .", "Maps of {s} show {x} ."),
}


@dataclasses.dataclass
class _Entity:
    """An entity while the world is built; `attrs` holds its defining words, `links` related entities."""

    document_id: str
    kind: str
    title: str
    root: str
    given: str | None
    attrs: dict[str, str]
    alias: str | None = None
    links: dict[str, "_Entity"] = dataclasses.field(default_factory=dict)
    text: str = ""


@dataclasses.dataclass
class _Mention:
    context: _Entity
    start: int
    end: int  # inclusive
    surface: str
    label: _Entity
    category: str


@gin.configurable
def bundled_demo_dir() -> str:
    """The demo dataset shipped inside the package (documents/, mentions/, tokenizer/)."""
    if not (DEMO_ZESHEL_DIR / "documents").is_dir():
        raise FileNotFoundError(f"{DEMO_ZESHEL_DIR} is missing; regenerate it with "
                                f"`python -m kipjax.data.demo --out {DEMO_ZESHEL_DIR} --force`")
    return str(DEMO_ZESHEL_DIR)


def _a(word: str) -> str:
    """The indefinite article for `word`."""
    return "an" if word[0] in "aeiou" else "a"


def _hex_id(rng: random.Random) -> str:
    return f"{rng.getrandbits(64):016X}"


def _name_pools(rng: random.Random) -> tuple[list[str], list[str]]:
    """Invented family roots (two syllables) and given names (one syllable), distinct from each other."""
    def syllable() -> str:
        return rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)

    reserved = {w.lower() for group in (ROLES, PERSON_TRAITS, PLACE_NOUNS, PLACE_TRAITS, MATERIALS, SEASONS,
                                        LANDMARK_FEATURES, ALIAS_ADJECTIVES, ALIAS_NOUNS) for w in group}
    seen: set[str] = set(reserved)
    roots: list[str] = []
    givens: list[str] = []
    while len(roots) < 90:
        name = (syllable() + rng.choice(_ONSETS[:13]) + rng.choice(_VOWELS[:5]) + rng.choice(_CODAS)).capitalize()
        if name.lower() not in seen and 5 <= len(name) <= 9:
            seen.add(name.lower())
            roots.append(name)
    while len(givens) < 50:
        name = syllable().capitalize()
        if name.lower() not in seen and len(name) >= 3:
            seen.add(name.lower())
            givens.append(name)
    return roots, givens


def _make_family(rng: random.Random, root: str, givens: Sequence[str], used_aliases: set[str]) -> list[_Entity]:
    """2-5 entities sharing `root`, each of a different kind (up to two people with different given names)."""
    kinds = rng.sample(_FAMILY_KINDS, rng.choice(_FAMILY_SIZES))
    people = rng.sample(list(givens), 2)
    family = []
    for kind in sorted(kinds, key=_FAMILY_KINDS.index):
        given = None
        if kind == "person":
            given = people.pop()
            title = f"{given} {root}"
            attrs = {"role": rng.choice(ROLES), "trait": rng.choice(PERSON_TRAITS)}
        elif kind == "place":
            noun = rng.choice(PLACE_NOUNS)
            title = f"{root} {noun}"
            attrs = {"noun": noun.lower(), "trait": rng.choice(PLACE_TRAITS), "region": rng.choice(REGIONS)}
        elif kind == "group":
            pattern, group_type = rng.choice(GROUP_PATTERNS)
            title = pattern.format(root)
            attrs = {"type": group_type, "purpose": rng.choice(GROUP_PURPOSES)}
        elif kind == "artifact":
            pattern, artifact_type = rng.choice(ARTIFACT_PATTERNS)
            title = pattern.format(root)
            attrs = {"type": artifact_type, "material": rng.choice(MATERIALS)}
        elif kind == "event":
            pattern, event_type = rng.choice(EVENT_PATTERNS)
            title = pattern.format(root)
            attrs = {"type": event_type, "trait": rng.choice(EVENT_TRAITS), "season": rng.choice(SEASONS)}
        elif kind == "creature":
            pattern, creature_type = rng.choice(CREATURE_PATTERNS)
            title = pattern.format(root)
            attrs = {"type": creature_type, "trait": rng.choice(CREATURE_TRAITS)}
        else:  # landmark: the bare root, disambiguated in the title as Zeshel's "Multiple Categories" titles are
            feature = rng.choice(LANDMARK_FEATURES)
            title = f"{root} ({feature})"
            attrs = {"feature": feature, "trait": rng.choice(PLACE_TRAITS), "region": rng.choice(REGIONS)}
        alias = None
        if rng.random() < 0.5:
            alias = f"{rng.choice(ALIAS_ADJECTIVES)} {rng.choice(ALIAS_NOUNS)}"
            alias = None if alias in used_aliases else alias
            if alias:
                used_aliases.add(alias)
        family.append(_Entity(_hex_id(rng), kind, title, root, given, attrs, alias))
    return family


def _link_entities(rng: random.Random, families: Sequence[Sequence[_Entity]]) -> None:
    """Give each entity its defining relations (home, ruler, seat ...), half the time within its family."""
    everyone = [e for family in families for e in family]
    by_kind = {k: [e for e in everyone if e.kind in k] for k in (("person",), ("place",), ("group",),
                                                                   ("place", "landmark"))}
    wanted = {"person": [("home", ("place",)), ("group", ("group",))], "place": [("ruler", ("person",))],
              "group": [("seat", ("place",))], "artifact": [("keeper", ("person",))],
              "event": [("place", ("place", "landmark"))], "creature": [("habitat", ("place", "landmark"))],
              "landmark": []}
    for family in families:
        for entity in family:
            for relation, kinds in wanted[entity.kind]:
                if relation == "group" and rng.random() < 0.4:
                    continue
                kin = [e for e in family if e.kind in kinds and e is not entity]
                pool = kin if kin and rng.random() < 0.5 else [e for e in by_kind[kinds] if e is not entity]
                if not pool:
                    raise RuntimeError(f"this seed built a world without any {' or '.join(kinds)} to serve as "
                                       f"the {relation} of {entity.title!r}; use another seed")
                entity.links[relation] = rng.choice(pool)


def _cue(rng: random.Random, e: _Entity) -> tuple[str, bool]:
    """A phrase naming some defining words of `e`, and whether it may precede the name ("the bold knight Vel")."""
    a = e.attrs
    if e.kind == "person":
        options = [(f"the {a['trait']} {a['role']}", True), (f"the {a['role']}", True),
                   (f"the {a['role']} of {e.links['home'].title}", False)]
    elif e.kind in ("place", "landmark"):
        noun = a.get("noun") or a["feature"]
        options = [(f"the {a['trait']} {noun}", True), (f"the {noun} in the {a['region']}", False)]
    elif e.kind == "group":
        options = [(f"the {a['type']} of {a['purpose']}", False), (f"the {a['type']}", True)]
    elif e.kind == "artifact":
        options = [(f"the {a['material']} {a['type']}", True),
                   (f"the {a['type']} kept by {e.links['keeper'].title}", False)]
    elif e.kind == "event":
        options = [(f"the {a['trait']} {a['type']}", True), (f"the {a['type']} of {a['season']}", False)]
    else:
        options = [(f"the {a['trait']} {a['type']}", True),
                   (f"the {a['type']} of {e.links['habitat'].title}", False)]
    return rng.choice(options)


def _surface(rng: random.Random, e: _Entity) -> tuple[str, str]:
    """How a mention names `e`, and its Zeshel category."""
    choices = [("full", 0.4), ("partial", 0.35)] + ([("alias", 0.25)] if e.alias else [])
    form = rng.choices([c for c, _ in choices], [w for _, w in choices])[0]
    if e.kind == "landmark" and form != "alias":
        return e.root, "MULTIPLE_CATEGORIES"
    if form == "full":
        return e.title, "HIGH_OVERLAP"
    if form == "alias":
        return e.alias, "LOW_OVERLAP"
    return (rng.choice([e.root, e.given]) if e.given else e.root), "AMBIGUOUS_SUBSTRING"


class _TextBuilder:
    """Accumulates whitespace tokens of one document and records the mention spans inside it."""

    def __init__(self, rng: random.Random, context: _Entity):
        self.rng, self.context = rng, context
        self.tokens: list[str] = []
        self.mentions: list[_Mention] = []

    def words(self, text: str) -> None:
        self.tokens.extend(text.split())

    def mention(self, target: _Entity) -> None:
        """Name `target`, with a cue phrase most of the time when the name alone is ambiguous."""
        surface, category = _surface(self.rng, target)
        cue_probability = 0.4 if category == "HIGH_OVERLAP" else 0.85
        cue, prefix_ok = _cue(self.rng, target) if self.rng.random() < cue_probability else (None, False)
        if cue and prefix_ok and self.rng.random() < 0.5:
            self.words(cue)
            cue = None
        start = len(self.tokens)
        self.words(surface)
        self.mentions.append(_Mention(self.context, start, len(self.tokens) - 1, surface, target, category))
        if cue:
            self.words(f", {cue}")

    def sentence(self, template: str, subject: str, target: _Entity | None = None) -> None:
        """`template` with {s} -> subject and {x} -> a mention of target ({x} always ends the sentence)."""
        before, _, after = template.format(s=subject, x="\0").partition("\0")
        before = before.strip()
        self.words(before[:1].upper() + before[1:])
        if target is not None:
            self.mention(target)
        self.words(after)


def _write_document(rng: random.Random, e: _Entity, world_entities: Sequence[_Entity]) -> list[_Mention]:
    """Definition, optional alias, then `RELATION_SENTENCES` relation sentences each naming another entity of
    the world (40% of the time one of the same family); sets `e.text` and returns its mentions."""
    b = _TextBuilder(rng, e)
    a, links = e.attrs, e.links
    short = e.given if e.kind == "person" else f"the {a.get('noun') or a.get('feature') or a['type']}"
    name = e.root if e.kind == "landmark" else e.title
    if e.kind == "person":
        b.sentence(f"{name} is {_a(a['trait'])} {a['trait']} {a['role']} from {{x}} .", "", links["home"])
        if "group" in links:
            b.sentence("{s} is sworn to {x} .", short, links["group"])
    elif e.kind == "place":
        b.sentence(f"{name} is {_a(a['trait'])} {a['trait']} {a['noun']} in the {a['region']} , "
                   "ruled by {x} .", "", links["ruler"])
    elif e.kind == "group":
        b.sentence(f"{name} is {_a(a['type'])} {a['type']} of {a['purpose']} based at {{x}} .", "",
                   links["seat"])
    elif e.kind == "artifact":
        b.sentence(f"{name} is {_a(a['material'])} {a['material']} {a['type']} kept by {{x}} .", "",
                   links["keeper"])
    elif e.kind == "event":
        b.sentence(f"{name} was {_a(a['trait'])} {a['trait']} {a['type']} in the {a['season']} at {{x}} .", "",
                   links["place"])
    elif e.kind == "creature":
        b.sentence(f"{name} is {_a(a['trait'])} {a['trait']} {a['type']} that haunts {{x}} .", "",
                   links["habitat"])
    else:
        b.words(f"{name} is {_a(a['trait'])} {a['trait']} {a['feature']} in the {a['region']} .")
    if e.alias:
        b.sentence(f"{{s}} is also called the {e.alias} .", short)
    family = [o for o in world_entities if o.root == e.root and o is not e]
    others = [o for o in world_entities if o.root != e.root]
    for _ in range(rng.choice(RELATION_SENTENCES)):
        pool = family if family and rng.random() < 0.4 else others
        target = pool.pop(rng.randrange(len(pool)))  # each entity at most once per document
        b.sentence(rng.choice(_RELATIONS[target.kind]), short, target)
    e.text = " ".join(b.tokens)
    return b.mentions


def build_demo(seed: str = SEED) -> tuple[dict[str, list[dict]], dict[str, list[dict]]]:
    """The demo dataset as JSON-ready records: (world -> document records, split -> mention records)."""
    pools_rng = random.Random(f"{seed}:names")
    roots, givens = _name_pools(pools_rng)
    documents: dict[str, list[dict]] = {}
    mentions: dict[str, list[dict]] = {s: [] for s in
                                       ("train", "heldout_train_seen", "heldout_train_unseen", "val", "test")}
    train_roots: list[str] = []
    train_givens: list[str] = []
    for world, split in WORLDS:
        rng = random.Random(f"{seed}:{world}")
        # Val and test worlds reuse only name parts the train worlds used, in new combinations.
        root_pool = roots if split == "train" else train_roots
        given_pool = givens if split == "train" else train_givens
        world_roots = rng.sample(root_pool, FAMILIES_PER_WORLD[split])
        used_aliases: set[str] = set()
        families = [_make_family(rng, root, given_pool, used_aliases) for root in world_roots]
        _link_entities(rng, families)
        entities = [e for family in families for e in family]
        if split == "train":
            train_roots = list(dict.fromkeys(train_roots + world_roots))
            train_givens = list(dict.fromkeys(train_givens + [e.given for e in entities if e.given]))
        world_mentions = [m for e in entities for m in _write_document(rng, e, entities)]
        documents[world] = [{"document_id": e.document_id, "title": e.title, "text": e.text} for e in entities]
        for m, split_name in zip(world_mentions, _assign_splits(rng, split, entities, world_mentions)):
            if split_name is None:
                continue
            mentions[split_name].append({
                "mention_id": _hex_id(rng), "context_document_id": m.context.document_id, "corpus": world,
                "start_index": m.start, "end_index": m.end, "text": m.surface,
                "label_document_id": m.label.document_id, "category": m.category})
    return documents, mentions


def _assign_splits(rng: random.Random, split: str, entities: Sequence[_Entity],
                   world_mentions: Sequence[_Mention]) -> list[str | None]:
    """Split name per mention (None: left unannotated). A train world holds out a few entities entirely
    (heldout_train_unseen) and a few mentions of entities that stay in train (heldout_train_seen)."""
    if split != "train":
        return [split if rng.random() < MENTION_KEEP_FRACTION[split] else None for _ in world_mentions]
    unseen = {id(e) for e in rng.sample(list(entities), UNSEEN_ENTITIES_PER_TRAIN_WORLD)}
    names = []
    for m in world_mentions:
        if id(m.label) in unseen:
            names.append("heldout_train_unseen")
        elif rng.random() < HELDOUT_SEEN_FRACTION:
            names.append("heldout_train_seen")
        else:
            names.append("train")
    return names


def write_demo(out_dir: str | Path, seed: str = SEED) -> None:
    """Write documents/, mentions/ and tokenizer/ into `out_dir` (which must not exist yet)."""
    out = Path(out_dir)
    documents, mentions = build_demo(seed)
    for folder, files in (("documents", documents), ("mentions", mentions)):
        (out / folder).mkdir(parents=True)
        for name, records in files.items():
            with (out / folder / f"{name}.json").open("w", encoding="utf-8", newline="\n") as f:
                f.writelines(json.dumps(r) + "\n" for r in records)
    corpus = [d["text"] for world, _ in WORLDS for d in documents[world]]
    save_wordpiece_tokenizer(word_vocabulary(corpus), out / "tokenizer")


def generate(out_dir: str | Path, force: bool = False, seed: str = SEED) -> Path:
    """Build the demo into `out_dir` atomically (`atomic_write_directory`); an existing one only with `force`."""
    return atomic_write_directory(out_dir, lambda folder: write_demo(folder, seed), force=force)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to create (Zeshel layout plus tokenizer/)")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    print(f"wrote the demo Zeshel dataset to {generate(args.out, force=args.force)}")


if __name__ == "__main__":
    main()
