"""The Redis metadata store: ``metadata="redis://host:port/db"``, for history shared by many clients.

Key layout (prefix ``ffmeta:``; use a separate db number to keep it apart):

- ``runs``: sorted set of run ids scored by submit time (retention walks it);
- ``sig:<signature>``: the same, for the runs of one DAG;
- ``run:<run_id>``: hash ``doc`` (run JSON), ``tasks``, ``workers`` and ``events``
  (zlib-compressed JSON, read whole);
- ``exec:<identity>|<memory_mb>``: hash ``<run_id>:<task>`` -> task JSON, so "every
  execution of f at m MB" is one ``HGETALL``; ``functions`` indexes these keys;
- ``summary:<identity>|<memory_mb>``: hash of the :class:`Summary` fields;
  ``summaries`` indexes them;
- ``started:<run_id>``: the run's started document (JSON, expiring with the
  run's key TTL); ``started`` is a sorted set of those not known to be saved,
  pruned as they are listed.

A save is one optimistic transaction: ``WATCH`` the summaries it merges into,
read them, merge in Python (the same code as every store), then ``MULTI``/``EXEC``
every write; a concurrent save of the same function retries. One merge
implementation means the two stores cannot drift apart.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis

from fanflow.config import mask_url
from fanflow.store.metadata.base import (
    MetadataError,
    RunNotFoundError,
    StoredRun,
    Summary,
    SummaryKey,
    gc_every,
)

PREFIX = "ffmeta:"
_RETRIES = 20


def _pack(docs: Any) -> bytes:
    return zlib.compress(json.dumps(docs, separators=(",", ":")).encode(), 6)


def _unpack(blob: bytes) -> Any:
    return json.loads(zlib.decompress(blob))


def _fn_key(identity: str, memory_mb: int) -> str:
    return f"{identity}|{memory_mb}"


def _split_fn_key(name: str) -> SummaryKey:
    identity, _, memory = name.rpartition("|")
    return identity, int(memory)


class RedisMetadataStore:
    """A :class:`fanflow.store.metadata.MetadataStore` in a Redis database (plain redis-py)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._r = redis.Redis.from_url(url)
        self._saves = 0  # saves since the last retention pass in this process
        self._do(self._r.ping)

    def _do(self, call: Any, *args: Any) -> Any:
        try:
            return call(*args)
        except redis.RedisError as exc:
            raise MetadataError(
                f"metadata store {mask_url(self.url)} failed: {exc}; check that Redis is running there"
            ) from exc

    # -- writing ---------------------------------------------------------------------
    def save_run(
        self,
        run: Mapping[str, Any],
        tasks: Sequence[Mapping[str, Any]],
        workers: Sequence[Mapping[str, Any]],
        events: Sequence[Mapping[str, Any]],
        summaries: Mapping[SummaryKey, Summary],
        keep_runs: int | None = None,
    ) -> None:
        run_id = run["run_id"]
        if self._do(self._r.exists, PREFIX + f"run:{run_id}"):
            self._delete_runs([run_id])
        fields = {
            "doc": json.dumps(run),
            "tasks": _pack(list(tasks)),
            "workers": _pack(list(workers)),
            "events": _pack(list(events)),
        }
        execs: dict[str, dict[str, str]] = {}
        for t in tasks:
            key = PREFIX + "exec:" + _fn_key(t["identity"], t["memory_mb"])
            execs.setdefault(key, {})[f"{run_id}:{t['task']}"] = json.dumps(t)
        parts = sorted(summaries.items())
        summary_keys = [PREFIX + "summary:" + _fn_key(*k) for k, _ in parts]
        self._do(self._transact, run, fields, execs, parts, summary_keys)
        self._saves += 1
        if keep_runs is not None and self._saves >= gc_every(keep_runs):
            self._saves = 0
            self.gc(keep_runs)

    def _transact(
        self,
        run: Mapping[str, Any],
        fields: dict[str, Any],
        execs: dict[str, dict[str, str]],
        parts: list[tuple[SummaryKey, Summary]],
        summary_keys: list[str],
    ) -> None:
        run_id, score = run["run_id"], float(run["submitted_at"])
        for _ in range(_RETRIES):
            with self._r.pipeline() as pipe:
                try:
                    if summary_keys:
                        pipe.watch(*summary_keys)
                    current = [pipe.hgetall(k) for k in summary_keys]
                    pipe.multi()
                    pipe.hset(PREFIX + f"run:{run_id}", mapping=fields)
                    pipe.zadd(PREFIX + "runs", {run_id: score})
                    pipe.zadd(PREFIX + f"sig:{run['signature']}", {run_id: score})
                    for key, mapping in execs.items():
                        pipe.hset(key, mapping=mapping)
                    if execs:
                        pipe.sadd(PREFIX + "functions", *execs)
                    for key, ((identity, memory_mb), part), stored in zip(summary_keys, parts, current, strict=True):
                        merged = Summary.from_dict({k.decode(): v for k, v in stored.items()}).merge(part)
                        pipe.hset(key, mapping={k: repr(v) for k, v in merged.to_dict().items()})
                        pipe.sadd(PREFIX + "summaries", _fn_key(identity, memory_mb))
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue
        raise MetadataError(
            f"could not save run {run_id}: its summaries kept changing under {_RETRIES} concurrent saves; retry"
        )

    def _delete_runs(self, run_ids: Sequence[str]) -> None:
        if not run_ids:
            return
        with self._r.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                pipe.hmget(PREFIX + f"run:{run_id}", "doc", "tasks")
            found = pipe.execute()
        with self._r.pipeline() as pipe:
            for run_id, (doc, tasks) in zip(run_ids, found, strict=True):
                pipe.delete(PREFIX + f"run:{run_id}")
                pipe.zrem(PREFIX + "runs", run_id)
                if doc is not None:
                    pipe.zrem(PREFIX + f"sig:{json.loads(doc)['signature']}", run_id)
                for t in _unpack(tasks) if tasks is not None else ():
                    pipe.hdel(PREFIX + "exec:" + _fn_key(t["identity"], t["memory_mb"]), f"{run_id}:{t['task']}")
            pipe.execute()

    def gc(self, keep_runs: int) -> list[str]:
        doomed = [r.decode() for r in self._do(self._r.zrange, PREFIX + "runs", 0, -(keep_runs + 1))]
        self._do(self._delete_runs, doomed)
        if doomed:
            self._do(self._r.delete, *(PREFIX + f"started:{r}" for r in doomed))
        return doomed

    def save_started(self, doc: Mapping[str, Any], ttl_s: int) -> None:
        run_id = doc["run_id"]
        with self._r.pipeline() as pipe:
            pipe.set(PREFIX + f"started:{run_id}", json.dumps(doc, separators=(",", ":")), ex=ttl_s)
            pipe.zadd(PREFIX + "started", {run_id: float(doc["submitted_at"])})
            self._do(pipe.execute)

    def started_runs(self, limit: int | None = None) -> list[dict[str, Any]]:
        ids = [r.decode() for r in self._do(self._r.zrevrange, PREFIX + "started", 0, -1)]
        if not ids:
            return []
        with self._r.pipeline(transaction=False) as pipe:
            for run_id in ids:
                pipe.get(PREFIX + f"started:{run_id}")
                pipe.hexists(PREFIX + f"run:{run_id}", "doc")
            found = self._do(pipe.execute)
        docs, gone = [], []
        for run_id, doc, saved in zip(ids, found[::2], found[1::2], strict=True):
            if doc is None or saved:
                gone.append(run_id)
            else:
                docs.append(json.loads(doc))
        if gone:
            self._do(self._r.zrem, PREFIX + "started", *gone)
        return docs if limit is None else docs[:limit]

    def load_started(self, run_id: str) -> dict[str, Any] | None:
        doc = self._do(self._r.get, PREFIX + f"started:{run_id}")
        return None if doc is None else json.loads(doc)

    # -- reading ---------------------------------------------------------------------
    def runs(self, signature: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        index = PREFIX + (f"sig:{signature}" if signature else "runs")
        ids = self._do(self._r.zrevrange, index, 0, -1 if limit is None else limit - 1)
        if not ids:
            return []
        with self._r.pipeline(transaction=False) as pipe:
            for run_id in ids:
                pipe.hget(PREFIX + f"run:{run_id.decode()}", "doc")
            docs = self._do(pipe.execute)
        return [json.loads(d) for d in docs if d is not None]

    def load_run(self, run_id: str) -> StoredRun:
        doc, tasks, workers, events = self._do(
            self._r.hmget, PREFIX + f"run:{run_id}", "doc", "tasks", "workers", "events"
        )
        if doc is None:
            raise RunNotFoundError(
                f"run {run_id!r} is not in the metadata store {mask_url(self.url)} "
                "(see `fanflow runs list`; old runs are removed by retention)"
            )
        return StoredRun(json.loads(doc), _unpack(tasks), _unpack(workers), _unpack(events))

    def task_history(
        self, identities: Iterable[str] | None = None, memory_mb: int | None = None
    ) -> list[dict[str, Any]]:
        names = [n.decode() for n in self._do(self._r.smembers, PREFIX + "functions")]
        wanted = None if identities is None else set(identities)
        keys = [
            n
            for n in names
            if (wanted is None or _split_fn_key(n[len(PREFIX + "exec:") :])[0] in wanted)
            and (memory_mb is None or _split_fn_key(n[len(PREFIX + "exec:") :])[1] == memory_mb)
        ]
        if not keys:
            return []
        with self._r.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hvals(key)
            found = self._do(pipe.execute)
        docs = [json.loads(v) for values in found for v in values]
        docs.sort(key=lambda t: (t.get("started_at") or 0.0, t["task"]))
        return docs

    def summaries(self, identities: Iterable[str] | None = None) -> dict[SummaryKey, Summary]:
        names = sorted(n.decode() for n in self._do(self._r.smembers, PREFIX + "summaries"))
        wanted = None if identities is None else set(identities)
        keys = [_split_fn_key(n) for n in names]
        keys = [k for k in keys if wanted is None or k[0] in wanted]
        if not keys:
            return {}
        with self._r.pipeline(transaction=False) as pipe:
            for k in keys:
                pipe.hgetall(PREFIX + "summary:" + _fn_key(*k))
            found = self._do(pipe.execute)
        return {
            k: Summary.from_dict({f.decode(): v for f, v in stored.items()})
            for k, stored in zip(keys, found, strict=True)
            if stored
        }

    def close(self) -> None:
        self._r.close()
