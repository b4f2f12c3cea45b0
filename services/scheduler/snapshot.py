"""The experiment state's JSON, assembled from entries serialised once.

The scheduler saves an experiment's stored :class:`ExperimentState` after every group of results
(compare-and-set on one KV entry). Since results are sealed into segments of their own once they
grow (``ExperimentRun.seal``), that state is small, but it is still saved hundreds of times per
second in a fast experiment. Here each entry of the collections that grow (``issued``,
``results``, ``sealed``, ``warm_trials``) is serialised once, by the model's own types, and the
document is joined from the cached pieces plus the few small fields serialised afresh. The bytes
are exactly ``state.model_dump_json()`` (``tests/scheduler/test_snapshot.py``), so every reader
still parses the same document with ``ExperimentState.model_validate_json``.

An entry is re-serialised when its object is replaced (the engine stores a new record or params
dict for every change, never mutating one in place: an entry changed in place would keep its old
JSON); an entry is recognised by identity, which costs one comparison per entry and save instead
of a serialisation.
"""

from __future__ import annotations

import operator
from typing import Any

from pydantic import TypeAdapter

from tweakline.proto.messages import ExperimentState

# The fields whose entries are cached; each one a dict or list that grows with the experiment.
_GROWING = ("issued", "results", "sealed", "warm_trials")
_LISTS = frozenset({"sealed", "warm_trials"})


def _adapter(name: str) -> TypeAdapter[Any]:
    # The field's own annotation and the model's config: an entry serialises as inside the model.
    return TypeAdapter(ExperimentState.model_fields[name].annotation, config=ExperimentState.model_config)


def _groups() -> list[str | frozenset[str]]:
    """The model's fields in order: a growing field by name, the runs of other fields between them as sets."""
    groups: list[str | frozenset[str]] = []
    run: list[str] = []
    for name in ExperimentState.model_fields:
        if name in _GROWING:
            if run:
                groups.append(frozenset(run))
                run = []
            groups.append(name)
        else:
            run.append(name)
    if run:
        groups.append(frozenset(run))
    return groups


class StateJson:
    """Serialises one experiment's state, reusing the JSON of every entry that did not change.

    One instance per experiment (it lives with the engine's :class:`ExperimentRun`); not
    thread-safe (the experiment's lock serialises its saves).
    """

    _groups = _groups()
    _adapters = {name: _adapter(name) for name in _GROWING}

    def __init__(self) -> None:
        # field -> key (number or list index) -> (the entry's object, its JSON as in the field)
        self._cache: dict[str, dict[Any, tuple[Any, bytes]]] = {name: {} for name in _GROWING}
        # field -> (the entries' JSON joined, their keys and their objects at the last save)
        self._joined: dict[str, tuple[bytes, list[Any], list[Any]]] = {name: (b"", [], []) for name in _GROWING}

    def dump(self, state: ExperimentState) -> bytes:
        """``state.model_dump_json().encode()``, without re-serialising unchanged entries."""
        serializer = ExperimentState.__pydantic_serializer__
        parts: list[bytes] = [b"{"]
        for group in self._groups:
            if isinstance(group, str):
                value = getattr(state, group)
                opening, closing = (b"{", b"}") if isinstance(value, dict) else (b"[", b"]")
                piece = [b'"%s":%s' % (group.encode(), opening), self._collection(group, value), closing]
            else:
                inner = serializer.to_json(state, include=set(group))[1:-1]  # b'{...}' without its braces
                piece = [inner] if inner else []
            if piece:
                parts.extend(([b","] if len(parts) > 1 else []) + piece)
        parts.append(b"}")
        return b"".join(parts)  # one copy of the document

    def size(self, name: str) -> int:
        """The bytes of field ``name``'s entries at the last dump (separators included, brackets not)."""
        return len(self._joined[name][0])

    def _collection(self, name: str, value: dict[Any, Any] | list[Any]) -> bytes:
        is_dict = isinstance(value, dict)
        keys = list(value) if is_dict else None
        entries = list(value.values()) if is_dict else list(value)
        body, done_keys, done_entries = self._joined[name]
        count = len(done_entries)
        # The usual save: the entries of the last save unchanged and in place (compared in C: list
        # equality of the keys, identity of the entries), new ones appended after them.
        if (
            count <= len(entries)
            and (keys is None or keys[:count] == done_keys)
            and all(map(operator.is_, entries, done_entries))
        ):
            fresh = [self._piece(name, keys[i] if keys is not None else i, entries[i]) for i in range(count, len(entries))]
            if fresh:
                body = b",".join([body, *fresh]) if body else b",".join(fresh)
        else:  # an entry replaced or removed: join every entry again (unchanged ones from the cache)
            live = keys if keys is not None else range(len(entries))
            body = b",".join(self._piece(name, key, entry) for key, entry in zip(live, entries))
            for stale in set(self._cache[name]) - set(live):
                del self._cache[name][stale]
        self._joined[name] = (body, keys or [], entries)
        return body

    def _piece(self, name: str, key: Any, entry: Any) -> bytes:
        """One entry's JSON as it appears in its collection (``"7":{...}`` in a dict, ``{...}`` in a list)."""
        cache = self._cache[name]
        cached = cache.get(key)
        if cached is None or cached[0] is not entry:
            # The entry alone in its collection, serialised by the field's type: b'{"7":{...}}' or b'[{...}]'.
            alone = [entry] if name in _LISTS else {key: entry}
            cache[key] = cached = (entry, self._adapters[name].dump_json(alone)[1:-1])
        return cached[1]
