"""gateway.toml: the shipped default loads; bad files fail with the TOML key path."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from routegate.middleware.config import ConfigError, load_config
from routegate.middleware.config_schema import redacted_redis_url

REPO = Path(__file__).resolve().parents[2]


def test_shipped_default_config_loads_with_local_fallback_on_every_route() -> None:
    config = load_config(REPO / "gateway.toml")
    assert config.providers["local"].type == "local"
    assert set(config.routes) == set(config.categories)
    assert all("local" in route.fallbacks for route in config.routes.values())
    assert all(model.provider in config.providers for model in config.models.values())


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


BASE = """
[providers.p]
type = "openai"
base_url = "http://127.0.0.1:1/v1"
[models."m-1"]
provider = "p"
capabilities = { chat = 0.5 }
"""


@pytest.mark.parametrize(("snippet", "expected"), [
    ('[models."m-1".extra]\n', 'models.m-1.extra: unknown key'),
    ("[server]\nport = \"eighty\"\n", "server.port: Expected `int`, got `str`"),
    ("[routes.chat]\ncandidates = [\"nope\"]\n", "routes.chat.candidates: unknown model 'nope'"),
    ("[models.x]\nprovider = \"ghost\"\n", "models.x.provider: unknown provider 'ghost'"),
    ("[models.y]\nprovider = \"p\"\nfallbacks = [\"z\"]\n", "models.y.fallbacks: unknown model 'z'"),
    ("[providers.q]\ntype = \"carrier-pigeon\"\n", "providers.q.type: Invalid enum value"),
    ("[classifier]\nescalate_below = \"low\"\n", "classifier.escalate_below: Expected `float`"),
    ("[classifier]\nescalate_doubtful = \"yes\"\n",
     "classifier.escalate_doubtful: Expected `bool`"),
    ("[retry]\nmax_atempts = 3\n", "retry.max_atempts: unknown key"),
    ("[retry]\nsame_model_5xx = 4\n", "retry.same_model_5xx: must be within [0, 3]"),
    ("[retry]\nsame_model_5xx = -1\n", "retry.same_model_5xx: must be within [0, 3]"),
    ("[adaptive.breaker]\nprobe_backoff_initial_s = 0\n",
     "adaptive.breaker.probe_backoff_initial_s: must be within (0, 86400]"),
    ("[adaptive.breaker]\ncooldown_s = inf\n", "adaptive.breaker.cooldown_s: must be within"),
    ("[adaptive.breaker]\nfailure_rate = nan\n", "adaptive.breaker.failure_rate: must be within"),
    ('[models."m-1".breaker]\nprobe_backoff_initial_s = 1e308\n',
     "models.m-1.breaker.probe_backoff_initial_s: must be within"),
    ('[models.n]\nprovider = "p"\ncontext_window = 0\n', "models.n.context_window: must be within"),
    # [state]
    ('[state]\nbackend = "etcd"\n', "state.backend: Invalid enum value 'etcd'"),
    ("[state]\nbakend = \"redis\"\n", "state.bakend: unknown key"),
    ('[state]\nbackend = "redis"\n', 'state.url: required (or state.url_env) for backend = "redis"'),
    ('[state]\nbackend = "redis"\nurl = "redis://h:1"\nurl_env = "X"\n',
     "state.url: set url or url_env, not both"),
    ('[state]\nurl = "http://h:6379"\n', "state.url: must be redis://"),
    ('[state]\nurl = "redis://:pw@:6379"\n', "state.url: must be redis://"),
    ('[state]\nurl = "redis://h:99999"\n', "state.url: must be redis://"),
    ('[state]\nurl = "redis://h:6379/zero"\n', "(the db is a number)"),
    ('[state]\nurl_env = "NOT A NAME"\n', "state.url_env: not an environment variable name"),
    ('[state]\nkey_prefix = ""\n', "state.key_prefix: must not be empty"),
    ('[state]\nkey_prefix = "route gate:"\n', "state.key_prefix: at most 128 characters, no white"),
    ('[state]\nreplica_id = "a\\tb"\n', "state.replica_id: at most 128 characters, no whitespace"),
    ("[state]\nconnect_timeout_s = 0\n", "state.connect_timeout_s: must be within (0, 10]"),
    ("[state]\nconnect_timeout_s = 10.5\n", "state.connect_timeout_s: must be within (0, 10]"),
    ("[state]\ncommand_timeout_s = 0\n", "state.command_timeout_s: must be within (0, 5]"),
    ("[state]\ncommand_timeout_s = nan\n", "state.command_timeout_s: must be within (0, 5]"),
    ("[state]\nflush_interval_s = 0.01\n", "state.flush_interval_s: must be within [0.05, 5]"),
    ("[state]\nresync_interval_s = 61\n", "state.resync_interval_s: must be within [0.5, 60]"),
    ("[state]\nheartbeat_ttl_s = 0.5\n", "state.heartbeat_ttl_s: must be within [1, 300]"),
    ("[state]\nheartbeat_ttl_s = inf\n", "state.heartbeat_ttl_s: must be within [1, 300]"),
    ("[state]\nfeedback_ttl_s = 5\n", "state.feedback_ttl_s: must be within [10, 604800]"),
    ("[state]\nflush_interval_s = 2\nheartbeat_ttl_s = 2\n",
     "state.heartbeat_ttl_s: must exceed state.flush_interval_s"),
    ('[state]\non_unavailable = "maybe"\n', "state.on_unavailable: Invalid enum value 'maybe'"),
])
def test_bad_config_names_the_key_path(tmp_path: Path, snippet: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, BASE + snippet))
    assert expected in str(info.value)


def test_capability_for_unknown_category_is_rejected(tmp_path: Path) -> None:
    text = BASE.replace("chat = 0.5", "poetry = 0.5")
    with pytest.raises(ConfigError, match=r'models\.m-1\.capabilities\.poetry: unknown category'):
        load_config(_write(tmp_path, text))


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(_write(tmp_path, "[server\nport=1"))
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.toml")


def test_failover_defaults_and_unknown_context_window(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, BASE + "[retry]\nsame_model_5xx = 0\n"))
    assert config.retry.same_model_5xx == 0
    breaker = config.adaptive.breaker
    assert (breaker.probe_backoff_initial_s, breaker.cooldown_s) == (2.0, 5.0)
    model = config.models["m-1"]
    assert model.context_window is None and model.window == 8192


# --- [state]: the live-state backend (issue 13) -----------------------------------------------

SECRET = "hunter2-redis-password"
REDIS_URL = f"redis://routegate:{SECRET}@redis.internal:6380/2"


def test_state_defaults_to_memory_and_redis_keys_load(tmp_path: Path) -> None:
    state = load_config(_write(tmp_path, BASE)).state
    assert (state.backend, state.url, state.key_prefix, state.on_unavailable) == \
        ("memory", "", "routegate:", "open")
    assert (state.connect_timeout_s, state.command_timeout_s, state.flush_interval_s,
            state.resync_interval_s, state.heartbeat_ttl_s) == (0.5, 0.25, 0.25, 2.0, 5.0)
    assert state.resolve_replica_id() == f"{socket.gethostname()}-{os.getpid()}"
    state = load_config(_write(tmp_path, BASE + f'[state]\nbackend = "redis"\nurl = "{REDIS_URL}"\n'
                               'on_unavailable = "closed"\nreplica_id = "gw-1"\n'
                               'key_prefix = "team-a:"\n')).state
    assert (state.backend, state.on_unavailable, state.key_prefix) == ("redis", "closed", "team-a:")
    assert state.resolve_url() == REDIS_URL and state.resolve_replica_id() == "gw-1"
    rediss = load_config(_write(tmp_path, BASE + '[state]\nbackend = "redis"\n'
                                'url = "rediss://cache.example:6380"\n')).state
    assert rediss.resolve_url() == "rediss://cache.example:6380"


def test_redis_url_password_never_shown(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, BASE + f'[state]\nbackend = "redis"\nurl = "{REDIS_URL}"\n'))
    assert config.state.redacted_url == "redis://***@redis.internal:6380/2"
    for shown in (repr(config), str(config), repr(config.state), dict(config.state.__rich_repr__())):
        assert SECRET not in str(shown) and "redis://***@redis.internal:6380/2" in str(shown)
    for url in (f"redis://u:{SECRET}/?#@h:1/0", f"redis://h:1/0?password={SECRET}",
                f"rediss://{SECRET}@h", f"redis://h#{SECRET}"):
        shown = redacted_redis_url(url)
        assert SECRET not in shown and shown.startswith(("redis://", "rediss://")), shown
    # a URL that fails its check is named redacted too
    bad = REDIS_URL.replace("/2", "/two")
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, BASE + f'[state]\nbackend = "redis"\nurl = "{bad}"\n'))
    assert SECRET not in str(info.value) and "redis://***@redis.internal:6380/two" in str(info.value)


def test_redis_url_from_env_var(tmp_path: Path) -> None:
    state = load_config(_write(tmp_path, BASE + '[state]\nbackend = "redis"\n'
                               'url_env = "ROUTEGATE_TEST_REDIS_URL"\n')).state
    assert state.redacted_url == "$ROUTEGATE_TEST_REDIS_URL"
    assert state.resolve_url({"ROUTEGATE_TEST_REDIS_URL": REDIS_URL}) == REDIS_URL
    for environ in ({}, {"ROUTEGATE_TEST_REDIS_URL": ""}):
        with pytest.raises(ConfigError, match=r"^state\.url_env: environment variable "
                           r"ROUTEGATE_TEST_REDIS_URL is unset or empty$"):
            state.resolve_url(environ)
    with pytest.raises(ConfigError) as info:
        state.resolve_url({"ROUTEGATE_TEST_REDIS_URL": f"http://u:{SECRET}@h:1"})
    assert str(info.value).startswith("state.url_env: the value of ROUTEGATE_TEST_REDIS_URL must be")
    assert SECRET not in str(info.value)
