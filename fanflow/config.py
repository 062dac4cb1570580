"""Configuration: one frozen object, from keyword args, ``FANFLOW_*`` env vars or ``fanflow.toml``.

Precedence when fanflow resolves the config for a run with none given:
defaults < ``fanflow.toml`` in the working directory < ``FANFLOW_<KEY>`` env vars.
An explicit :class:`Config` (or dict) passed to ``compute`` is used as it is.
Unknown keys and bad values raise :class:`fanflow.ConfigError` naming the key,
the value and what is accepted. Secrets and URL passwords are masked whenever
the config is shown.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import secrets
import stat
import time
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from fanflow.errors import ConfigError

STORE_SCHEMES = ("memory", "redis", "rediss", "redis+cluster")
METADATA_SCHEMES = ("sqlite", "redis", "rediss", "none")
"""``none`` (also accepted bare, without ``://``) turns history recording off."""
PLATFORMS = ("threads", "processes", "http", "ray", "lambda")
FANOUTS = ("capacity", "wukong")
"""``capacity``: fan out no wider than the platform's idle slots, queue the rest in the worker;
``wukong``: one new worker per fan-out branch and per root, always."""
PLANNERS = ("none", "wukong", "uniform", "critical-path")
UPLOAD_STRATEGIES = ("shutdown", "task", "periodic", "buffer")
OPTIMIZATIONS = ("clustering", "delayed-io", "preload", "prewarm")
TOML_NAME = "fanflow.toml"

_PROCESS_SECRET = secrets.token_hex(32)


def signing_secret(config: Config) -> bytes:
    """The HMAC key for payloads: ``config.secret``, else one generated per client process.

    The generated key suits platforms whose workers this process starts (it hands
    the key to them); a shared pool or a remote gateway needs ``secret`` set.
    """
    return (config.secret or _PROCESS_SECRET).encode()


_POOL_NAME = re.compile(r"[A-Za-z0-9._-]+")


def check_pool_name(name: str, where: str) -> str:
    """``name``, if it can name a shared worker pool; else :class:`ConfigError` naming ``where`` it was given.

    A pool's name goes into its Redis keys inside a Redis Cluster hash tag
    (``{ff:pool:NAME:queue}``), where a ``{`` or ``}`` would end the tag early and
    scatter the pool's keys over slots, and into cgroup directory names, where a
    ``/`` would nest them.
    """
    if not _POOL_NAME.fullmatch(name):
        raise ConfigError(
            f"{where}={name!r}: a pool name takes letters, digits, '.', '_' and '-' only "
            "(it goes into Redis Cluster hash tags and cgroup names)"
        )
    return name


def _pool(key: str, value: Any) -> str | None:
    return None if value is None else check_pool_name(str(_text(False)(key, value)), f"config {key}")


_SECRET_PARAMS = frozenset({"password", "pass", "passwd", "pwd", "secret", "token", "auth"})
"""Query parameters whose values are masked in URLs (redis-py takes ``?password=``)."""


def mask_url(url: str) -> str:
    """``url`` with any password, in the user info or the query (``?password=``), replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    netloc, query = parts.netloc, parts.query
    if parts.password is not None:
        netloc = f"{parts.username or ''}:***@{netloc.rpartition('@')[2]}"
    if query:
        pairs = []
        for pair in query.split("&"):
            name, eq, _ = pair.partition("=")
            pairs.append(f"{name}=***" if eq and name.lower() in _SECRET_PARAMS else pair)
        query = "&".join(pairs)
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _url(schemes: tuple[str, ...]) -> Callable[[str, Any], str]:
    def check(key: str, value: Any) -> str:
        if value == "none" and "none" in schemes:
            return value
        if not isinstance(value, str) or "://" not in value:
            raise ConfigError(f"config {key}={value!r}: expected a URL such as '{schemes[0]}://...'")
        scheme = value.split("://", 1)[0]
        if scheme not in schemes:
            raise ConfigError(
                f"config {key}={mask_url(value)!r}: unknown scheme {scheme!r}; use one of {', '.join(schemes)}"
            )
        return value

    return check


def _choice(options: tuple[str, ...]) -> Callable[[str, Any], str]:
    def check(key: str, value: Any) -> str:
        if value not in options:
            hint = difflib.get_close_matches(str(value), options, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(f"config {key}={value!r}: unknown value{extra}; use one of {', '.join(options)}")
        return str(value)

    return check


def _number(kind: type, low: float, optional: bool = False) -> Callable[[str, Any], Any]:
    def check(key: str, value: Any) -> Any:
        if value is None and optional:
            return None
        if isinstance(value, str):
            try:
                value = kind(value)
            except ValueError:
                raise ConfigError(f"config {key}={value!r}: expected a {kind.__name__}") from None
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (kind is int and not isinstance(value, int))
        ):
            raise ConfigError(f"config {key}={value!r}: expected a {kind.__name__} >= {low}")
        if not math.isfinite(value):
            raise ConfigError(f"config {key}={value!r}: must be a finite number >= {low}")
        if value < low:
            raise ConfigError(f"config {key}={value!r}: must be >= {low}")
        return kind(value)

    return check


def _flag(optional: bool) -> Callable[[str, Any], bool | None]:
    def check(key: str, value: Any) -> bool | None:
        if value is None and optional:
            return None
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"config {key}={value!r}: expected true or false")

    return check


def _text(optional: bool) -> Callable[[str, Any], str | None]:
    def check(key: str, value: Any) -> str | None:
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value:
            raise ConfigError(f"config {key}: expected a non-empty string")
        return value

    return check


def _upload(key: str, value: Any) -> str:
    """``shutdown`` | ``task`` | ``periodic:<seconds>`` | ``buffer:<items>``."""
    if not isinstance(value, str):
        raise ConfigError(f"config {key}={value!r}: expected a string such as 'shutdown' or 'periodic:5'")
    name, _, arg = value.partition(":")
    if name not in UPLOAD_STRATEGIES:
        raise ConfigError(f"config {key}={value!r}: use one of shutdown, task, periodic:<seconds>, buffer:<items>")
    if name in ("periodic", "buffer"):
        try:
            ok = float(arg) > 0
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError(f"config {key}={value!r}: {name} needs a positive number, e.g. '{name}:5'")
    elif arg:
        raise ConfigError(f"config {key}={value!r}: {name} takes no argument")
    return value


def _optimizations(key: str, value: Any) -> str:
    """A comma-separated subset of :data:`OPTIMIZATIONS`, or ``none``."""
    if not isinstance(value, str):
        raise ConfigError(f"config {key}={value!r}: expected names separated by commas, e.g. 'clustering,delayed-io'")
    names = [] if value.strip() in ("", "none") else [n.strip() for n in value.split(",")]
    for name in names:
        if name not in OPTIMIZATIONS:
            hint = difflib.get_close_matches(name, OPTIMIZATIONS, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(f"config {key}: unknown optimization {name!r}{extra}; use {', '.join(OPTIMIZATIONS)}")
    return ",".join(names) if names else "none"


def _sla(key: str, value: Any) -> str:
    """``mean`` or a percentile ``p50`` .. ``p99``."""
    text = str(value)
    if text == "mean" or (text[:1] == "p" and text[1:].isdigit() and 50 <= int(text[1:]) <= 99):
        return text
    raise ConfigError(f"config {key}={value!r}: use 'mean' or a percentile from 'p50' to 'p99'")


def _field(default: Any, check: Callable[[str, Any], Any], doc: str, secret: bool = False) -> Any:
    return dataclasses.field(default=default, metadata={"check": check, "doc": doc, "secret": secret})


@dataclasses.dataclass(frozen=True, repr=False)
class Config:
    """Everything that selects where and how a DAG runs. All fields are optional."""

    store: str = _field("memory://", _url(STORE_SCHEMES), "where outputs and run state live")
    platform: str = _field("threads", _choice(PLATFORMS), "how workers are invoked")
    metadata: str = _field("sqlite:///.fanflow/metadata.db", _url(METADATA_SCHEMES), "run history store")
    planner: str = _field("wukong", _choice(PLANNERS), "how tasks get resources and placement")
    secret: str | None = _field(None, _text(True), "HMAC key for payloads", secret=True)
    max_workers: int | None = _field(None, _number(int, 1, optional=True), "concurrent workers (platform default)")
    memory_mb: int = _field(1769, _number(int, 128), "default memory per worker, MB")
    inline_dag_max_bytes: int = _field(256 * 1024, _number(int, 0), "ship the DAG inline below this size")
    max_value_bytes: int = _field(256 * 1024 * 1024, _number(int, 1), "largest task output accepted")
    key_ttl_s: int = _field(24 * 3600, _number(int, 1), "TTL of every store key a run writes")
    lease_ms: int = _field(30_000, _number(int, 100), "fan-in claim lease, refreshed while a task runs")
    timeout_s: float | None = _field(None, _number(float, 0.001, optional=True), "fail a run that takes longer")
    progress: bool | None = _field(None, _flag(True), "progress bar: None = when attached to a terminal")
    pool: str | None = _field(None, _pool, "name of a shared worker pool to use instead of starting one")
    idle_timeout_s: float = _field(60.0, _number(float, 0.0), "a warm worker process exits after this idle time")
    bind_cpus: bool = _field(
        True, _flag(False), "a pool with a slot per CPU binds each worker process to CPUs of its own (false: never)"
    )
    fanout: str = _field("capacity", _choice(FANOUTS), "new workers per fan-out: capacity (idle slots) or wukong")
    keep_alive_s: float = _field(
        60.0, _number(float, 0.0), "a client-started worker pool stays warm this long after its last run (0: stops)"
    )
    metrics_upload: str = _field("shutdown", _upload, "when workers upload metrics")
    retention_runs: int = _field(1000, _number(int, 1), "runs kept in the metadata store")
    optimizations: str = _field("none", _optimizations, "plan optimizations the workers apply, e.g. 'clustering'")
    sla: str = _field("mean", _sla, "prediction statistic planners use: mean or p50..p99")
    slack: float = _field(0.1, _number(float, 0.0), "critical-path planner: allowed makespan over the best case")
    max_recoveries: int = _field(3, _number(int, 0), "times one task may be recovered after a lost worker")
    requirements: str | None = _field(None, _text(True), "path of the workflow's requirements.txt")
    endpoints: str | None = _field(
        None, _text(True), "where workers are invoked: gateway URLs (http, comma-separated), function (lambda)"
    )
    store_retry_s: float = _field(10.0, _number(float, 0.0), "keep retrying a lost store connection this long")

    def __post_init__(self) -> None:
        for name, check in _CHECKS.items():
            object.__setattr__(self, name, check(name, getattr(self, name)))
        self._check_together()

    def _check_together(self) -> None:
        """The checks that take more than one field."""
        if self.platform != "threads" and not self.shared_store:
            raise ConfigError(
                f"platform {self.platform!r} runs workers outside this process, so it needs a shared "
                "store: pass store='redis://host:port/0'"
            )

    @property
    def shared_store(self) -> bool:
        """Whether the store is reachable from outside this process: every store but ``memory://``.

        The memory store holds Python objects in this process, so workers elsewhere
        (another process, a gateway) cannot use it, and nothing needs keeping out of it.
        """
        return not self.store.startswith("memory://")

    # -- building -------------------------------------------------------------
    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(_CHECKS)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "arguments") -> Config:
        """Build from a mapping, rejecting unknown keys with a suggestion."""
        _check_known(values, source)
        key = _built_key(values) if cls is Config else None
        if key is None:
            return cls(**dict(values))
        built = _built.get(key)
        if built is None:
            built = cls(**dict(values))
            if len(_built) >= BUILT_KEPT:
                _built.clear()  # a program that builds ever new configs: start over rather than grow
            _built[key] = built
        return built

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        """The ``FANFLOW_<KEY>`` variables as a mapping (unknown ``FANFLOW_`` names are errors)."""
        if environ is None:
            return dict(_env_settings())
        out: dict[str, str] = {}
        known = _CHECKS
        for name, value in environ.items():
            if not name.startswith("FANFLOW_"):
                continue
            key = name[len("FANFLOW_") :].lower()
            if key not in known:
                hint = difflib.get_close_matches(key, known, n=1)
                extra = f" (did you mean FANFLOW_{hint[0].upper()}?)" if hint else ""
                raise ConfigError(f"unknown environment variable {name}{extra}")
            out[key] = value
        return out

    @classmethod
    def from_toml(cls, path: str | Path) -> dict[str, Any]:
        """The keys of a ``fanflow.toml`` file (top level, or under ``[fanflow]``)."""
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        except OSError as exc:
            raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from exc
        section = data.get("fanflow", data)
        if not isinstance(section, dict):
            raise ConfigError(
                f"{path}: 'fanflow' must be a table of settings ([fanflow] then key = value lines), "
                f"got {type(section).__name__} {section!r}"
            )
        return dict(section)

    @classmethod
    def load(cls, cwd: str | Path | None = None, environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Defaults < ``fanflow.toml`` < env vars < ``overrides``."""
        global _loaded
        values: dict[str, Any] = {}
        toml_path = os.path.join(cwd, TOML_NAME) if cwd else TOML_NAME
        source = "arguments"
        toml_values = _toml_settings(toml_path)
        env_values = _env_settings() if environ is None else cls.from_env(environ)
        last = _loaded  # read once: another thread may replace it meanwhile
        if toml_values is last[0] and env_values is last[1] and not overrides and cls is Config:
            return last[2]  # the same file and variables as the last load (both kept while unchanged)
        if toml_values is not None:
            values.update(toml_values)
            source = f"{toml_path} or the environment"
        values.update(env_values)
        values.update(overrides)
        config = cls.from_mapping(values, source=source)
        if not overrides and cls is Config:
            _loaded = (toml_values, env_values, config)
        return config

    @classmethod
    def resolve(cls, config: Config | Mapping[str, Any] | None = None, **overrides: Any) -> Config:
        """The config to use for a run: given explicitly, or loaded from file and env."""
        if config is None:
            return cls.load(**overrides)
        if isinstance(config, Config):
            return config.replace(**overrides) if overrides else config
        if isinstance(config, Mapping):
            return cls.from_mapping({**config, **overrides})
        raise ConfigError(f"config must be a fanflow.Config, a dict or None, got {type(config).__name__}")

    def replace(self, **changes: Any) -> Config:
        """This config with ``changes``; only they are checked (this config's values passed already)."""
        _check_known(changes, "arguments")
        new = object.__new__(Config)
        new.__dict__.update(self.__dict__)
        for name, value in changes.items():
            object.__setattr__(new, name, _CHECKS[name](name, value))
        new._check_together()
        return new

    # -- showing --------------------------------------------------------------
    def display(self) -> dict[str, Any]:
        """The values with secrets and URL passwords masked: safe to print or log."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata["secret"] and value is not None:
                value = "***"
            elif isinstance(value, str) and "://" in value:
                value = mask_url(value)
            out[f.name] = value
        return out

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={v!r}" for k, v in self.display().items())
        return f"Config({body})"

    def describe(self) -> dict[str, str]:
        return {f.name: f.metadata["doc"] for f in dataclasses.fields(self)}


_CHECKS: dict[str, Callable[[str, Any], Any]] = {f.name: f.metadata["check"] for f in dataclasses.fields(Config)}
"""Each field's check, in field order: read once (``dataclasses.fields`` builds a tuple per call)."""

BUILT_KEPT = 64
"""Configs :meth:`Config.from_mapping` keeps by their values (a run with no config builds one per call)."""

_built: dict[tuple[Any, ...], Config] = {}


def _built_key(values: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """``values`` as a cache key, each value with its type; None when a value is unhashable.

    With the type: ``1 == True``, but only ``True`` passes as a flag.

    Building a config checks every field (about 100 us, as much as a small run), and
    ``compute()`` without a config builds one per call from the same file and variables.
    A config is frozen, so equal values may share one.
    """
    key = tuple((k, type(v), v) for k, v in values.items())
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _check_known(values: Mapping[str, Any], source: str) -> None:
    """Reject a key that is not a config field, with a suggestion."""
    for key in values:
        if key not in _CHECKS:
            known = tuple(_CHECKS)
            hint = difflib.get_close_matches(key, known, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(f"unknown config key {key!r} in {source}{extra}; known keys: {', '.join(known)}")


_ENV_PREFIX = os.environ.encodekey("FANFLOW_")
_ENV_SEP = os.environ.encodekey("\0")  # in no variable's name: the names joined by it tell the sets apart

_env_names: tuple[Any, list[Any]] = (_ENV_SEP, [])
"""The environment's variable names joined, and which of them are ``FANFLOW_*`` (encoded)."""


def _env_settings() -> dict[str, str]:
    """:meth:`Config.from_env` of the process environment, kept while its ``FANFLOW_*`` variables
    keep their names and values (shared: not to be changed).

    Read from ``os.environ``'s own encoded dict: going through ``os.environ`` decodes
    every variable, and a ``startswith`` per name costs as much, tens of microseconds
    per run for an environment of a few dozen variables. The names are joined (one C
    call) and matched again only when they changed; the values are read every time,
    and decoded and checked only when one changed.
    """
    global _env_names, _env_seen
    env = os.environ
    encoded = env._data  # type: ignore[attr-defined]
    names = _ENV_SEP.join(encoded)
    matched = _env_names  # read once, as the others below: another thread may replace them meanwhile
    if names != matched[0]:
        matched = _env_names = (names, [k for k in encoded if k.startswith(_ENV_PREFIX)])
    raw = [(k, encoded.get(k)) for k in matched[1]]
    seen = _env_seen
    if raw != seen[0]:
        decoded = {env.decodekey(k): env.decodevalue(v) for k, v in raw if v is not None}  # None: unset meanwhile
        seen = _env_seen = (raw, Config.from_env(decoded))
    return seen[1]


_loaded: tuple[dict[str, Any] | None, dict[str, str] | None, Config] = (None, None, Config())
"""The settings of the last :meth:`Config.load` without overrides (the file's, the variables') and its config."""

_env_seen: tuple[list[tuple[Any, Any]], dict[str, str]] = ([], {})
"""The encoded ``FANFLOW_*`` names and values last read, and their settings."""

_toml_seen: tuple[str, tuple[int, ...], dict[str, Any]] = ("", (), {})
"""The ``fanflow.toml`` last read: its path, its file's identity and times, and its settings."""


TOML_SETTLED_S = 2.0
"""A ``fanflow.toml`` changed this recently is parsed on every load: file times are kept to the
kernel's clock tick (a few ms), so a second write in the same tick leaves the same stamp."""


def _toml_settings(path: str) -> dict[str, Any] | None:
    """:meth:`Config.from_toml` of ``path`` if it is a file, else None; parsed again only when the file changed
    (its inode, size or times: shared, not to be changed).

    A run with no config loads its config each time: a parse of the file was tens of
    microseconds, a stat is one system call (``os.access`` first: a missing file, the
    usual case, costs no exception).
    """
    global _toml_seen
    if not os.access(path, os.F_OK):
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None  # removed meanwhile
    if not stat.S_ISREG(st.st_mode):
        return None
    stamp = (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    seen = _toml_seen  # read once: another thread may replace it meanwhile
    if (path, stamp) == seen[:2]:
        return seen[2]
    settings = Config.from_toml(path)
    if time.time_ns() - st.st_ctime_ns > TOML_SETTLED_S * 1e9:  # ctime: moved by every write, and by utime
        _toml_seen = (path, stamp, settings)
    return settings
