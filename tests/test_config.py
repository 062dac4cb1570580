"""Config from keyword args, env vars and fanflow.toml, with clear errors."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import fanflow
from fanflow import config as config_module
from fanflow.config import Config


def test_defaults_are_the_embedded_engine() -> None:
    cfg = Config()
    assert (cfg.store, cfg.platform) == ("memory://", "threads")


def test_keyword_args_are_validated() -> None:
    assert Config(platform="processes", store="redis://h:1/0", max_workers=4).max_workers == 4
    with pytest.raises(fanflow.ConfigError, match="did you mean 'threads'"):
        Config(platform="thread")
    with pytest.raises(fanflow.ConfigError, match="max_workers"):
        Config(max_workers=0)
    with pytest.raises(fanflow.ConfigError, match="unknown scheme 'http'"):
        Config(store="http://x")
    with pytest.raises(fanflow.ConfigError, match="periodic"):
        Config(metrics_upload="periodic:abc")


def test_unknown_key_suggests_the_right_one() -> None:
    with pytest.raises(fanflow.ConfigError, match=r"unknown config key 'stor'.*did you mean 'store'"):
        Config.from_mapping({"stor": "memory://"})


def test_env_vars_are_parsed_and_checked(tmp_path: Path) -> None:
    cfg = Config.load(cwd=tmp_path, environ={"FANFLOW_MAX_WORKERS": "3", "FANFLOW_PROGRESS": "false"})
    assert cfg.max_workers == 3 and cfg.progress is False
    with pytest.raises(fanflow.ConfigError, match="FANFLOW_PLATFORM"):
        Config.load(cwd=tmp_path, environ={"FANFLOW_PLATFROM": "threads"})
    with pytest.raises(fanflow.ConfigError, match="expected a int"):
        Config.load(cwd=tmp_path, environ={"FANFLOW_MAX_WORKERS": "many"})
    assert Config().bind_cpus is True
    assert Config.load(cwd=tmp_path, environ={"FANFLOW_BIND_CPUS": "0"}).bind_cpus is False
    with pytest.raises(fanflow.ConfigError, match="expected true or false"):
        Config.load(cwd=tmp_path, environ={"FANFLOW_BIND_CPUS": "maybe"})


def test_toml_file_then_env_then_overrides(tmp_path: Path) -> None:
    (tmp_path / "fanflow.toml").write_text('max_workers = 5\nplanner = "uniform"\nlease_ms = 2000\n')
    cfg = Config.load(cwd=tmp_path, environ={"FANFLOW_LEASE_MS": "3000"}, planner="none")
    assert (cfg.max_workers, cfg.lease_ms, cfg.planner) == (5, 3000, "none")
    (tmp_path / "fanflow.toml").write_text("[fanflow]\nmystery = 1\n")
    with pytest.raises(fanflow.ConfigError, match="mystery"):
        Config.load(cwd=tmp_path, environ={})
    (tmp_path / "fanflow.toml").write_text("max_workers = [\n")
    with pytest.raises(fanflow.ConfigError, match="not valid TOML"):
        Config.load(cwd=tmp_path, environ={})


def test_secrets_and_passwords_are_masked() -> None:
    cfg = Config(store="redis://user:hunter2@host:6380/1", secret="s3cr3t-value")
    shown = repr(cfg) + str(cfg.display())
    assert "hunter2" not in shown and "s3cr3t-value" not in shown
    assert "redis://user:***@host:6380/1" in shown


def test_resolve_accepts_dicts_and_rejects_junk() -> None:
    assert Config.resolve({"max_workers": 2}).max_workers == 2
    with pytest.raises(fanflow.ConfigError):
        Config.resolve("threads")  # type: ignore[arg-type]


def test_memory_store_cannot_serve_out_of_process_platforms() -> None:
    with pytest.raises(fanflow.ConfigError, match="needs a shared store"):
        Config(platform="processes", store="memory://")


@pytest.mark.parametrize(
    ("url", "shared"),
    [("memory://", False), ("redis://h:1/0", True), ("rediss://h:1/0", True), ("redis+cluster://h:1", True)],
)
def test_every_store_but_memory_is_shared_with_other_processes(url: str, shared: bool) -> None:
    assert Config(store=url).shared_store is shared


@pytest.mark.parametrize("name", ["a{b}", "{ff}", "x}", "a/b", "a b", "é"])
def test_a_pool_name_outside_the_allowed_characters_is_refused(name: str) -> None:
    with pytest.raises(fanflow.ConfigError, match=re.escape("letters, digits, '.', '_' and '-' only")):
        Config(pool=name)


def test_pool_names_of_letters_digits_dots_underscores_and_dashes_are_kept() -> None:
    assert Config(pool="gateway-host.example_1").pool == "gateway-host.example_1"


def test_the_same_values_build_one_config_and_every_change_is_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(config_module, "_built", {})
    checked: list[str] = []
    check_store = config_module._CHECKS["store"]
    monkeypatch.setitem(config_module._CHECKS, "store", lambda k, v: checked.append(v) or check_store(k, v))
    first = Config.load()
    assert Config.load() is first and Config.resolve(None) is first
    assert checked == ["memory://"]  # built (and checked) once, not per run
    monkeypatch.setenv("FANFLOW_MAX_WORKERS", "3")
    assert Config.load().max_workers == 3
    monkeypatch.setenv("FANFLOW_MAX_WORKERS", "4")  # the same names, another value
    assert Config.load().max_workers == 4
    monkeypatch.setenv("FANFLOW_MAX_WORKERS", "3")
    (tmp_path / "fanflow.toml").write_text('planner = "none"\n')
    assert (Config.load().planner, Config.load().max_workers) == ("none", 3)
    monkeypatch.delenv("FANFLOW_MAX_WORKERS")
    assert (Config.load().planner, Config.load().max_workers) == ("none", None)


@pytest.mark.parametrize("settled_s", [0.0, 3600.0])
def test_fanflow_toml_is_parsed_once_until_it_changes(
    settled_s: float, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(config_module, "TOML_SETTLED_S", settled_s)  # 3600: every file is fresh, parsed every time
    parsed: list[str] = []
    from_toml = Config.from_toml.__func__  # type: ignore[attr-defined]
    monkeypatch.setattr(Config, "from_toml", classmethod(lambda cls, path: parsed.append(path) or from_toml(cls, path)))
    toml = tmp_path / "fanflow.toml"
    toml.write_text('sla = "p50"\n')
    assert [Config.load().sla for _ in range(3)] == ["p50"] * 3
    assert len(parsed) == (1 if settled_s == 0 else 3)
    later = toml.stat().st_mtime_ns + 10**9
    toml.write_text('sla = "p90"\n')  # the same size: only the times tell
    os.utime(toml, ns=(later, later))  # a time of its own: two writes within a clock tick share one
    assert Config.load().sla == "p90"
    toml.unlink()
    assert Config.load().sla == "mean"
    toml.mkdir()  # a directory of that name is no config file
    assert Config.load().sla == "mean"
    toml.rmdir()
    toml.write_text("max_workers = [\n")
    for _ in range(2):  # a broken file is refused each time, never kept
        with pytest.raises(fanflow.ConfigError, match="not valid TOML"):
            Config.load()


def test_equal_values_of_another_type_are_checked_as_themselves() -> None:
    assert Config.from_mapping({"progress": True}).progress is True
    with pytest.raises(fanflow.ConfigError, match="expected true or false"):
        Config.from_mapping({"progress": 1})  # equal to True, and cached as True: still refused
    assert Config.from_mapping({"timeout_s": 2}).timeout_s == 2.0
    with pytest.raises(fanflow.ConfigError, match="expected a int"):
        Config.from_mapping({"max_workers": 2.0})


def test_replace_checks_the_changes_and_the_fields_together() -> None:
    base = Config(max_workers=2, store="redis://h:1/0")
    changed = base.replace(planner="none", memory_mb="512")
    assert changed == Config(max_workers=2, store="redis://h:1/0", planner="none", memory_mb=512)
    assert base.planner == "wukong"  # unchanged
    with pytest.raises(fanflow.ConfigError, match="must be >= 1"):
        base.replace(max_workers=0)
    with pytest.raises(fanflow.ConfigError, match="did you mean 'planner'"):
        base.replace(planer="none")
    with pytest.raises(fanflow.ConfigError, match="needs a shared store"):
        base.replace(platform="processes", store="memory://")
