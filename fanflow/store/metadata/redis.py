"""The Redis metadata store: ``metadata="redis://host:port/db"``, for history shared by many clients.

Key layout (prefix ``ffmeta:``; use a separate db number to keep it apart):

- ``runs``: sorted set of run ids scored by submit time (retention walks it);
- ``sig:<signature>``: the same, for the runs of one DAG;
- ``run:<run_id>``: hash ``doc`` (run JSON), ``trace`` (the run's trace,
  :mod:`fanflow.store.metadata.trace`) and ``functions`` (JSON list of the
  function identities its tasks call);
- ``fn:<identity>``: sorted set of the runs that called a function, scored by
  submit time, so "every run of f" is one ``ZRANGE``; ``traced`` indexes
  these keys' identities;
- written by older versions and still read until retention removes them:
  ``run:<run_id>`` fields ``tasks``, ``workers``, ``events`` (zlib-compressed
  JSON) and ``exec:<identity>|<memory_mb>`` hashes ``<run_id>:<task>`` -> task
  JSON, indexed by ``functions``;
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
        trace: bytes,
        functions: Iterable[str],
        summaries: Mapping[SummaryKey, Summary],
        keep_runs: int | None = None,
    ) -> None:
        run_id = run["run_id"]
        if self._do(self._r.exists, PREFIX + f"run:{run_id}"):
            self._delete_runs([run_id])
        names = sorted(set(functions))
        fields = {"doc": json.dumps(run), "trace": trace, "functions": json.dumps(names)}
        parts = sorted(summaries.items())
        summary_keys = [PREFIX + "summary:" + _fn_key(*k) for k, _ in parts]
        self._do(self._transact, run, fields, names, parts, summary_keys)
        self._saves += 1
        if keep_runs is not None and self._saves >= gc_every(keep_runs):
            self._saves = 0
            self.gc(keep_runs)

    def _transact(
        self,
        run: Mapping[str, Any],
        fields: dict[str, Any],
        functions: list[str],
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
                    for identity in functions:
                        pipe.zadd(PREFIX + f"fn:{identity}", {run_id: score})
                    if functions:
                        pipe.sadd(PREFIX + "traced", *functions)
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
                pipe.hmget(PREFIX + f"run:{run_id}", "doc", "functions", "tasks")
            found = pipe.execute()
        with self._r.pipeline() as pipe:
            for run_id, (doc, functions, tasks) in zip(run_ids, found, strict=True):
                pipe.delete(PREFIX + f"run:{run_id}")
                pipe.zrem(PREFIX + "runs", run_id)
                if doc is not None:
                    pipe.zrem(PREFIX + f"sig:{json.loads(doc)['signature']}", run_id)
                for identity in json.loads(functions) if functions is not None else ():
                    pipe.zrem(PREFIX + f"fn:{identity}", run_id)
                for t in _unpack(tasks) if tasks is not None else ():  # a run saved before traces
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
        doc, trace, tasks, workers, events = self._do(
            self._r.hmget, PREFIX + f"run:{run_id}", "doc", "trace", "tasks", "workers", "events"
        )
        if doc is None:
            raise RunNotFoundError(
                f"run {run_id!r} is not in the metadata store {mask_url(self.url)} "
                "(see `fanflow runs list`; old runs are removed by retention)"
            )
        if trace is not None:
            return StoredRun(json.loads(doc), trace)
        return StoredRun(json.loads(doc), tasks=_unpack(tasks), workers=_unpack(workers), events=_unpack(events))

    def task_runs(self, identities: Iterable[str] | None = None) -> list[StoredRun]:
        wanted = None if identities is None else set(identities)
        traced = [n.decode() for n in self._do(self._r.smembers, PREFIX + "traced")]
        names = sorted(n for n in traced if wanted is None or n in wanted)
        with self._r.pipeline(transaction=False) as pipe:
            for identity in names:
                pipe.zrange(PREFIX + f"fn:{identity}", 0, -1)
            ids = sorted({r.decode() for found in self._do(pipe.execute) for r in found})
        with self._r.pipeline(transaction=False) as pipe:
            for run_id in ids:
                pipe.hmget(PREFIX + f"run:{run_id}", "doc", "trace")
            rows = self._do(pipe.execute)
        runs = [StoredRun(json.loads(doc), trace) for doc, trace in rows if doc is not None and trace is not None]
        runs.extend(self._older_task_runs(wanted))
        runs.sort(key=lambda r: (float(r.run.get("submitted_at", 0.0)), str(r.run.get("run_id"))))
        return runs

    def task_run_ids(self, identities: Iterable[str] | None = None) -> list[str]:
        wanted = None if identities is None else set(identities)
        traced = [n.decode() for n in self._do(self._r.smembers, PREFIX + "traced")]
        older = [n.decode() for n in self._do(self._r.smembers, PREFIX + "functions")]
        names = sorted(n for n in traced if wanted is None or n in wanted)
        keys = [n for n in older if wanted is None or _split_fn_key(n[len(PREFIX + "exec:") :])[0] in wanted]
        with self._r.pipeline(transaction=False) as pipe:
            for identity in names:
                pipe.zrange(PREFIX + f"fn:{identity}", 0, -1, withscores=True)
            for key in keys:  # runs saved before traces: their task documents' fields are <run_id>:<task>
                pipe.hkeys(key)
            found = self._do(pipe.execute)
        scored = {r.decode(): score for pairs in found[: len(names)] for r, score in pairs}
        legacy = sorted({f.decode().rpartition(":")[0] for fields in found[len(names) :] for f in fields} - set(scored))
        if legacy:
            with self._r.pipeline(transaction=False) as pipe:
                for run_id in legacy:
                    pipe.zscore(PREFIX + "runs", run_id)
                scores = self._do(pipe.execute)
            scored.update((r, s) for r, s in zip(legacy, scores, strict=True) if s is not None)
        return sorted(scored, key=lambda r: (scored[r], r), reverse=True)

    def _older_task_runs(self, wanted: set[str] | None) -> list[StoredRun]:
        """Runs saved before traces, with the task documents of the ``wanted`` functions."""
        names = [n.decode() for n in self._do(self._r.smembers, PREFIX + "functions")]
        keys = [n for n in names if wanted is None or _split_fn_key(n[len(PREFIX + "exec:") :])[0] in wanted]
        if not keys:
            return []
        with self._r.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hvals(key)
            found = self._do(pipe.execute)
        by_run: dict[str, list[dict[str, Any]]] = {}
        for values in found:
            for v in values:
                doc = json.loads(v)
                by_run.setdefault(str(doc["run_id"]), []).append(doc)
        with self._r.pipeline(transaction=False) as pipe:
            for run_id in by_run:
                pipe.hget(PREFIX + f"run:{run_id}", "doc")
            docs = self._do(pipe.execute)
        return [
            StoredRun(json.loads(doc), tasks=sorted(tasks, key=lambda t: t["task"]))
            for (run_id, tasks), doc in zip(by_run.items(), docs, strict=True)
            if doc is not None
        ]

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
