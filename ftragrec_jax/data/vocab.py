"""Token <-> id maps saved next to every model, so a model is usable without its dataset."""

from __future__ import annotations

import dataclasses
import json
import os

from ftragrec_jax.atomic import write_json_atomic
from ftragrec_jax.errors import DataError, short_reason

PAD = "[PAD]"
FORMAT = "ftragrec-jax/vocab/v1"


@dataclasses.dataclass(frozen=True)
class Vocab:
    item_tokens: tuple[str, ...]  # index = item id; item_tokens[0] is the padding token
    user_tokens: tuple[str, ...]  # index = user id; user_tokens[0] is the padding token

    def __post_init__(self):
        for field in ("item_tokens", "user_tokens"):
            toks = getattr(self, field)
            if not toks or toks[0] != PAD:
                raise DataError(f"vocab: {field}[0] must be {PAD!r}")

    @property
    def n_items(self) -> int:
        """Rows of the item table, padding included (RecBole's n_items)."""
        return len(self.item_tokens)

    @property
    def n_users(self) -> int:
        return len(self.user_tokens)

    def item_ids(self, tokens) -> tuple[list[int], list[str]]:
        """Ids of known tokens, and the unknown tokens (reported, never silently dropped)."""
        index = self._item_index()
        ids, unknown = [], []
        for tok in tokens:
            (ids.append(index[tok]) if tok in index and index[tok] != 0 else unknown.append(tok))
        return ids, unknown

    def _item_index(self) -> dict[str, int]:
        cache = self.__dict__.get("_index")
        if cache is None:
            cache = {t: i for i, t in enumerate(self.item_tokens)}
            object.__setattr__(self, "_index", cache)
        return cache

    def to_json(self) -> dict:
        return {"format": FORMAT, "items": list(self.item_tokens), "users": list(self.user_tokens)}

    @classmethod
    def from_json(cls, obj: dict, source: str = "<vocab>") -> "Vocab":
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise DataError(f"{source}: not a vocabulary file (expected format {FORMAT!r})")
        lists = {}
        for key in ("items", "users"):
            if key not in obj:
                raise DataError(f"{source}: missing key {key!r}")
            value = obj[key]
            # ints are tolerated (hand-written files), anything else would become a surprising token
            if not isinstance(value, list) or not all(
                isinstance(t, (str, int)) and not isinstance(t, bool) for t in value
            ):
                raise DataError(f"{source}: {key!r} must be a list of token strings")
            tokens = tuple(str(t) for t in value)
            if len(set(tokens)) != len(tokens):  # two ids for one token: lookups would silently pick one
                seen = set()
                dup = next(t for t in tokens if t in seen or seen.add(t))
                raise DataError(f"{source}: {key!r} lists token {dup!r} more than once")
            lists[key] = tokens
        try:
            return cls(lists["items"], lists["users"])
        except DataError as e:
            raise DataError(f"{source}: {e}") from None

    def save(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Vocab":
        try:
            with open(path, encoding="utf-8") as f:
                obj = json.load(f)
        except (OSError, ValueError, RecursionError) as e:  # ValueError: bad JSON or bad UTF-8
            raise DataError(f"{path}: cannot read vocabulary ({type(e).__name__}: {short_reason(e)})") from None
        return cls.from_json(obj, str(path))
