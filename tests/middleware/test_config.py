"""gateway.toml: the shipped default loads; bad files fail with the TOML key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from routegate.middleware.config import ConfigError, load_config

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
