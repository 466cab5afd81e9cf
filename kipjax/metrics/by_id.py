"""Pairing gold examples with predictions by id, as KILT's evaluation validates them: ids unique on each side,
every gold id predicted (an error naming the first one missing), predictions of unknown ids dropped with a
warning. Items are anything with a normalised `id` and a `where` ("path:line") for messages; `shown` gives the
id as the message quotes it (the file's raw value, or the normalised one)."""
from __future__ import annotations

import warnings
from typing import Any, Callable, Iterable, Mapping, Protocol, TypeVar


class Located(Protocol):
    id: str
    where: str


G = TypeVar("G", bound=Located)
P = TypeVar("P", bound=Located)


def _normalised_id(item: Located) -> str:
    return item.id


def unique_by_id(items: Iterable[G], role: str, shown: Callable[[Any], Any] = _normalised_id) -> dict[str, G]:
    """id -> item, in order; a repeated id is a ValueError naming both places."""
    by_id: dict[str, G] = {}
    for item in items:
        if item.id in by_id:
            raise ValueError(f"{item.where}: duplicate {role} id {shown(item)!r} (first at {by_id[item.id].where})")
        by_id[item.id] = item
    return by_id


def pair_by_id(gold_by_id: Mapping[str, G], predicted_by_id: Mapping[str, P], role: str, roles: str, source: str,
               shown: Callable[[Any], Any] = _normalised_id, ignored_note: str = "") -> list[tuple[G, P]]:
    """(gold, prediction) in gold order. `role` / `roles` name a prediction in messages ("guess" / "guess(es)"),
    `source` where they come from; `ignored_note` ends the warning about unknown ids."""
    missing = [gold for key, gold in gold_by_id.items() if key not in predicted_by_id]
    if missing:
        raise ValueError(f"{missing[0].where}: no {role} for gold id {shown(missing[0])!r} in {source} "
                         f"({len(missing)} of {len(gold_by_id)} gold ids have none)")
    extra = [item for key, item in predicted_by_id.items() if key not in gold_by_id]
    if extra:
        warnings.warn(f"{extra[0].where}: {role} id {shown(extra[0])!r} is not a gold id; {len(extra)} such "
                      f"{roles} are ignored{ignored_note}")
    return [(gold, predicted_by_id[key]) for key, gold in gold_by_id.items()]
