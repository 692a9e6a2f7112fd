"""What the container image runs, and what docker-compose.yml runs, without an engine.

The runtime stage's ENTRYPOINT + CMD, ENV, HEALTHCHECK and STOPSIGNAL are run with this
checkout's broker (the image installs the same wheel), with deploy/compose-config.yaml
adapted to 127.0.0.1 and a fake HIRO, and the compose apps' scripts run against it. Commands
are parsed out of the Dockerfile and docker-compose.yml, so the tests and the files cannot
drift apart. The image itself is built and its root filesystem run by scripts/image-test.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from broker.fakes import hiro
from broker.fakes.hiro import FakeHiro
from broker.fakes.server import serve_in_thread
from tests.support import compose_secret_file, free_port, secret_names, wait_for

pytestmark = pytest.mark.smoke  # real processes, sockets or programs: see pyproject's markers

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_CONFIG = ROOT / "deploy" / "compose-config.yaml"
SECRET_FILE = ROOT / "deploy" / "secrets" / "hiro_password.txt"
IMAGE_VENV = "/opt/broker"
IMAGE_CONFIG = "/etc/broker/config.yaml"
IMAGE_HOME = "/var/lib/broker"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def dockerfile() -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
        pending = ""
    return instructions


def stages() -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for instruction in dockerfile():
        if instruction.keyword == "FROM":
            result.append([])
        if result:  # an ARG before the first FROM belongs to no stage
            result[-1].append(instruction)
    return result


def only(stage: list[Instruction], keyword: str) -> str:
    found = [i.args for i in stage if i.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword}, found {found}"
    return found[0]


def healthcheck_command() -> list[str]:
    """The HEALTHCHECK's exec-form command (after its --options and CMD)."""
    _, cmd, exec_form = only(runtime_stage(), "HEALTHCHECK").partition(" CMD ")
    assert cmd, "HEALTHCHECK must use CMD"
    command: list[str] = json.loads(exec_form)
    return command


def env_assignments(args: str, env: dict[str, str]) -> dict[str, str]:
    """ENV KEY=value ... with $PATH expanded from *env* (as Docker does)."""
    result = {}
    for word in shlex.split(args):
        key, _, value = word.partition("=")
        result[key] = value.replace("$PATH", env.get("PATH", ""))
        assert "$" not in result[key], f"the test expands only $PATH: {word}"
    return result


def dockerignore_allowed() -> set[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return {line[1:].rstrip("/") for line in lines if line.startswith("!")}


def runtime_stage() -> list[Instruction]:
    """The stage named ``runtime``: what the default target and the demo build on."""
    (stage,) = [s for s in stages() if s[0].args.endswith(" AS runtime")]
    return stage


def image_env(venv: Path, home: Path, config: Path) -> dict[str, str]:
    """The runtime stage's ENV, with the image's paths mapped onto *venv*, *home*, *config*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BROKER_", "VIRTUAL_ENV"))}
    env.pop("PYTHONPATH", None)
    for args in (i.args for i in runtime_stage() if i.keyword == "ENV"):
        mapped = (
            args.replace(IMAGE_VENV, str(venv))
            .replace(IMAGE_CONFIG, str(config))
            .replace(IMAGE_HOME, str(home))
        )
        env.update(env_assignments(mapped, env))
    return env


def local_secret(path: str) -> str:
    """/run/secrets/<name> in a container is the compose secret's file here."""
    name = path.removeprefix("/run/secrets/")
    file: str = compose()["secrets"][name]["file"]
    return str(compose_secret_file(file))


def compose_config(**changes: Any) -> dict[str, Any]:
    """deploy/compose-config.yaml with secrets read from deploy/secrets/, plus *changes*."""
    config: dict[str, Any] = yaml.safe_load(COMPOSE_CONFIG.read_text())
    config["providers"]["hiro"]["password"] = {"file": str(SECRET_FILE)}
    for client in config.get("clients", {}).values():
        client["key"] = {"file": local_secret(client["key"]["file"])}
    for key, value in changes.items():
        if key == "url":
            config["providers"]["hiro"]["url"] = value
        else:
            config[key] = value
    return config


def compose() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return services


def files_under(path: Path) -> set[Path]:
    return {p for p in path.rglob("*") if p.is_file()}


def test_image_entrypoint_healthcheck_apps_and_sigterm(tmp_path: Path) -> None:
    """The runtime stage's ENTRYPOINT + CMD, with its ENV, serve the compose config on another
    port than 8181; its HEALTHCHECK command finds that port, passes, and fails once the broker
    is gone; the compose apps get tokens; STOPSIGNAL gives exit 0 and nothing is written outside
    the broker's home. The broker is this checkout's (the image installs the same wheel):
    scripts/image-test builds the real image and runs these from its root filesystem."""
    runtime = runtime_stage()
    venv = Path(sys.executable).parent.parent
    home = tmp_path / "var-lib-broker"
    home.mkdir()
    config = tmp_path / "etc-broker" / "config.yaml"
    config.parent.mkdir()
    env = image_env(venv, home, config)
    assert only(runtime, "WORKDIR") == IMAGE_HOME
    assert only(runtime, "EXPOSE") == "8181"
    assert only(runtime, "USER") == "10001:10001"
    assert env["BROKER_CONFIG"] == str(config)
    address_file = Path(env["BROKER_ADDRESS_FILE"])
    assert address_file.parent == home, "the address file must be in the writable home"

    port = free_port()
    fake = FakeHiro()
    with serve_in_thread(fake.app) as idp_url:
        # The image's state_dir lives under its home (/var/lib/broker); here under the stand-in.
        image_state = compose_config()["state_dir"]
        assert image_state.startswith(f"{IMAGE_HOME}/")
        state_dir = str(home / image_state.removeprefix(f"{IMAGE_HOME}/"))
        settings = compose_config(host="127.0.0.1", port=port, url=idp_url, state_dir=state_dir)
        config.write_text(yaml.safe_dump(settings))
        command = [*json.loads(only(runtime, "ENTRYPOINT")), *json.loads(only(runtime, "CMD"))]
        executable = shutil.which(command[0], path=env["PATH"])
        assert executable == str(venv / "bin" / "broker")
        assert shutil.which("python", path=env["PATH"]) == str(venv / "bin" / "python")
        check = healthcheck_command()
        assert not any("8181" in arg for arg in check), "the HEALTHCHECK must not assume a port"
        before = files_under(tmp_path) - files_under(home)
        log = (tmp_path / "broker.log").open("w")
        proc = subprocess.Popen(
            [executable, *command[1:]], cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for(lambda: _status(f"{base}/readyz") == 200, timeout=20)
            health = subprocess.run(check, env=env, capture_output=True, timeout=10, check=False)
            assert health.returncode == 0, health.stderr
            gate = compose()["services"]["broker-ready"]
            gate_env = {**env, **gate["environment"]}
            assert gate_env["BROKER_URL"] == "http://127.0.0.1:8181"
            gate_env["BROKER_URL"] = base
            waited = subprocess.run(
                [executable, *gate["command"]],
                env=gate_env,
                capture_output=True,
                timeout=70,
                check=False,
            )
            assert waited.returncode == 0, waited.stderr

            for name in ("app-sidecar", "app-network"):
                output = _run_compose_app(name, env, broker=base, idp=idp_url)
                assert "me/account -> 200" in output, output
                assert hiro.DEMO_USERNAME in output
        finally:
            stop = signal.Signals[only(runtime, "STOPSIGNAL")]
            proc.send_signal(stop)
            try:
                returncode = proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise
            finally:
                log.close()
    output = (tmp_path / "broker.log").read_text()
    assert returncode == 0, output
    assert files_under(tmp_path) - files_under(home) == before | {tmp_path / "broker.log"}
    assert not address_file.exists()
    gone = subprocess.run(check, env=env, capture_output=True, timeout=10, check=False)
    assert gone.returncode != 0


def test_the_build_copies_only_what_dockerignore_lets_through() -> None:
    allowed = dockerignore_allowed()
    for stage in stages():
        for copy in (i.args for i in stage if i.keyword == "COPY"):
            if copy.startswith("--from="):
                continue
            *sources, _ = shlex.split(copy)
            for source in sources:
                assert source.rstrip("/") in allowed, f".dockerignore excludes {source}"
                assert (ROOT / source).exists(), source


def _status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None


def _run_compose_app(name: str, env: dict[str, str], *, broker: str, idp: str) -> str:
    """Run a compose app's `python -c` script with the venv's python, URLs pointed at ours."""
    service = compose()["services"][name]
    assert service["entrypoint"] == ["python", "-c"]
    (script,) = service["command"]
    script = script.replace("http://127.0.0.1:8181", broker).replace("http://idp:9001", idp)
    app_env = {
        **env,
        **{
            k: local_secret(v)
            if v.startswith("/run/secrets/")
            else v.replace("http://broker:8181", broker)
            for k, v in service.get("environment", {}).items()
        },
    }
    done = subprocess.run(
        [shutil.which("python", path=env["PATH"]) or "python", "-c", script],
        env=app_env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, f"{name}: {done.stdout}\n{done.stderr}"
    return done.stdout


def test_broker_check_accepts_the_compose_config(tmp_path: Path) -> None:
    """`broker check` accepts deploy/compose-config.yaml (secret file path pointed at deploy/;
    state_dir, which check tries to write, under tmp_path)."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(compose_config(state_dir=str(tmp_path / "state"))))
    done = subprocess.run(
        [sys.executable, "-m", "broker", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "OK, 1 provider(s)" in done.stdout
    assert "listen: http://0.0.0.0:8181" in done.stdout


def test_compose_file_agrees_with_dockerfile_and_config() -> None:
    """Healthcheck, config mount, secret, state volume and ports agree across the files."""
    services = compose()["services"]
    broker = services["broker"]
    runtime = runtime_stage()
    assert broker["healthcheck"]["test"] == ["CMD", *healthcheck_command()]
    assert f"./deploy/compose-config.yaml:{IMAGE_CONFIG}:ro" in broker["volumes"]
    assert broker["read_only"] is True
    assert broker["cap_drop"] == ["ALL"]
    assert only(runtime, "USER") == "10001:10001"
    assert "broker-state:/var/lib/broker" in broker["volumes"]
    assert "broker-state" in compose()["volumes"]
    assert all("ports" not in service for service in services.values())
    assert services["app-sidecar"]["network_mode"] == "service:broker"
    gate = services["broker-ready"]
    assert gate["network_mode"] == "service:broker"
    assert gate["command"] == ["wait", "--ready", "--timeout", "60"]
    assert "entrypoint" not in gate, "the image's: broker"
    for app in ("app-sidecar", "app-network"):
        assert services[app]["depends_on"] == {
            "broker-ready": {"condition": "service_completed_successfully"}
        }

    broker_secrets = dict(secret_names(broker))
    assert all(source == target for source, target in broker_secrets.items())
    secret = next(iter(broker_secrets))
    assert compose()["secrets"][secret]["file"] == "./deploy/secrets/hiro_password.txt"
    config = yaml.safe_load(COMPOSE_CONFIG.read_text())
    for name, app in (("sidecar", "app-sidecar"), ("network-app", "app-network")):
        key_secret = config["clients"][name]["key"]["file"].removeprefix("/run/secrets/")
        assert key_secret in broker_secrets, "the broker must know every client key"
        assert secret_names(services[app]) == [(key_secret, key_secret)], "only its own key"
        assert services[app]["environment"]["BROKER_KEY_FILE"] == f"/run/secrets/{key_secret}"
    assert SECRET_FILE.read_text().strip() == hiro.DEMO_PASSWORD
    provider = yaml.safe_load(COMPOSE_CONFIG.read_text())["providers"]["hiro"]
    assert provider["password"] == {"file": f"/run/secrets/{secret}"}
    assert provider["client_id"] == hiro.DEMO_CLIENT_ID
    assert provider["client_secret"] == hiro.DEMO_CLIENT_SECRET
    assert provider["username"] == hiro.DEMO_USERNAME
    idp_port = services["idp"]["command"][services["idp"]["command"].index("--port") + 1]
    assert provider["url"] == f"http://idp:{idp_port}"
    froms = [i.args.split() for i in dockerfile() if i.keyword == "FROM"]
    assert {f[0] for f in froms} == {"${PYTHON_IMAGE}", "runtime"}
    assert [f[0] for f in froms if f[0] != "runtime"] == ["${PYTHON_IMAGE}"] * 2, (
        "build and runtime must share the base (the venv links to its interpreter)"
    )
    assert froms[-1] == ["runtime"], "the default target is the runtime image"


def test_the_image_labels_carry_the_package_version_and_the_base_is_pinned_by_digest() -> None:
    """The VERSION build argument defaults to pyproject.toml's version (scripts/image-test
    passes it too, and checks the label), and the base is a digest, not a moving tag."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    args = dict(
        i.args.partition("=")[::2] for stage in stages() for i in stage if i.keyword == "ARG"
    )
    assert args["VERSION"] == project["version"]
    labels = " ".join(i.args for i in runtime_stage() if i.keyword == "LABEL")
    assert 'org.opencontainers.image.version="${VERSION}"' in labels
    base = next(
        line
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.startswith("ARG PYTHON_IMAGE=")
    )
    assert re.fullmatch(r"ARG PYTHON_IMAGE=python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", base)
