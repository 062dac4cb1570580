"""The pool host: takes invocations from a Redis queue and runs them on warm worker processes.

A pool is named; its queue is the Redis list ``ff:pool:<name>:queue``. An
entry is the invocation's ``memory_mb`` (4 bytes) followed by the signed
payload, so the host routes by memory class without verifying or unpickling
anything; the worker process verifies the signature before it unpickles. One
list per pool, rather than one per memory class, keeps the queue FIFO across
classes and lets the host block on a single key it knows in advance.

Two threads make a host:

- the *popper* keeps a small inbox filled (see :data:`HOLD`): it takes
  entries in batches (one script: ``LPOP <count>`` and ``RPUSH`` onto this
  host's held list), blocking in ``BLMOVE`` only when the queue is empty, so a
  busy pool pays a fraction of a command per invocation. The rest stays in
  Redis for other hosts;
- the *dispatcher* owns the worker processes. It sends an entry to an idle
  warm worker of the same memory class, else cold-starts one (a fresh
  interpreter, placed in its cgroup), evicting an idle worker of another class
  when the pool is full; a cold worker gets its payload once it reports ready.
  Workers idle for ``idle_timeout_s`` are stopped. A worker that dies with an
  invocation in flight (e.g. killed at its memory limit) has it redelivered or
  fails that run with an error record, so the client raises instead of waiting
  forever.

The dispatcher never waits on one worker: launching a process (fork, exec,
cgroup placement), waiting for a dying or stopped one to exit, and telling a
run in Redis that it failed all run on short-lived helper threads (*chores*).
A chore hands its outcome back through the pipe end the dispatcher already
watches (a launch that fails closes the new worker's pipe) or through the
inbox (a redelivery), so the dispatcher's state stays its own.

A named pool (``fanflow worker-pool``) refreshes ``ff:pool:<name>:alive`` so
clients can tell that it runs.

**Held lists (a reliable queue).** Several hosts may serve one pool (the same
``--name`` on several machines, gateways sharing ``--pool``), and any of them
may be SIGKILLed. What a host took from the queue is never only in its memory:
taking an entry *moves* it to the host's own held list, ``{<queue>}:held:<host>``,
in the same step, and it leaves that list only when its invocation is done
with (finished, refused, failed for good: the dispatcher acknowledges it with
``LREM``) or when the host stops cleanly and pushes it back. Each host beats
every :data:`ALIVE_EVERY_S` (one script): it refreshes its own alive key
``{<queue>}:host:<host>`` (TTL :data:`HOST_TTL_S`) and its entry in the pool's
host set ``{<queue>}:hosts``, and *reaps*: a host in the set whose alive key
is gone is dead, so its held entries go back to the front of the queue and it
leaves the set, atomically. Clients of a shared pool reap too (from
``check_serving``), so a dead host's work comes back even when no other host
is left to beat, and a host started again (a new host id) reaps its old self.

Reaped entries are marked as redeliveries (:data:`protocol.REDELIVERED`): the
worker that gets one takes the invocation over (``Store.begin``) whether the
dead host had started it or not. That is safe because a host's worker
processes die with it (:func:`protocol.die_with_pool`): no first delivery is
still running. A host that was only stalled past :data:`HOST_TTL_S` finds out
at its next beat: it drops its inbox (those entries were handed back, and a
second copy of one would be refused by ``begin`` anyway); what its workers
were running at that moment may run twice (fan-in stays exactly once).

Keys of one pool share the hash tag ``{<queue>}``, which is the queue key's own
slot, so every script and ``BLMOVE`` touches one slot on a Redis Cluster too.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import math
import os
import pickle
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, Pipe, wait
from typing import Any

from redis.commands.core import Script
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, OutOfMemoryError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from fanflow.errors import PayloadRejectedError
from fanflow.platforms.invocation import run_id_of, verify
from fanflow.platforms.lost import fail_invocation
from fanflow.platforms.processes import protocol
from fanflow.platforms.processes.capacity import open_capacity
from fanflow.platforms.processes.cgroups import Cgroups
from fanflow.platforms.sizing import vcpus
from fanflow.store import keys
from fanflow.store.base import RUNNING
from fanflow.store.redis import CONNECT_TIMEOUT_S, RedisStore, translating, trying_once

log = logging.getLogger(__name__)

QUEUE_TTL_MS = 24 * 3600 * 1000
"""The queue expires this long after its last push, so an abandoned pool leaves nothing behind."""

POP_TIMEOUT_S = 0.2
"""Longest block on the queue; also how fast a host notices it should stop."""

POP_PAUSE_S = 1.0
"""How long the popper pauses after its store did not answer (it tries each command once: see
:func:`fanflow.store.redis.trying_once`), so a stopping host never waits out a retry budget."""

POPPER_JOIN_S = POP_TIMEOUT_S + CONNECT_TIMEOUT_S + 1.0
"""The longest a stopping host waits for its popper: one blocking take, or one connect nobody answers."""

LEAVE_S = CONNECT_TIMEOUT_S + 1.0
"""The longest a stopping host waits for its store to take back what it held. One try: a host that
cannot reach its store leaves its held list there, and a reaper hands it back (:data:`HOST_TTL_S`)."""

ALIVE_TTL_S = 3
ALIVE_EVERY_S = 1.0
"""A named pool's ``alive`` key lives this long and is refreshed this often, only while its
dispatcher runs, and goes when the pool stops: clients of a pool that is gone notice within
seconds (``ProcessesPlatform.check_serving``)."""
HOST_TTL_S = 4.0
"""A host's own alive key lives this long after its last beat (every :data:`ALIVE_EVERY_S`): a
host SIGKILLed with invocations in hand has them back in the queue this long after its death.
Long enough that a host slowed by a loaded machine is not taken for dead (that would run its
current invocations twice), short enough to stay well inside a client's ``POOL_GONE_S``."""
HELD_TTL_MS = QUEUE_TTL_MS
"""Held lists and the host set outlive a pool nobody reaps no longer than its queue does."""
STOP_GRACE_S = 2.0
"""How long a stopping worker may take to finish before it is killed."""

LOST_GRACE_S = 5.0
"""How long a worker whose pipe closed may take to exit before it is killed (its exit code
tells an out-of-memory kill from a crash)."""

KILL_WAIT_S = 5.0
"""How long a killed worker process may take to go (a process in uninterruptible sleep)."""

PIPE_SEND_BUFFER_BYTES = 512 * 1024
"""The send buffer the dispatcher asks for on its end of each worker's pipe (a Unix socket; the
kernel caps it at ``net.core.wmem_max``). A payload that fits in what it got goes down the pipe
from the dispatcher itself, at once, the worker being idle (its end empty); a larger one goes from
a helper thread, as the write would last as long as the worker takes to read it. The default
buffer (~200 KB) left a real-size tree's root payloads (79 KB each, the DAG inline) to helper
threads behind a 64 KB bar: a thread start and a hand-off of the GIL per root, 5.2 ms median from
dispatch to the worker's receipt (20 runs, load 5-7) against 2.5 ms written at once. 512 KB holds
any payload that carries its DAG inline (``inline_dag_max_bytes``, 256 KB by default)."""

LAUNCH_JOIN_S = 30.0
"""The longest a closing pool waits for a launch in progress (a fork and exec, normally milliseconds)."""

CHORES_JOIN_S = LOST_GRACE_S + KILL_WAIT_S + 5
"""The longest a closing pool waits for its chores: a lost worker's reap, then telling its run."""

KILLED_REDELIVERIES = 1
"""Redeliveries of an invocation whose worker was killed by a signal (e.g. out of memory), at most."""

GROW_IDLE_S = 0.02
"""How long no invocation has run before idle workers are asked to grow their heap (:meth:`PoolHost._grow_idle`):
a run's own gaps, between one invocation's end and the next one's arrival, are shorter."""

WAIT_FOR_ENDING_S = 0.1
"""How long an invocation of a new run waits for a worker of its size that is busy with a run that has
ended (its last task done, it still sends that run's events) rather than go to an idle one. That worker
is idle a few ms later (4-61 ms at load 4-6) and is the one the run's predecessor warmed: an
image_transform run (real size, 1769 MB) that went to the pool's other, idle worker instead ran at
2.9 s against 1.0 s (its first render there grew that process's heap and imported its modules)."""

CHECKED_RUNS = 1024
"""Runs the pool remembers having looked for an ending worker for; an older one would look once more."""

HOLD = 4
"""A host holds at most ``HOLD * max_workers`` entries (running or waiting). Once it holds
half of that it refills with ONE ``LPOP <count>`` (``BLPOP`` only when the queue is
empty), so a busy pool pays about ``1 / (HOLD/2 * max_workers)`` commands per invocation
and the next invocation is always at hand when a worker finishes."""

_ENTRY = struct.Struct("<I")


def queue_key(pool: str) -> str:
    return f"{keys.PREFIX}:pool:{pool}:queue"


def alive_key(pool: str) -> str:
    return f"{keys.PREFIX}:pool:{pool}:alive"


def _tag(pool: str) -> str:
    """The hash tag of a pool's host keys: the queue key itself, so they share its cluster slot."""
    return "{" + queue_key(pool) + "}"


def hosts_key(pool: str) -> str:
    """The set of host ids serving ``pool`` that may hold entries."""
    return f"{_tag(pool)}:hosts"


def held_key(pool: str, host: str) -> str:
    """The entries host ``host`` took from the queue and has not finished with."""
    return f"{_tag(pool)}:held:{host}"


def host_alive_key(pool: str, host: str) -> str:
    """Exists while host ``host`` of ``pool`` beats."""
    return f"{_tag(pool)}:host:{host}"


# KEYS: queue, held, host alive. ARGV: count, held TTL ms.
# Taking entries and holding them is one step: no entry is ever only in a host's memory. A host
# that was taken for dead takes nothing until its next beat has put it back in the host set.
_TAKE_LUA = """
if redis.call('EXISTS', KEYS[3]) == 0 then return {} end
local taken = redis.call('LPOP', KEYS[1], ARGV[1])
if not taken then return {} end
redis.call('RPUSH', KEYS[2], unpack(taken))
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return taken
"""

# Reaping, shared by the beat and by clients. KEYS: queue, hosts. ARGV: the pool's tag, queue
# TTL ms, the redelivery mark. Every key it names shares the tag, so it is one slot.
_REAP_LUA_BODY = """
local function reap()
  local n = 0
  for _, host in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    if redis.call('EXISTS', ARGV[1] .. ':host:' .. host) == 0 then
      local held = ARGV[1] .. ':held:' .. host
      local entries = redis.call('LRANGE', held, 0, -1)
      for i = #entries, 1, -1 do
        local e = entries[i]
        if string.sub(e, 5, 5) ~= ARGV[3] then e = string.sub(e, 1, 4) .. ARGV[3] .. string.sub(e, 5) end
        redis.call('LPUSH', KEYS[1], e)
      end
      redis.call('DEL', held)
      redis.call('SREM', KEYS[2], host)
      n = n + #entries
    end
  end
  if n > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
  return n
end
"""
_REAP_LUA = _REAP_LUA_BODY + "return reap()"

# KEYS: queue, hosts, host alive, held. ARGV: tag, queue TTL ms, mark, host, alive TTL ms, first.
# Returns {0 if this host had been reaped since its last beat else 1, entries reaped}.
_BEAT_LUA = (
    _REAP_LUA_BODY
    + """
local known = redis.call('SISMEMBER', KEYS[2], ARGV[4])
redis.call('SET', KEYS[3], '1', 'PX', ARGV[5])
redis.call('SADD', KEYS[2], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
if redis.call('EXISTS', KEYS[4]) == 1 then redis.call('PEXPIRE', KEYS[4], ARGV[2]) end
local ok = 1
if known == 0 and ARGV[6] == '0' then ok = 0 end
return {ok, reap()}
"""
)

# KEYS: queue, hosts, host alive, held. ARGV: host, queue TTL ms, entries to push back (in order).
# A host that stops cleanly hands back what it holds, and leaves, in one step.
_LEAVE_LUA = """
for i = #ARGV, 3, -1 do redis.call('LPUSH', KEYS[1], ARGV[i]) end
if #ARGV >= 3 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
redis.call('DEL', KEYS[4], KEYS[3])
redis.call('SREM', KEYS[2], ARGV[1])
return 1
"""


_reapers: weakref.WeakKeyDictionary[Any, Script] = weakref.WeakKeyDictionary()


def reap(store: RedisStore, pool: str) -> int:
    """Return the held entries of ``pool``'s dead hosts to the front of its queue; how many.

    Any party may call it at any time (a host's beat does, and so does a client
    of a shared pool): a host is dead once its alive key has expired.
    """
    script = _reapers.get(store.client)
    if script is None:  # once per client: a cluster client keeps every script registered on it
        script = _reapers[store.client] = store.client.register_script(_REAP_LUA)
    args = (_tag(pool), QUEUE_TTL_MS, protocol.REDELIVERED)
    return int(script(keys=[queue_key(pool), hosts_key(pool)], args=args))


def pool_state(store: RedisStore, pool: str) -> tuple[bool, int]:
    """Reap ``pool``'s dead hosts (:func:`reap`), then: whether a host of it advertises itself alive,
    and how many invocations wait in its queue."""
    with translating(store.url):
        reap(store, pool)
        pipe = store.client.pipeline(transaction=False)
        pipe.exists(alive_key(pool))
        pipe.llen(queue_key(pool))
        alive, queued = pipe.execute()
    return bool(alive), int(queued)


def pack_entries(memory_mb: list[int], payloads: list[bytes]) -> list[bytes]:
    """Queue entries: ``memory_mb`` as 4 bytes, then the signed payload."""
    return [_ENTRY.pack(mb) + p for mb, p in zip(memory_mb, payloads, strict=True)]


def push(store: RedisStore, pool: str, entries: list[bytes]) -> None:
    """Append entries to the pool's queue and refresh its TTL, in one round trip; raises :class:`StoreError`
    (:class:`StoreFullError` when the store is full)."""
    pipe = store.client.pipeline(transaction=False)
    pipe.rpush(queue_key(pool), *entries)
    pipe.pexpire(queue_key(pool), QUEUE_TTL_MS)
    with translating(store.url):
        pipe.execute()


def usable_cpus(slots: int) -> tuple[int, ...]:
    """The CPUs a pool with ``slots`` worker slots binds its workers to (:func:`own_cpus`): those this process
    may run on (its affinity mask, which the workers it starts inherit), in order. Empty when the pool has
    fewer slots than that: on a machine larger than the pool the kernel finds idle CPUs for its workers,
    which bound ones would forgo. Empty where the system has no affinity mask (not Linux)."""
    getter = getattr(os, "sched_getaffinity", None)
    usable = tuple(sorted(getter(0))) if getter is not None else ()
    return usable if slots >= len(usable) else ()


def taking_order(usable: tuple[int, ...], host_id: str) -> tuple[int, ...]:
    """The order in which the pool host ``host_id`` takes the ``usable`` CPUs for its workers: from one its id
    picks, around. Every pool of a machine taking the lowest free CPU first would stack their first workers
    on CPU 0 while others idle, and the kernel cannot move a bound worker."""
    if not usable:
        return ()
    turn = int.from_bytes(hashlib.blake2b(host_id.encode(), digest_size=4).digest()) % len(usable)
    return usable[turn:] + usable[:turn]


def own_cpus(usable: tuple[int, ...], held: set[int], memory_mb: int) -> frozenset[int]:
    """The CPUs a new worker of ``memory_mb`` is bound to: as many as its vCPU share rounded up (a
    3008 MB worker's quota of 1.7 cores needs 2), the first of the ``usable`` CPUs (in the pool's order)
    no other worker of the pool holds (``held``). None (an empty set: it runs anywhere) when fewer are
    free, or when it would need every usable CPU, which binds nothing.

    Why bind at all: a worker's task loop is short compute between Redis round trips, and the
    kernel tends to wake a process that a socket reply woke on the waker's CPU. On 2 cores with 2
    workers and ``redis-server`` both workers then often shared one core while the other idled: 6 of
    25 small tree_reduction runs, 7.2 ms against 5.7 ms, the workers' run-queue waits 3.4 ms against
    0.4 ms. Each worker on a core of its own, as on a FaaS platform: 0 of 30, and over 4 sets of 40
    runs the median 5.5-7.0 -> 4.2-5.1 ms, p90 6.3-7.5 -> 5.3-6.4 ms (docs/platforms.md).
    """
    need = max(1, math.ceil(vcpus(memory_mb)))
    free = [cpu for cpu in usable if cpu not in held]
    if need >= len(usable) or len(free) < need:
        return frozenset()
    return frozenset(free[:need])


def bind(pid: int, cpus: frozenset[int]) -> None:
    """Bind every thread of process ``pid`` to ``cpus``: its main thread first, so that a thread it starts
    meanwhile inherits the mask before the others are listed. A process that is gone is left alone."""
    with contextlib.suppress(OSError):
        os.sched_setaffinity(pid, cpus)
        for tid in os.listdir(f"/proc/{pid}/task"):
            if int(tid) != pid:
                with contextlib.suppress(OSError):  # that thread ended meanwhile
                    os.sched_setaffinity(int(tid), cpus)


@dataclass(eq=False)
class _Worker:
    """One worker process as the dispatcher sees it."""

    name: str
    memory_mb: int
    conn: Connection
    proc: subprocess.Popen[bytes] | None = None
    """None until its launch chore has started the process (or for good, if the launch failed)."""
    launch_error: str | None = None
    """Why the process could not be started; set before the launch closes the worker's pipe."""
    ready: bool = False
    payload: bytes | None = None
    """The invocation in flight (or waiting for the worker to be ready)."""
    redelivered: bool = False
    """``payload`` is delivered again, its first worker having died: the new one takes it over."""
    room: int = 0
    """The largest payload written to this worker's pipe at once (:data:`PIPE_SEND_BUFFER_BYTES`)."""
    sending: threading.Thread | None = None
    """The helper thread writing a larger payload to this worker, if any."""
    last_used: float = field(default_factory=time.monotonic)
    resident: int = 0
    peak: int = 0
    """Its process's resident bytes and their peak after it last reported (ready, or done with an invocation)."""
    unread: bool = False
    """It reported since ``resident`` and ``peak`` were read: :meth:`PoolHost._grow_idle`, the one reader, reads
    them when the pool is idle, not the dispatcher between a worker's report and the next invocation it sends."""
    growing: bool = False
    """Asked to grow its heap since it last reported (:meth:`PoolHost._grow_idle`)."""
    cpus: frozenset[int] = frozenset()
    """The CPUs its process is bound to (:func:`own_cpus`); empty: any CPU."""


class PoolHost:
    """Runs the invocations queued for pool ``name`` on up to ``max_workers`` worker processes.

    ``bind_cpus``: bind each worker process to CPUs of its own when the pool has a slot per CPU
    (:func:`usable_cpus`, :func:`own_cpus`); False leaves every worker to the kernel, for a machine the
    pool shares with other busy work that bound workers could not move away from."""

    def __init__(
        self,
        store: RedisStore,
        name: str,
        secret: bytes,
        *,
        max_workers: int | None = None,
        idle_timeout_s: float = 60.0,
        advertise: bool = False,
        bind_cpus: bool = True,
    ) -> None:
        self.store = store
        self.name = name
        self.max_workers = max_workers or os.cpu_count() or 1
        self.idle_timeout_s = idle_timeout_s
        self.stats = {"invocations": 0, "cold_starts": 0, "refused": 0, "crashed": 0, "redelivered": 0, "prewarmed": 0}
        self._prewarm: deque[int] = deque()
        self._deliveries: dict[bytes, int] = {}
        """Redeliveries per payload digest, for payloads whose worker died."""
        self._secret = secret
        self._advertise = advertise
        self._queue = queue_key(name)
        self._held = 0
        """Entries this host took from Redis and has not finished: in the inbox or running."""
        self._held_cv = threading.Condition()
        self.host_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._held_key = held_key(name, self.host_id)
        self._taken: dict[bytes, list[bytes]] = {}
        """Each held entry as it is in the held list, by its payload, until acknowledged (under ``_held_cv``)."""
        self._acks: list[bytes] = []
        """Held entries done with, to remove from the held list (under ``_held_cv``)."""
        client = store.client
        self._take_script = client.register_script(_TAKE_LUA)
        self._beat_script = client.register_script(_BEAT_LUA)
        self._leave_script = client.register_script(_LEAVE_LUA)
        self._inbox: deque[bytes] = deque()
        self._waiting: tuple[bytes, _Worker, float] | None = None
        """The inbox's first entry, the worker busy with an ended run it waits for, and until when
        (dispatcher thread only)."""
        self._waited: bytes | None = None
        """The payload of the last ending worker waited for in vain: not waited for again."""
        self._checked_runs: dict[str, None] = {}
        """Runs an entry of which looked for an ending worker, oldest first (see :meth:`_wait_for_ending`)."""
        self._wake_r, self._wake_w = Pipe(duplex=False)
        self._stop = threading.Event()
        self._workers: list[_Worker] = []
        self._ids = itertools.count(1)
        # The pool's group weighs as much as its processes would alone: under contention its workers
        # get the CPU share separate processes get (each still capped at its quota).
        self._cgroups = Cgroups(name, self.max_workers)
        self._cpus = taking_order(usable_cpus(self.max_workers), self.host_id) if bind_cpus else ()
        """The CPUs its workers are bound to, each to its own (:func:`own_cpus`), in the order they are taken;
        none: the kernel places them."""
        self._capacity = open_capacity()
        self._launches: list[threading.Thread] = []
        self._chores: list[threading.Thread] = []
        self._burying: set[_Worker] = set()
        """Lost workers with an invocation in flight, until a chore redelivers it or fails its run:
        their slots stay taken, so ``free_slots`` never offers a slot the redelivery will fill."""
        self._deliveries_lock = threading.Lock()
        self._env = {**os.environ, "PYTHONPATH": os.pathsep.join(p or os.getcwd() for p in sys.path)}
        self._env.pop("FANFLOW_SECRET", None)
        self._env[protocol.POOL_PID_ENV] = str(os.getpid())
        self._popper: threading.Thread | None = None
        self._dispatcher: threading.Thread | None = None
        self._unreachable = False
        """The popper's last command found the store unreachable (set and cleared by the popper): the
        dispatcher then sends nothing there, as every try would cost it a connect."""
        self._serving: threading.Thread | None = None
        """The thread running the dispatch loop, while it runs."""
        self._replied_at = time.monotonic()
        """When a worker last reported (ready, or done with an invocation)."""
        self._grow_due: float | None = None
        """When idle workers will be asked to grow (:meth:`_grow_idle`), if one is short and the pool idle."""

    # -- lifetime --------------------------------------------------------------------
    def start(self) -> None:
        """Serve in background threads (the client's own pool)."""
        self._dispatcher = threading.Thread(target=self.serve, name=f"fanflow-pool-{self.name}", daemon=True)
        self._dispatcher.start()

    def serve(self) -> None:
        """Serve in this thread until :meth:`stop` is called (``fanflow worker-pool``)."""
        self._serving = threading.current_thread()
        self._popper = threading.Thread(target=self._pop_loop, name=f"fanflow-pop-{self.name}", daemon=True)
        self._popper.start()
        try:
            self._dispatch_loop()
        finally:
            self._stop.set()  # also when the dispatcher broke: the popper must stop taking invocations
            self._popper.join(timeout=POPPER_JOIN_S)
            self._shutdown()
            self._serving = None

    def serving(self) -> bool:
        """Whether the host still runs invocations (not stopped, its dispatcher alive)."""
        serving = self._serving
        return not self._stop.is_set() and serving is not None and serving.is_alive()

    def stop(self) -> None:
        """Ask the host to stop; returns at once (see :meth:`close`)."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send_bytes(b"")

    def close(self) -> None:
        """Stop and wait until every worker process has exited and its cgroup is removed."""
        self.stop()
        if self._dispatcher is not None and self._dispatcher is not threading.current_thread():
            self._dispatcher.join(timeout=POPPER_JOIN_S + LAUNCH_JOIN_S + STOP_GRACE_S + CHORES_JOIN_S + LEAVE_S + 10)

    # -- popper ------------------------------------------------------------------------
    def _pop_loop(self) -> None:
        client, stop = self.store.client, self._stop
        next_beat = 0.0
        beaten = False
        high = HOLD * self.max_workers
        low = high // 2
        held_keys = [self._queue, self._held_key, host_alive_key(self.name, self.host_id)]

        def wanted() -> bool:
            return self._held <= low or stop.is_set()

        def take() -> None:
            nonlocal next_beat, beaten
            if time.monotonic() >= next_beat and self.serving():
                self._beat(first=not beaten)
                beaten = True
                next_beat = time.monotonic() + ALIVE_EVERY_S
            if not beaten:  # nothing is taken before this host is in the host set: reapers must see it
                stop.wait(POP_TIMEOUT_S)
                return
            with self._held_cv:
                if not self._held_cv.wait_for(wanted, POP_TIMEOUT_S) or stop.is_set():
                    return
                room = high - self._held
            entries = self._take_script(keys=held_keys, args=(room, HELD_TTL_MS)) or []
            if not entries:
                # A held list the move creates has no TTL: its expiry rides in the same pipeline, so
                # Redis sets it right after the move, even if this process dies before the reply.
                # What arrives with the entry it waits for (a run's roots come in one push) is taken in the
                # same round trip: taken one per pass, the capacity published after the first counted the
                # others' slots as free, and a worker starting the first shed work to them.
                pipe = client.pipeline(transaction=False)
                pipe.blmove(self._queue, self._held_key, POP_TIMEOUT_S, "LEFT", "RIGHT")
                pipe.pexpire(self._held_key, HELD_TTL_MS)
                if room > 1:
                    pipe.evalsha(self._take_script.sha, len(held_keys), *held_keys, room - 1, HELD_TTL_MS)
                got, _, *rest = pipe.execute(raise_on_error=False)
                if isinstance(got, Exception):
                    raise got
                if got is None:
                    return
                entries = [got, *self._also_taken(rest)]
            with self._held_cv:
                self._held += len(entries)
                for entry in entries:
                    self._taken.setdefault(_payload_of(entry)[0], []).append(entry)
            self._inbox.extend(entries)
            self._publish_capacity()
            self._wake_w.send_bytes(b"")

        trouble: type[Exception] | None = None  # what the store last did wrong: said once, not every second
        while not stop.is_set():
            try:
                with trying_once():  # this loop tries again itself, and must see a stop within one command
                    take()
            except (RedisConnectionError, RedisTimeoutError, OutOfMemoryError) as exc:
                full = isinstance(exc, OutOfMemoryError)
                self._unreachable = not full
                if type(exc) is not trouble:
                    log.warning(
                        "pool %s: its store %s (%s: %s); trying again every %.0f s",
                        self.name,
                        "is full" if full else "does not answer",
                        type(exc).__name__,
                        exc,
                        POP_PAUSE_S,
                    )
                    trouble = type(exc)
                stop.wait(POP_PAUSE_S)
                continue
            except Exception:  # a bug: keep the pool alive, retry shortly
                log.exception("pool %s could not take invocations from its queue; retrying", self.name)
                stop.wait(POP_PAUSE_S)
                continue
            if trouble is not None:
                log.warning("pool %s: its store answers again", self.name)
                trouble = None
                self._unreachable = False

    def _also_taken(self, replies: list[Any]) -> list[bytes]:
        """The entries a take script pipelined after a blocking move took (none if it failed: they stay queued)."""
        if not replies:
            return []
        if isinstance(replies[0], NoScriptError):  # the store lost its scripts (restarted): load it for next time
            with contextlib.suppress(RedisError):  # never raise: the moved entry is in the held list, not yet here
                self.store.client.script_load(self._take_script.script)
            return []
        if isinstance(replies[0], Exception):
            log.warning("pool %s could not take more invocations: %s", self.name, replies[0])
            return []
        return list(replies[0] or [])

    def _beat(self, first: bool) -> None:
        """Say this host is alive, and reap the held entries of hosts that are not (see the module doc)."""
        keys_ = [self._queue, hosts_key(self.name), host_alive_key(self.name, self.host_id), self._held_key]
        args = (_tag(self.name), QUEUE_TTL_MS, protocol.REDELIVERED, self.host_id, int(HOST_TTL_S * 1000))
        ok, reaped = self._beat_script(keys=keys_, args=(*args, "1" if first else "0"))
        if self._advertise:
            self.store.client.set(alive_key(self.name), os.getpid(), ex=ALIVE_TTL_S)
        if reaped:
            log.warning("pool %s: %d invocations held by hosts that died went back to the queue", self.name, reaped)
        if not ok:
            self._forsake_inbox()

    def _forsake_inbox(self) -> None:
        """This host was taken for dead (it missed its beats for :data:`HOST_TTL_S`) and what it held went
        back to the queue: drop the entries not started here, which another host (or this one) takes again.

        An entry a blocking move took after the reap is in the new held list, not back in the queue: it stays.
        """
        kept = set(self.store.client.lrange(self._held_key, 0, -1))
        dropped = 0
        for entry in list(self._inbox):
            if entry in kept:
                continue
            try:
                self._inbox.remove(entry)
            except ValueError:  # the dispatcher started it meanwhile: it runs here too
                continue
            self._release(_payload_of(entry)[0], acknowledge=False)
            dropped += 1
        log.warning(
            "pool %s: host %s missed its beats for %.0f s and was taken for dead; %d invocations not started here "
            "went back to the queue, and the ones running may run twice",
            self.name,
            self.host_id,
            HOST_TTL_S,
            dropped,
        )

    def _flush_acks(self) -> None:
        """Remove the entries done with from this host's held list, in one round trip (dispatcher thread)."""
        if self._unreachable:  # kept until the popper reaches the store again
            return
        with self._held_cv:
            acks, self._acks = self._acks, []
        if not acks:
            return
        try:
            with trying_once():  # never holds up the dispatcher: the next pass flushes them again
                pipe = self.store.client.pipeline(transaction=False)
                for entry in acks:
                    pipe.lrem(self._held_key, 1, entry)
                pipe.execute()
        except Exception as exc:  # kept for the next flush; until then a reaper would hand them back as redeliveries
            if not isinstance(exc, RedisConnectionError | RedisTimeoutError):  # the popper tells of an outage
                log.exception("pool %s could not acknowledge %d finished invocations; retrying", self.name, len(acks))
            with self._held_cv:
                self._acks[:0] = acks

    # -- dispatcher ----------------------------------------------------------------------
    def _dispatch_loop(self) -> None:
        idle_check = max(0.05, min(1.0, self.idle_timeout_s / 2))
        while not self._stop.is_set():
            by_conn = {w.conn: w for w in self._workers}
            timeout = idle_check
            if self._waiting is not None:
                timeout = max(0.0, min(idle_check, self._waiting[2] - time.monotonic()))
            if self._grow_due is not None:
                timeout = max(0.0, min(timeout, self._grow_due - time.monotonic()))
            for conn in wait([self._wake_r, *by_conn], timeout=timeout):
                if conn is self._wake_r:
                    self._drain_wake()
                elif by_conn[conn] in self._workers:  # not lost while handling an earlier message
                    self._on_message(by_conn[conn])
            while self._prewarm:
                self._warm_one(self._prewarm.popleft())
            while self._inbox and self._busy() < self.max_workers:
                entry = self._inbox.popleft()
                if self._wait_for_ending(entry):
                    self._inbox.appendleft(entry)
                    break
                try:
                    self._dispatch(entry)
                except Exception as exc:  # one invocation's fault (a bug) fails its run, not the pool
                    log.exception("pool %s could not run an invocation", self.name)
                    self._release(_payload_of(entry)[0])
                    self._chore(self._tell_run, _payload_of(entry)[0], f"the pool could not run it: {exc}", self.name)
            self._grow_due = self._grow_idle() if not self._inbox and self._busy() == 0 else None
            self._flush_acks()
            self._retire_idle()
            self._publish_capacity()

    def _wait_for_ending(self, entry: bytes) -> bool:
        """Whether ``entry`` waits for a worker of its size that is busy with an ended run
        (:data:`WAIT_FOR_ENDING_S` at most, once per such worker's invocation).

        Only when a worker of its size is idle (else it waits anyway), only for another run's
        worker (a busy worker of the entry's own run is running it), and only for the first entry
        of its run that finds both: a run's roots go out at once, and what a shared pool gets later
        from a run (fan-outs from its own workers) is not what the wait is for. So a run costs one
        status read per other run then busy here, however many invocations it has.
        """
        now = time.monotonic()
        if self._waiting is not None:
            waited, worker, until = self._waiting
            if waited is entry and worker.payload is not None and worker in self._workers:
                if now < until:
                    return True
                self._waited = worker.payload
            self._waiting = None
            return False
        (memory_mb,) = _ENTRY.unpack_from(entry)
        workers = [w for w in self._workers if w.memory_mb == memory_mb]
        if self._unreachable or not any(w.ready and w.payload is None for w in workers):
            return False
        run = run_id_of(_payload_of(entry)[0])
        if run is None or run in self._checked_runs:
            return False
        self._checked_runs[run] = None
        if len(self._checked_runs) > CHECKED_RUNS:
            del self._checked_runs[next(iter(self._checked_runs))]
        ended: dict[str, bool] = {}
        for worker in workers:
            busy_with = run_id_of(worker.payload) if worker.payload is not None else None
            if busy_with is None or busy_with == run or worker.payload is self._waited:
                continue
            if busy_with not in ended:
                try:
                    with trying_once():  # a hint only: without it the entry goes to the idle worker
                        ended[busy_with] = self.store.get_status(keys.status(busy_with)) != RUNNING
                except Exception:
                    log.debug("pool %s: could not read the status of run %s", self.name, busy_with, exc_info=True)
                    return False
            if ended[busy_with]:
                self._waiting = (entry, worker, now + WAIT_FOR_ENDING_S)
                return True
        return False

    def _grow_idle(self) -> float | None:
        """Once no invocation has run for :data:`GROW_IDLE_S`, ask each idle worker whose resident
        memory falls short of the largest peak of its size by :data:`protocol.GROW_MIN_BYTES` or more
        to grow its heap by the difference, once until it next reports (:func:`protocol.grow_heap`: a
        run that gives it the biggest share then reuses pages instead of faulting them in). Returns
        when to ask, if some worker is short and that time has not come (called while the pool is idle).
        """
        peaks: dict[int, int] = {}
        for worker in self._workers:
            if worker.unread and worker.proc is not None:
                # ~0.1 ms of /proc a read: done here, while nothing waits, rather than as each worker reports
                worker.resident, worker.peak = protocol.memory_bytes(worker.proc.pid)
                worker.unread = False
            peaks[worker.memory_mb] = max(peaks.get(worker.memory_mb, 0), worker.peak)
        short = [
            (worker, peaks[worker.memory_mb] - worker.resident)
            for worker in self._workers
            if worker.ready
            and worker.payload is None
            and not worker.growing
            and peaks[worker.memory_mb] - worker.resident >= protocol.GROW_MIN_BYTES
        ]
        due = self._replied_at + GROW_IDLE_S
        if not short or time.monotonic() < due:
            return due if short else None
        for worker, size in short:
            worker.growing = True
            try:
                worker.conn.send_bytes(protocol.grow_message(size))
            except OSError:
                self._lost(worker)
        return None

    def _busy(self) -> int:
        """Slots taken: workers with an invocation, and lost ones whose invocation is not settled yet."""
        return sum(w.payload is not None for w in self._workers) + len(self._burying)

    def free_slots(self, ending: bool = False) -> int:
        """Workers that could start now: ``max_workers`` minus busy ones and invocations waiting here.

        ``ending``: also count the busy workers whose run has ended (its status is no longer
        ``running``), at the cost of one round trip when any worker is busy: the worker that ran a
        run's last task still sends its events when the client has the result, and is idle a few ms
        later. A client starting its next run at once saw 0 or 1 of 2 slots free in 2 of 6 runs of
        a 2,047-task tree, so its roots went to one worker, which ran all of them at 300-400 ms of
        CPU instead of two at ~60 ms each; a root invocation sent to such a slot waits those few ms.
        """
        free = max(0, self.max_workers - self._busy() - len(self._inbox))
        if not ending or free >= self.max_workers:
            return free
        runs = [run_id_of(w.payload) for w in list(self._workers) if w.payload is not None]
        # a hint only (this pool's own client signed them); one GET per run, as a cluster keeps
        # the status keys of different runs in different slots
        running = {r: self.store.get_status(keys.status(r)) == RUNNING for r in set(runs) if r is not None}
        ended = sum(1 for r in runs if r is not None and not running[r])
        return min(self.max_workers - len(self._inbox), free + ended)

    def process_memory(self) -> list[int]:
        """Memory sizes of the pool's worker processes, least recently used first, busy ones last (any thread).

        A planner reads it before a run: an invocation of one of these sizes starts warm. Busy
        workers count (last): one that just ran the previous run's last task is still sending
        its events when that run's result is in, and is idle a moment later.
        """
        workers = list(self._workers)
        return [w.memory_mb for w in sorted(workers, key=lambda w: (w.payload is not None, w.last_used))]

    def _chore(self, work: Callable[..., object], *args: object) -> None:
        """Run ``work(*args)`` on a helper thread, so the dispatcher goes on at once."""
        chore = threading.Thread(target=work, args=args, name=f"fanflow-chore-{self.name}", daemon=True)
        chore.start()
        self._chores = [c for c in self._chores if c.is_alive()] + [chore]

    def _publish_capacity(self) -> None:
        if self._capacity is not None:
            self._capacity.publish(self.free_slots())

    def prewarm(self, memory_mb: int) -> None:
        """Have an idle worker process of ``memory_mb`` ready before work for it arrives (any thread)."""
        self._prewarm.append(memory_mb)
        self._wake_w.send_bytes(b"")

    def _warm_one(self, memory_mb: int) -> None:
        """Cold-start an idle worker of ``memory_mb`` now, unless one is idle or the pool is full of busy ones."""
        if any(w.memory_mb == memory_mb and w.payload is None for w in self._workers):
            return
        idle = [w for w in self._workers if w.ready and w.payload is None]
        if len(self._workers) >= self.max_workers:
            if not idle:
                return
            self._retire(min(idle, key=lambda w: w.last_used))
        self._cold_start(memory_mb, prewarmed=True)
        self.stats["prewarmed"] += 1

    def _release(self, payload: bytes, acknowledge: bool = True) -> None:
        """The entry of ``payload`` taken from the queue is done with: the popper may take more, and
        the entry leaves this host's held list at the next :meth:`_flush_acks`."""
        with self._held_cv:
            self._held -= 1
            entries = self._taken.get(payload)
            if entries:
                entry = entries.pop()
                if not entries:
                    del self._taken[payload]
                if acknowledge:
                    self._acks.append(entry)
            self._held_cv.notify()

    def _drain_wake(self) -> None:
        while self._wake_r.poll():
            self._wake_r.recv_bytes()

    def _dispatch(self, entry: bytes) -> None:
        (memory_mb,) = _ENTRY.unpack_from(entry)
        payload, redelivered = _payload_of(entry)
        self.stats["invocations"] += 1
        idle = [w for w in self._workers if w.ready and w.payload is None]
        same = [w for w in idle if w.memory_mb == memory_mb]
        if same:
            worker = max(same, key=lambda w: w.last_used)  # the warmest; the others may time out
            worker.redelivered = redelivered
            self._send(worker, payload)
            return
        if len(self._workers) >= self.max_workers and idle:
            self._retire(min(idle, key=lambda w: w.last_used))
        worker = self._cold_start(memory_mb)
        worker.payload, worker.redelivered = payload, redelivered

    def _cold_start(self, memory_mb: int, prewarmed: bool = False) -> _Worker:
        """A new worker, its process launched by a chore; the dispatcher hears from it on its pipe."""
        ours, theirs = Pipe()
        worker = _Worker(f"w{next(self._ids)}", memory_mb, ours, room=widen(ours))
        worker.cpus = own_cpus(self._cpus, {cpu for w in self._workers for cpu in w.cpus}, memory_mb)
        self._workers.append(worker)
        self.stats["cold_starts"] += 1
        launch = threading.Thread(
            target=self._launch, args=(worker, theirs, prewarmed), name=f"fanflow-launch-{worker.name}", daemon=True
        )
        launch.start()
        self._launches = [t for t in self._launches if t.is_alive()] + [launch]
        return worker

    def _launch(self, worker: _Worker, theirs: Connection, prewarmed: bool) -> None:
        """Start ``worker``'s process, place it in its cgroup, bind it to its CPUs and send its setup (a chore).

        Our copy of the child's pipe end closes only at the end, so the dispatcher
        sees the pipe's end of file (and loses the worker) only once the launch is
        over: at once when the process could not be started, else when it dies.
        """
        shared = (self._capacity.fd,) if self._capacity is not None else ()
        try:
            try:
                # read by glibc as the process starts; the pool's own environment wins
                env = {**protocol.malloc_env(worker.memory_mb), **self._env}
                proc = subprocess.Popen(
                    [sys.executable, "-c", protocol.CHILD_MAIN, str(theirs.fileno())],
                    pass_fds=(theirs.fileno(), *shared),
                    env=env,
                    stdin=subprocess.DEVNULL,
                )
            except OSError as exc:
                worker.launch_error = f"pool {self.name}: cannot start a worker process ({exc})"
                log.error("%s", worker.launch_error)
                return
            worker.proc = proc
            try:
                self._cgroups.place(proc.pid, worker.name, worker.memory_mb)
                if worker.cpus:
                    bind(proc.pid, worker.cpus)
                setup = {
                    "secret": self._secret,
                    "log_level": logging.getLogger().level,
                    "prewarmed": prewarmed,
                    "capacity_fd": shared[0] if shared else None,
                }
                with contextlib.suppress(OSError):  # it died at once: its end of file reaches the dispatcher (_lost)
                    worker.conn.send_bytes(pickle.dumps(setup))
            except Exception:  # a bug here must not leave the process waiting for a setup that never comes
                log.exception("pool %s could not set up worker %s; stopping it", self.name, worker.name)
                proc.kill()  # its end of the pipe closes: the dispatcher loses it as any other
                return
            log.info(
                "pool %s: cold start of worker %s (pid %d, %d MB)", self.name, worker.name, proc.pid, worker.memory_mb
            )
        finally:
            theirs.close()

    def _send(self, worker: _Worker, payload: bytes) -> None:
        worker.payload = payload
        data = protocol.REDELIVERED + payload if worker.redelivered else payload
        if len(data) > worker.room:
            worker.sending = threading.Thread(
                target=_send_apart, args=(worker.conn, data), name=f"fanflow-send-{worker.name}", daemon=True
            )
            worker.sending.start()
            return
        try:
            worker.conn.send_bytes(data)
        except OSError:
            self._lost(worker)

    def _on_message(self, worker: _Worker) -> None:
        try:
            message = worker.conn.recv_bytes()
        except (EOFError, OSError):
            self._lost(worker)
            return
        worker.growing = False
        worker.unread = True
        self._replied_at = time.monotonic()
        if message == protocol.READY:
            worker.ready = True
            if worker.payload is not None:
                self._send(worker, worker.payload)
            return
        where = f"{self.name}/{worker.name}"
        if message == protocol.REFUSED:
            self.stats["refused"] += 1
            self._chore(self._tell_run, worker.payload or b"", "refused", where)
        elif message.startswith(protocol.CRASHED):
            self.stats["crashed"] += 1
            why = f"the worker crashed outside of its tasks: {message[1:].decode()}"
            self._chore(self._tell_run, worker.payload or b"", why, where)
        if worker.payload is not None:
            self._release(worker.payload)
        worker.payload = None
        worker.last_used = time.monotonic()

    def _lost(self, worker: _Worker) -> None:
        """A worker's pipe closed: its process died, or could not be started. Settled by a chore.

        The dispatcher only forgets the worker; :meth:`_bury` waits for the
        process to exit and decides what becomes of its invocation, whose slot
        stays taken meanwhile. A process that closed its pipe but hangs on its
        way out (a thread that never ends, say) costs one chore, never a stall.
        """
        self._workers.remove(worker)
        _close_pipe(worker)
        if worker.payload is not None:
            self.stats["crashed"] += 1
            self._burying.add(worker)
        self._chore(self._bury, worker)

    def _bury(self, worker: _Worker) -> None:
        """Reap a lost worker, then redeliver its invocation to a new process or fail its run (a chore).

        The redelivered payload keeps its invocation id, so its worker re-enters
        the claims the dead one took and carries on where it stopped (tasks it
        had finished run again: execution is at-least-once, fan-in exactly-once).
        A worker killed by a signal (SIGKILL: the out-of-memory killer, most
        likely) is redelivered once: the same task at the same memory would be
        killed again, so a second kill fails the run at once naming the task.
        Other deaths are redelivered up to ``max_recoveries`` times; a process
        that could not be started at all fails its run at once.
        """
        code = _reap(worker.proc, LOST_GRACE_S) if worker.proc is not None else None
        self._cgroups.remove(worker.name)
        payload = worker.payload
        if payload is None:
            return
        where = f"{self.name}/{worker.name}"
        try:
            if worker.launch_error is not None:
                self._release(payload)
                self._tell_run(payload, f"the pool could not run it: {worker.launch_error}", where)
                return
            killed = code is not None and code < 0
            hint = f"; it may have exceeded memory_mb={worker.memory_mb}" if killed else ""
            pid = worker.proc.pid if worker.proc is not None else None
            why = f"its worker process {pid} exited with code {code}{hint}"
            digest = hashlib.blake2b(payload, digest_size=16).digest()
            with self._deliveries_lock:
                tries = self._deliveries[digest] = self._deliveries.get(digest, 0) + 1
            try:
                allowed = verify(payload, self._secret).settings.max_recoveries
            except PayloadRejectedError:
                allowed = 0
            if killed:
                allowed = min(allowed, KILLED_REDELIVERIES)
            if tries <= allowed:
                log.warning("pool %s: %s; redelivering its invocation (%d of %d)", self.name, why, tries, allowed)
                self.stats["redelivered"] += 1
                self._inbox.appendleft(_ENTRY.pack(worker.memory_mb) + protocol.REDELIVERED + payload)
                return
            with self._deliveries_lock:
                self._deliveries.pop(digest, None)
            self._release(payload)
            self._tell_run(payload, f"{why}, {tries} times", where)
        finally:
            # After the redelivery is in the inbox: the slot is never offered twice, only briefly not at all.
            self._burying.discard(worker)
            self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # the pool closed meanwhile
            self._wake_w.send_bytes(b"")

    def _tell_run(self, payload: bytes, why: str, where: str) -> None:
        """Fail the run of an invocation this pool refused or lost, so its client raises at once."""
        try:
            inv = verify(payload, self._secret)
        except PayloadRejectedError as exc:
            run_id = run_id_of(payload)
            log.error("pool %s refused an invocation of run %s: %s", self.name, run_id, exc)
            if run_id is not None:  # unverified, so only ever told that it was refused
                message = (
                    f"the worker pool {self.name!r} refused its invocation: {exc}; a shared pool verifies "
                    "payloads with its own secret, so set config.secret (FANFLOW_SECRET) to the pool's"
                )
                fail_invocation(self.store, run_id, (), message, where, exc_type="fanflow.errors.PayloadRejectedError")
            return
        message = f"{why} (max_recoveries={inv.settings.max_recoveries})"
        log.error("pool %s: run %s lost invocation of tasks %s: %s", self.name, inv.run_id, list(inv.start), message)
        fail_invocation(self.store, inv.run_id, inv.start, message, where, ttl_s=inv.settings.key_ttl_s)

    def _retire_idle(self) -> None:
        limit = time.monotonic() - self.idle_timeout_s
        for worker in [w for w in self._workers if w.ready and w.payload is None and w.last_used < limit]:
            self._retire(worker)

    def _retire(self, worker: _Worker) -> None:
        """Tell an idle worker to exit; it is reaped in the background, so a slow exit never holds up dispatch."""
        log.info("pool %s: stopping idle worker %s", self.name, worker.name)
        self._workers.remove(worker)
        with contextlib.suppress(OSError):
            worker.conn.send_bytes(b"")
        _close_pipe(worker)
        self._chore(self._reap_retired, worker)

    def _reap_retired(self, worker: _Worker) -> None:
        if worker.proc is not None:
            _reap(worker.proc, STOP_GRACE_S)
        self._cgroups.remove(worker.name)

    def _shutdown(self) -> None:
        """Stop every worker (busy ones get a grace period), return unfinished entries, remove cgroups.

        An invocation whose worker was stopped before it finished goes back to the
        front of the queue as a redelivery (its next worker takes it over), with
        the entries not started yet: another host of the pool, or this pool
        started again, runs them. The host's held list goes in the same step. A
        pool that does not come back is noticed by its clients, as its ``alive``
        key goes now.
        """
        for launch in self._launches:  # quick (a fork and exec); after it, every process is known
            launch.join(timeout=LAUNCH_JOIN_S)
            if launch.is_alive():
                log.error("pool %s: %s is stuck starting a worker process; closing without it", self.name, launch.name)
        for worker in self._workers:
            if worker.sending is not None and worker.sending.is_alive():
                continue  # a stop message now would cut into the payload: it is killed after the grace
            with contextlib.suppress(OSError):
                worker.conn.send_bytes(b"")
        deadline = time.monotonic() + STOP_GRACE_S
        unfinished: list[bytes] = []
        for worker in self._workers:
            code = _reap(worker.proc, max(0.0, deadline - time.monotonic())) if worker.proc is not None else None
            _close_pipe(worker)
            if worker.payload is not None and (code is None or code != 0):
                unfinished.append(_ENTRY.pack(worker.memory_mb) + protocol.REDELIVERED + worker.payload)
        self._workers = []
        chores_end = time.monotonic() + CHORES_JOIN_S
        for chore in self._chores:  # lost workers' redeliveries land in the inbox, handed back below
            chore.join(timeout=max(0.0, chores_end - time.monotonic()))
        self._cgroups.close()
        unfinished.extend(self._inbox)
        self._inbox.clear()
        failed: list[BaseException] = []
        leave = threading.Thread(target=self._leave, args=(unfinished, failed), name=f"fanflow-leave-{self.name}")
        leave.daemon = True
        leave.start()
        leave.join(timeout=LEAVE_S)
        if leave.is_alive() or failed:
            # What it held stays in its held list, in the store: a reaper hands it back once its beat expires.
            why = f"{type(failed[0]).__name__}: {failed[0]}" if failed else f"no answer within {LEAVE_S:.0f} s"
            log.warning(
                "pool %s stopped without reaching its store (%s); %s",
                self.name,
                why,
                f"its {len(unfinished)} unfinished invocations stay in its held list there, and go back to the "
                "queue when a host or client of the pool finds it dead"
                if unfinished
                else "it held no invocation",
            )
        self._wake_r.close()
        self._wake_w.close()
        if self._capacity is not None:
            self._capacity.close()

    def _leave(self, unfinished: list[bytes], failed: list[BaseException]) -> None:
        """Hand ``unfinished`` back to the queue and leave the pool's host set, with one try (a helper thread)."""
        leave_keys = [self._queue, hosts_key(self.name), host_alive_key(self.name, self.host_id), self._held_key]
        try:
            with trying_once():
                self._leave_script(keys=leave_keys, args=(self.host_id, QUEUE_TTL_MS, *unfinished))
                if self._advertise:
                    self.store.client.delete(alive_key(self.name))
        except Exception as exc:
            failed.append(exc)


def _payload_of(entry: bytes) -> tuple[bytes, bool]:
    """A queue entry's signed payload, and whether it is a redelivery (see :data:`protocol.REDELIVERED`)."""
    payload = entry[_ENTRY.size :]
    if payload[:1] == protocol.REDELIVERED:
        return payload[1:], True
    return payload, False


def widen(conn: Connection) -> int:
    """Ask for a send buffer of :data:`PIPE_SEND_BUFFER_BYTES` on ``conn`` (one end of a
    ``multiprocessing.Pipe``, a Unix socket pair); how many bytes one write to an empty pipe then
    takes without waiting for the reader.

    Linux reports twice the size it set (the doubling pays for its own bookkeeping), so half of
    what it reports fits; where the option cannot be set, half of the default is a safe bound.
    """
    with socket.socket(fileno=os.dup(conn.fileno())) as end:  # a duplicate: closing it leaves ``conn`` open
        with contextlib.suppress(OSError):  # the buffer stays as it is
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, PIPE_SEND_BUFFER_BYTES)
        return int(end.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)) // 2


def _send_apart(conn: Connection, data: bytes) -> None:
    """Write one payload larger than the worker's pipe takes at once (a helper thread; see :func:`widen`)."""
    with contextlib.suppress(OSError):  # the worker died: its end of file reaches the dispatcher (_lost)
        conn.send_bytes(data)


def _close_pipe(worker: _Worker) -> None:
    """Close the dispatcher's end of a worker's pipe, once no helper thread writes to it.

    Called when the worker is gone or done with its payload: a write still in
    progress then ends at once (with an error, or having just finished).
    """
    if worker.sending is not None:
        worker.sending.join(timeout=KILL_WAIT_S)
    worker.conn.close()


def _reap(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """Wait for ``proc`` to exit, killing it after ``timeout``; its exit code."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        try:
            return proc.wait(timeout=KILL_WAIT_S)
        except subprocess.TimeoutExpired:
            log.error("worker process %d does not die; leaving it", proc.pid)
            return None
