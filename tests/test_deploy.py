"""The replica deployments, without Docker or Kubernetes: docker-compose.replicas.yml (with
deploy/replicas-config.yaml) and deploy/k8s/.

Their broker configs go through the broker's own loader with the environment each broker gets
(its secrets resolved from the compose secrets and the Kubernetes Secret, every host pointed at
127.0.0.1); the wiring between the files is checked key by key; and, marked smoke, the Redis
ACL is tried on a real redis-server started with the files' own arguments, and each deployment
is replayed with real processes: Redis as configured, the fake HIRO, the brokers on their
config and environment, their probes, and the apps' own scripts. scripts/test validates the
same files against the Compose Specification and Kubernetes' schemas.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
import redis
import yaml

from broker.config.load import parse_config
from broker.config.settings import BrokerSettings
from broker.core.tokens import place_token
from broker.engine.redis_store import RedisStore
from broker.engine.store import Replacing, StoreError
from broker.fakes.hiro import FakeHiro
from broker.fakes.server import serve_in_thread
from tests.redisserver import require_redis_server
from tests.support import ROOT, FakeClock, Running, free_port, process, ready, wait_for
from tests.test_container import healthcheck_command

COMPOSE = ROOT / "docker-compose.replicas.yml"
K8S = ROOT / "deploy" / "k8s"
IMAGE_CONFIG = "/etc/broker/config.yaml"
BROKER_PORT = 8181
ACL_PASSWORD_PLACEHOLDER = "PASSWORD"
"""How the README writes the password in the ACL line it shows."""

# -- reading the files ------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def compose_brokers() -> dict[str, dict[str, Any]]:
    """The services that run the broker: those with a config mounted at the image's path."""
    return {
        name: service
        for name, service in compose()["services"].items()
        if any(volume.split(":")[1] == IMAGE_CONFIG for volume in service.get("volumes", []))
    }


def mounted_config(service: dict[str, Any]) -> Path:
    (volume,) = (v for v in service["volumes"] if v.split(":")[1] == IMAGE_CONFIG)
    source, _, mode = str(volume).split(":")
    assert mode == "ro", "the config is mounted read-only"
    return ROOT / source


def compose_secret(name: str) -> Path:
    return ROOT / str(compose()["secrets"][name]["file"])


def with_compose_secrets(text: str, service: dict[str, Any]) -> str:
    """*text* with /run/secrets/<name> pointed at the compose secret's file, for the secrets
    *service* has (any other stays unreadable, as it would be in its container)."""
    for name in service.get("secrets", []):
        text = text.replace(f"/run/secrets/{name}", str(compose_secret(name)))
    return text


def pointed(url: str, place: str) -> str:
    """*url* with its host and port replaced by *place* (``127.0.0.1:6379``), credentials kept."""
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{credentials}@{place}" if credentials else place))


def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    """Every resource in deploy/k8s, by (kind, name)."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in found, f"{key} twice"
            found[key] = doc
    return found


def pod(kind: str, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = manifests()[(kind, name)]["spec"]["template"]["spec"]
    return spec


def container(spec: dict[str, Any], name: str) -> dict[str, Any]:
    every: list[dict[str, Any]] = [*spec.get("initContainers", []), *spec["containers"]]
    (found,) = (c for c in every if c["name"] == name)
    return found


def secret_value(name: str, key: str) -> str:
    secret = manifests()[("Secret", name)]
    if key in secret.get("stringData", {}):
        value: str = secret["stringData"][key]
        return value
    return base64.b64decode(secret["data"][key]).decode()


def container_env(spec: dict[str, Any]) -> dict[str, str]:
    """A container's environment, each secretKeyRef read from the Secret manifest."""
    env: dict[str, str] = {}
    for variable in spec.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        else:
            ref = variable["valueFrom"]["secretKeyRef"]
            env[variable["name"]] = secret_value(ref["name"], ref["key"])
    return env


def mounted_configmap(spec: dict[str, Any], pod_spec: dict[str, Any]) -> str:
    """The config the container finds at /etc/broker/config.yaml (a ConfigMap volume)."""
    directory, _, file_name = IMAGE_CONFIG.rpartition("/")
    (mount,) = (m for m in spec["volumeMounts"] if m["mountPath"] == directory)
    assert mount["readOnly"] is True
    (volume,) = (v for v in pod_spec["volumes"] if v["name"] == mount["name"])
    text: str = manifests()[("ConfigMap", volume["configMap"]["name"])]["data"][file_name]
    return text


def broker_pod() -> tuple[dict[str, Any], dict[str, Any]]:
    """The app Deployment's pod spec and its broker sidecar."""
    spec = pod("Deployment", "app")
    return spec, container(spec, "broker")


def services() -> set[str]:
    return {name for kind, name in manifests() if kind == "Service"}


def acl_users(text: str) -> dict[str, list[str]]:
    """An ACL file's users and their rules (``user NAME rule rule ...`` per line)."""
    users: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip():
            keyword, name, *rules = line.split()
            assert keyword == "user", line
            users[name] = rules
    return users


def acl_password(rules: list[str]) -> str:
    (password,) = (rule[1:] for rule in rules if rule.startswith(">"))
    return password


def load(text: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> BrokerSettings:
    """*text* through the broker's loader, with *env* as the broker's environment: the
    BROKER_* overrides and every {env: ...} secret come from it alone."""
    for name in re.findall(r"\{env: *([A-Za-z_][A-Za-z0-9_]*)\}", text):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return parse_config(text, source="deploy-config", environ=env)


def readyz_command() -> list[str]:
    return [arg.replace("/healthz", "/readyz") for arg in healthcheck_command()]


# -- docker-compose.replicas.yml --------------------------------------------------------------


def test_every_compose_broker_loads_its_config_with_the_same_store(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """deploy/replicas-config.yaml through the real loader, once per broker service with that
    service's environment and secrets: all share one Redis, prefix, lease and state_key."""
    brokers = compose_brokers()
    assert sorted(brokers) == ["broker-1", "broker-2", "broker-3"]
    urls = {service["environment"]["BROKER_REDIS_URL"] for service in brokers.values()}
    assert len(urls) == 1, "every replica must use the same Redis"
    (url,) = urls
    assert urlsplit(url).hostname == "redis"
    stores = []
    for service in brokers.values():
        text = with_compose_secrets(mounted_config(service).read_text(), service)
        env = {**service["environment"], "BROKER_REDIS_URL": pointed(url, "127.0.0.1:6379")}
        settings = load(text, env, monkeypatch)
        assert settings.store.url is not None
        assert urlsplit(settings.store.url.get_secret_value()).hostname == "127.0.0.1"
        assert settings.state_key is not None
        assert settings.host == "127.0.0.1", "the apps share its network namespace"
        assert settings.port == BROKER_PORT
        assert settings.state_dir is None
        stores.append((settings.store.key_prefix, settings.store.lease_ttl, settings.state_key))
    assert stores[0][0] == "broker:"
    assert len(set(stores)) == 1, "same key_prefix, lease_ttl and state_key everywhere"


def test_compose_replicas_wiring() -> None:
    """Hardening, dependencies, healthchecks, Redis's persistence and ACL, the apps."""
    spec = compose()
    services = spec["services"]
    for name, service in services.items():
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert service["security_opt"] == ["no-new-privileges:true"], name
        assert "ports" not in service, name
    for name, service in compose_brokers().items():
        assert service["image"] == "credential-broker:local", name
        assert "entrypoint" not in service, "the image's ENTRYPOINT"
        assert "command" not in service, "the image's CMD"
        assert service["depends_on"] == {
            "redis": {"condition": "service_healthy"},
            "idp": {"condition": "service_healthy"},
        }, name
        assert service["healthcheck"]["test"] == ["CMD", *healthcheck_command()], name
        assert mounted_config(service) == ROOT / "deploy" / "replicas-config.yaml"
    # The fake identity provider exactly as in docker-compose.yml.
    single: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert services["idp"] == single["services"]["idp"]
    config = yaml.safe_load((ROOT / "deploy" / "replicas-config.yaml").read_text())
    idp = services["idp"]["command"]
    assert config["providers"]["hiro"]["url"] == f"http://idp:{idp[idp.index('--port') + 1]}"

    redis_service = services["redis"]
    assert re.fullmatch(r"redis:7\.\d+\.\d+", redis_service["image"]), "pinned to a release"
    command = redis_service["command"]
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes"
    data = command[command.index("--dir") + 1]
    (volume,) = redis_service["volumes"]
    assert volume.split(":") == ["redis-data", data]
    assert "redis-data" in spec["volumes"]
    assert "redis-cli ping" in " ".join(redis_service["healthcheck"]["test"])
    acl_file = command[command.index("--aclfile") + 1]
    assert acl_file.removeprefix("/run/secrets/") in redis_service["secrets"]

    for app, broker in (("app-1", "broker-1"), ("app-2", "broker-2")):
        assert services[app]["network_mode"] == f"service:{broker}"
        assert services[app]["depends_on"] == {broker: {"condition": "service_healthy"}}
        (script,) = services[app]["command"]
        assert re.findall(r"http://127\.0\.0\.1:(\d+)/token/(\w+)", script) == [
            (str(BROKER_PORT), "hiro")
        ]
        assert "secrets" not in services[app], "an app holds no secret"


def test_compose_acl_matches_the_brokers_url_and_prefix() -> None:
    service = compose()["services"]["redis"]
    command = service["command"]
    acl_secret = command[command.index("--aclfile") + 1].removeprefix("/run/secrets/")
    users = acl_users(compose_secret(acl_secret).read_text())
    url = urlsplit(compose()["services"]["broker-1"]["environment"]["BROKER_REDIS_URL"])
    prefix = yaml.safe_load((ROOT / "deploy" / "replicas-config.yaml").read_text())["store"]
    assert_acl(users, url.username, url.password, prefix["key_prefix"])


def assert_acl(
    users: dict[str, list[str]], user: str | None, password: str | None, prefix: str
) -> None:
    assert users["default"] == ["on", "nopass", "resetkeys", "resetchannels", "-@all", "+ping"]
    assert user == "broker"
    rules = users[user]
    assert acl_password(rules) == password, "the URL's password is the ACL user's"
    assert rules.index("resetkeys") < rules.index(f"~{prefix}*"), "only the prefix's keys"
    assert rules.index("resetchannels") < rules.index(f"&{prefix}*"), "only its channels"
    assert rules.index("-@all") < min(i for i, rule in enumerate(rules) if rule.startswith("+"))
    assert not any(rule.startswith(("~", "&", "%")) and rule[1:] != f"{prefix}*" for rule in rules)


# -- deploy/k8s -------------------------------------------------------------------------------


def test_the_k8s_configmap_loads_with_the_sidecars_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ConfigMap's config through the real loader, with the environment the sidecar
    gets from the Secret manifest (Redis pointed at 127.0.0.1)."""
    spec, broker = broker_pod()
    env = container_env(broker)
    text = mounted_configmap(broker, spec)
    named = set(re.findall(r"\{env: *([A-Za-z_][A-Za-z0-9_]*)\}", text))
    assert named <= set(env), f"the sidecar lacks {named - set(env)}"
    url = env["BROKER_REDIS_URL"]
    assert urlsplit(url).hostname in services(), "Redis by an in-cluster Service name"
    settings = load(text, {**env, "BROKER_REDIS_URL": pointed(url, "127.0.0.1:6379")}, monkeypatch)
    assert settings.store.backend == "redis"
    assert settings.store.url is not None
    assert urlsplit(settings.store.url.get_secret_value()).hostname == "127.0.0.1"
    assert settings.state_key is not None
    assert settings.host == "127.0.0.1", "reachable from its own pod only"
    assert settings.port == BROKER_PORT
    assert settings.providers
    for name, provider in yaml.safe_load(text)["providers"].items():
        host = urlsplit(provider.get("url") or provider["token_url"]).hostname
        assert host in services() or host == "127.0.0.1", f"{name}: {host} is not in the cluster"


def test_k8s_broker_is_a_native_sidecar_with_probes_and_a_locked_down_container() -> None:
    spec, broker = broker_pod()
    assert [c["name"] for c in spec["initContainers"]] == ["broker"]
    assert broker["restartPolicy"] == "Always", "a native sidecar (Kubernetes >= 1.29)"
    assert "command" not in broker, "the image's ENTRYPOINT"
    assert "args" not in broker, "the image's CMD"
    assert broker["livenessProbe"]["exec"]["command"] == healthcheck_command()
    assert broker["readinessProbe"]["exec"]["command"] == readyz_command()
    assert broker["startupProbe"]["exec"]["command"] == readyz_command()
    assert spec["enableServiceLinks"] is False, "a Service named broker would set BROKER_PORT"
    assert spec["automountServiceAccountToken"] is False
    for each in (broker, container(spec, "app")):
        security = {**spec["securityContext"], **each["securityContext"]}
        assert security["runAsNonRoot"] is True
        assert security["runAsUser"] == 10001
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
        assert {"cpu", "memory"} <= set(each["resources"]["requests"])
        assert "memory" in each["resources"]["limits"]
    app = container(spec, "app")
    script = " ".join(app.get("command", []) + app.get("args", []))
    config = yaml.safe_load(mounted_configmap(broker, spec))
    providers = re.findall(r"http://127\.0\.0\.1:(\d+)/token/([\w-]+)", script)
    assert providers == [(str(BROKER_PORT), "hiro")]
    assert all(name in config["providers"] for _, name in providers)


def test_k8s_redis_statefulset_keeps_an_aof_on_its_volume_behind_a_headless_service() -> None:
    found = manifests()
    statefulset = found[("StatefulSet", "redis")]
    service = found[("Service", statefulset["spec"]["serviceName"])]
    assert service["spec"]["clusterIP"] == "None"
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    spec = statefulset["spec"]["template"]["spec"]
    redis_container = container(spec, "redis")
    assert re.fullmatch(r"redis:7\.\d+\.\d+", redis_container["image"])
    args = redis_container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    mounts = {m["mountPath"]: m["name"] for m in redis_container["volumeMounts"]}
    assert mounts[args[args.index("--dir") + 1]] == claim["metadata"]["name"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert "redis-cli ping" in " ".join(redis_container[probe]["exec"]["command"])
    security = {**spec["securityContext"], **redis_container["securityContext"]}
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}


def k8s_acl_text() -> str:
    spec = pod("StatefulSet", "redis")
    redis_container = container(spec, "redis")
    args = redis_container["args"]
    directory, _, key = args[args.index("--aclfile") + 1].rpartition("/")
    (mount,) = (m for m in redis_container["volumeMounts"] if m["mountPath"] == directory)
    (volume,) = (v for v in spec["volumes"] if v["name"] == mount["name"])
    return secret_value(volume["secret"]["secretName"], key)


def test_k8s_acl_matches_the_brokers_url_and_prefix() -> None:
    spec, broker = broker_pod()
    url = urlsplit(container_env(broker)["BROKER_REDIS_URL"])
    prefix = yaml.safe_load(mounted_configmap(broker, spec))["store"]["key_prefix"]
    assert_acl(acl_users(k8s_acl_text()), url.username, url.password, prefix)


def test_both_acls_and_the_readme_grant_the_same_commands() -> None:
    """One ACL for the broker user: compose's, the k8s Secret's and the README's line."""
    command = compose()["services"]["redis"]["command"]
    acl_path = command[command.index("--aclfile") + 1].removeprefix("/run/secrets/")
    lines = []
    for users in (acl_users(compose_secret(acl_path).read_text()), acl_users(k8s_acl_text())):
        rules = users["broker"]
        password = acl_password(rules)
        lines.append(
            " ".join(["user", "broker", *rules]).replace(password, ACL_PASSWORD_PLACEHOLDER)
        )
    assert lines[0] == lines[1]
    assert lines[0] in (ROOT / "README.md").read_text()


# -- real Redis, real processes ---------------------------------------------------------------


@contextlib.contextmanager
def redis_as_deployed(argv: list[str], files: dict[str, Path], tmp: Path) -> Iterator[int]:
    """Run redis-server with a deployment's own arguments, its container paths in *files*
    mapped to local ones, on a free 127.0.0.1 port; yield the port."""
    program = require_redis_server()
    assert argv[0] == "redis-server"
    port = free_port()
    log = tmp / "redis.log"
    args = [program, *(str(files.get(arg, arg)) for arg in argv[1:])]
    args += ["--port", str(port), "--bind", "127.0.0.1", "--logfile", str(log)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def answers() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"redis-server exited: {log.read_text() if log.exists() else ''}")
        with contextlib.suppress(redis.RedisError), redis.Redis(port=port) as client:
            return bool(client.ping())  # the user `default` may PING
        return False

    try:
        wait_for(answers)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def probe(command: list[str], port: int) -> int:
    """Run a container's probe or healthcheck command here: its `python` is ours, and
    127.0.0.1:8181 and redis-cli are pointed at *port*."""
    if command[0] == "CMD-SHELL":
        command = ["sh", "-c", command[1]]
    elif command[0] == "CMD":
        command = command[1:]
    command = [sys.executable if arg == "python" else arg for arg in command]
    command = [
        arg.replace(f"127.0.0.1:{BROKER_PORT}", f"127.0.0.1:{port}").replace(
            "redis-cli ", f"redis-cli -p {port} "
        )
        for arg in command
    ]
    return subprocess.run(command, capture_output=True, timeout=15, check=False).returncode


def compose_redis(tmp: Path) -> contextlib.AbstractContextManager[int]:
    service = compose()["services"]["redis"]
    files: dict[str, Path] = {
        f"/run/secrets/{name}": compose_secret(name) for name in service["secrets"]
    }
    for volume in service["volumes"]:
        files[volume.split(":")[1]] = tmp / "data"
    (tmp / "data").mkdir()
    return redis_as_deployed(service["command"], files, tmp)


def k8s_redis(tmp: Path) -> contextlib.AbstractContextManager[int]:
    spec = pod("StatefulSet", "redis")
    redis_container = container(spec, "redis")
    files: dict[str, Path] = {}
    for mount in redis_container["volumeMounts"]:
        (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]] or [{}]
        if "secret" in volume:
            secret = manifests()[("Secret", volume["secret"]["secretName"])]
            for key in secret.get("stringData", {}):
                local = tmp / key
                local.write_text(secret_value(volume["secret"]["secretName"], key))
                files[f"{mount['mountPath']}/{key}"] = local
        else:
            files[mount["mountPath"]] = tmp / "data"
    (tmp / "data").mkdir()
    return redis_as_deployed(redis_container["args"], files, tmp)


def deployed_url(kind: str) -> str:
    if kind == "compose":
        url: str = compose()["services"]["broker-1"]["environment"]["BROKER_REDIS_URL"]
        return url
    return container_env(broker_pod()[1])["BROKER_REDIS_URL"]


@pytest.mark.smoke  # a redis-server of its own, with the deployment's arguments and ACL
@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["compose", "k8s"])
async def test_the_deployed_acl_lets_the_broker_do_everything_it_does(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """As the deployment's Redis user: broker check's facts, refresh tokens, publishing and
    hearing announcements, the lease with its renewals and release; nothing else."""
    with (compose_redis if kind == "compose" else k8s_redis)(tmp_path) as port:
        url = pointed(deployed_url(kind), f"127.0.0.1:{port}")
        clock = FakeClock()
        # A short lease, held for longer than a third of it: renewed in Redis (a Lua script).
        one, other = (
            RedisStore(url, clock=clock, key_prefix="broker:", lease_ttl=0.6) for _ in "ab"
        )
        try:
            facts = await one.server_facts()
            assert facts.aof, "--appendonly yes"
            assert facts.save_points is not None, "CONFIG GET save allowed"
            await one.save_refresh_token("hiro", "login", "rt-0123456789")
            listening = other.announcements()
            assert await anext(listening) == "*"  # subscribed
            token = place_token(
                "at-0123456789",
                sent_at=clock.monotonic(),
                sent_at_wall=clock.wall(),
                lifetime=300.0,
                etag_key=b"k" * 32,
                serve_min_remaining=1.0,
            )

            async def wait_for_the_lease() -> None:
                async with other.lease("hiro"):  # waits, asking how long it has left
                    pass

            async with one.lease("hiro"):
                waiting = asyncio.create_task(wait_for_the_lease())
                await asyncio.sleep(0.5)
                await one.publish("hiro", "login", token)
                # The fenced save of a rotated refresh token (WATCH, MULTI, EXEC).
                await one.save_refresh_token(
                    "hiro", "login", "rt-1123456789", replacing=Replacing("rt-0123456789")
                )
            await asyncio.wait_for(waiting, 5)
            assert await anext(listening) == "hiro"
            await listening.aclose()
            stored = await other.load("hiro", "login")
            assert stored.refresh_token == "rt-1123456789"
            assert stored.token is not None
            assert stored.token.etag == token.etag
            await one.forget("hiro")
            assert (await other.load("hiro", "login")).refresh_token is None
            with redis.Redis.from_url(url) as client:
                assert client.ping()
            # Nothing outside the prefix: another deployment's keys stay out of reach.
            stranger = RedisStore(url, clock=clock, key_prefix="other:")
            with pytest.raises(StoreError, match="permission"):
                await stranger.save_refresh_token("hiro", "login", "rt-0123456789")
            await stranger.aclose()
        finally:
            await one.aclose()
            await other.aclose()
        warnings = [r.getMessage() for r in caplog.records if r.levelname in ("WARNING", "ERROR")]
        assert warnings == [], "every command the store sent was allowed"
        # Without the password, only PING: the healthcheck's, nothing else.
        with redis.Redis(port=port) as anonymous, pytest.raises(redis.ResponseError):
            anonymous.get("broker:hiro:refresh")
        healthcheck = (
            compose()["services"]["redis"]["healthcheck"]["test"]
            if kind == "compose"
            else container(pod("StatefulSet", "redis"), "redis")["readinessProbe"]["exec"][
                "command"
            ]
        )
        assert probe(healthcheck, port) == 0


def start_brokers(
    count: int,
    config: Path,
    env: dict[str, str],
    stack: contextlib.ExitStack,
) -> list[tuple[str, Running]]:
    """*count* brokers on *config* with *env*, each on its own port; wait until all are ready."""
    started = []
    for _ in range(count):
        port = free_port()
        running = stack.enter_context(
            process("serve", "--config", str(config), env={**env, "BROKER_PORT": str(port)})
        )
        started.append((f"http://127.0.0.1:{port}", running))
    for base, running in started:
        wait_for(lambda: ready(base, running.proc), timeout=30)  # noqa: B023 (called at once)
    return started


def app_script(script: str, broker: str, idp: str) -> str:
    return script.replace(f"http://127.0.0.1:{BROKER_PORT}", broker).replace("http://idp:9001", idp)


def etag_of(base: str) -> str:
    etag: str = httpx.get(f"{base}/token/hiro", timeout=10).json()["etag"]
    return etag


@pytest.mark.smoke  # real processes: Redis, the fake HIRO, three brokers, two apps
def test_compose_replicas_replayed_one_login_for_three_brokers(tmp_path: Path) -> None:
    """The compose project without Docker: Redis with its command and ACL, the brokers on
    their config, environment and secrets, their healthcheck, then the apps' own scripts.
    The fake HIRO sees one login; both apps got the same token."""
    spec = compose()["services"]
    fake = FakeHiro()
    with (
        compose_redis(tmp_path) as port,
        serve_in_thread(fake.app) as idp,
        contextlib.ExitStack() as stack,
    ):
        brokers = compose_brokers()
        service = brokers["broker-1"]
        config = tmp_path / "config.yaml"
        config.write_text(with_compose_secrets(mounted_config(service).read_text(), service))
        env = {
            **service["environment"],
            "BROKER_REDIS_URL": pointed(
                service["environment"]["BROKER_REDIS_URL"], f"127.0.0.1:{port}"
            ),
            "BROKER_PROVIDERS__HIRO__URL": idp,
        }
        started = start_brokers(len(brokers), config, env, stack)
        by_service = dict(zip(sorted(brokers), started, strict=True))
        assert probe(service["healthcheck"]["test"], int(started[0][0].rsplit(":", 1)[1])) == 0

        printed = []
        for app in ("app-1", "app-2"):
            base = by_service[spec[app]["network_mode"].removeprefix("service:")][0]
            (script,) = spec[app]["command"]
            done = subprocess.run(
                [sys.executable, "-c", app_script(script, base, idp)],
                env={"PATH": "/usr/bin:/bin", **spec[app]["environment"]},
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert done.returncode == 0, done.stderr
            assert f"{app}: token " in done.stdout
            assert "me/account -> 200" in done.stdout, done.stdout
            printed.append(done.stdout.split()[2])
        etags = {etag_of(base) for base, _ in started}
        assert len(etags) == 1, "the three replicas serve one token"
        assert {json.loads(etag) for etag in printed} == {json.loads(e) for e in etags}
        assert len(fake.token_requests()) == 1, "one login for three replicas"


@pytest.mark.smoke  # real processes: Redis, the fake HIRO, two pods' brokers and apps
def test_k8s_pods_replayed_one_login_and_the_probes_pass(tmp_path: Path) -> None:
    """deploy/k8s without a cluster: Redis with the StatefulSet's args and the Secret's ACL,
    two of the Deployment's pods (the sidecar on the ConfigMap with the Secret's environment,
    its startup, readiness and liveness probes, the app's script until its first line)."""
    spec, broker = broker_pod()
    app = container(spec, "app")
    fake = FakeHiro()
    with (
        k8s_redis(tmp_path) as port,
        serve_in_thread(fake.app) as idp,
        contextlib.ExitStack() as stack,
    ):
        config = tmp_path / "config.yaml"
        config.write_text(mounted_configmap(broker, spec))
        env = container_env(broker)
        env["BROKER_REDIS_URL"] = pointed(env["BROKER_REDIS_URL"], f"127.0.0.1:{port}")
        env["BROKER_PROVIDERS__HIRO__URL"] = idp
        replicas = manifests()[("Deployment", "app")]["spec"]["replicas"]
        started = start_brokers(replicas, config, env, stack)
        for base, _ in started:
            broker_port = int(base.rsplit(":", 1)[1])
            for name in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert probe(broker[name]["exec"]["command"], broker_port) == 0, name
            (script,) = app["args"]
            first = first_line(app_script(script, base, idp), app)
            assert first.startswith("app: token "), first
            assert "me/account -> 200" in first
        assert len({etag_of(base) for base, _ in started}) == 1
        assert len(fake.token_requests()) == 1, "one login for every pod"


def first_line(script: str, app: dict[str, Any], timeout: float = 30.0) -> str:
    """Run a long-running app container's `python -c` script; its first line, then stop it."""
    assert app["command"] == ["python", "-c"]
    with subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    ) as proc:
        try:
            assert proc.stdout is not None
            ready_to_read, _, _ = select.select([proc.stdout], [], [], timeout)
            assert ready_to_read, f"no output within {timeout:g} s"
            return proc.stdout.readline().strip()
        finally:
            proc.kill()
