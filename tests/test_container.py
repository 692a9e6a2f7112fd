"""What the container image runs, without a Docker engine.

The Dockerfile's build stage is replayed instruction by instruction in a temp dir (a fresh
venv, dependencies from pyproject.toml, then the package with --no-deps); its ENTRYPOINT + CMD,
HEALTHCHECK and STOPSIGNAL are then run against that venv, with deploy/compose-config.yaml
adapted to 127.0.0.1 and a fake HIRO. Commands are parsed out of the Dockerfile and
docker-compose.yml, so the tests and the files cannot drift apart.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from broker.fakes import hiro
from broker.fakes.hiro import FakeHiro
from broker.fakes.server import serve_in_thread
from tests.support import free_port, wait_for

pytestmark = pytest.mark.smoke  # real processes, sockets or programs: see pyproject's markers

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_CONFIG = ROOT / "deploy" / "compose-config.yaml"
SECRET_FILE = ROOT / "deploy" / "secrets" / "hiro_password.txt"
IMAGE_VENV = "/opt/broker"
IMAGE_CONFIG = "/etc/broker/config.yaml"
PIP_TIMEOUT = 300


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
        result[-1].append(instruction)
    return result


def only(stage: list[Instruction], keyword: str) -> str:
    found = [i.args for i in stage if i.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword}, found {found}"
    return found[0]


def healthcheck_command() -> list[str]:
    """The HEALTHCHECK's exec-form command (after its --options and CMD)."""
    _, cmd, exec_form = only(stages()[-1], "HEALTHCHECK").partition(" CMD ")
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


def build_stage(tmp: Path) -> Path:
    """Replay the build stage with /opt/broker → tmp/opt-broker; return that venv."""
    venv = tmp / "opt-broker"
    workdir = tmp
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    # `python` is a Python 3.11+ as in the base image (ours, whose base interpreter makes the venv).
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    allowed = dockerignore_allowed()
    for instruction in stages()[0][1:]:
        args = instruction.args.replace(IMAGE_VENV, str(venv))
        if instruction.keyword == "ENV":
            env.update(env_assignments(args, env))
        elif instruction.keyword == "WORKDIR":
            workdir = tmp / args.strip("/").replace("/", "-")
            workdir.mkdir(parents=True, exist_ok=True)
        elif instruction.keyword == "COPY":
            *sources, target = shlex.split(args)
            for source in sources:
                assert source.rstrip("/") in allowed, f".dockerignore excludes {source}"
                origin, dest = ROOT / source, workdir / target
                if origin.is_dir():
                    shutil.copytree(
                        origin, dest, ignore=shutil.ignore_patterns("__pycache__", "*.py[cod]")
                    )
                else:
                    shutil.copy(origin, dest)
        elif instruction.keyword == "RUN":
            done = subprocess.run(
                ["/bin/sh", "-c", args],  # Docker's default SHELL
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=PIP_TIMEOUT,
                check=False,
            )
            assert done.returncode == 0, f"RUN {args}\n{done.stdout}\n{done.stderr}"
        else:
            raise AssertionError(f"the test does not replay {instruction.keyword} yet")
    return venv


def local_secret(path: str) -> str:
    """/run/secrets/<name> in a container is the compose secret's file here."""
    name = path.removeprefix("/run/secrets/")
    file: str = compose()["secrets"][name]["file"]
    return str(ROOT / file)


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


def test_image_build_serve_healthcheck_and_sigterm(tmp_path: Path) -> None:
    """The Dockerfile's steps install a broker that serves the compose config, passes the
    HEALTHCHECK, serves the compose apps, writes nowhere but its home and exits 0 on STOPSIGNAL."""
    venv = build_stage(tmp_path)
    runtime = stages()[-1]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    for args in (i.args for i in runtime if i.keyword == "ENV"):
        env.update(env_assignments(args.replace(IMAGE_VENV, str(venv)), env))
    home = tmp_path / "var-lib-broker"
    home.mkdir()
    assert env["HOME"] == only(runtime, "WORKDIR") == "/var/lib/broker"
    env["HOME"] = str(home)
    assert only(runtime, "EXPOSE") == "8181"
    assert only(runtime, "USER") == "10001:10001"

    port = free_port()
    fake = FakeHiro()
    with serve_in_thread(fake.app) as idp_url:
        config = tmp_path / "etc-broker" / "config.yaml"
        config.parent.mkdir()
        # The image's state_dir lives under its home (/var/lib/broker); here under the stand-in.
        image_state = compose_config()["state_dir"]
        assert image_state.startswith("/var/lib/broker/")
        state_dir = str(home / image_state.removeprefix("/var/lib/broker/"))
        settings = compose_config(host="127.0.0.1", port=port, url=idp_url, state_dir=state_dir)
        config.write_text(yaml.safe_dump(settings))
        command = [*json.loads(only(runtime, "ENTRYPOINT")), *json.loads(only(runtime, "CMD"))]
        assert IMAGE_CONFIG in command
        command = [str(config) if arg == IMAGE_CONFIG else arg for arg in command]
        executable = shutil.which(command[0], path=env["PATH"])
        assert executable == str(venv / "bin" / "broker")
        assert shutil.which("python", path=env["PATH"]) == str(venv / "bin" / "python")
        before = files_under(tmp_path) - files_under(home)
        log = (tmp_path / "broker.log").open("w")
        proc = subprocess.Popen(
            [executable, *command[1:]], cwd=home, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for(lambda: _status(f"{base}/readyz") == 200, timeout=20)

            check = healthcheck_command()
            adapted = [arg.replace("127.0.0.1:8181", f"127.0.0.1:{port}") for arg in check]
            assert adapted != check, "the HEALTHCHECK must probe 127.0.0.1:8181"
            health = subprocess.run(adapted, env=env, capture_output=True, timeout=10, check=False)
            assert health.returncode == 0, health.stderr
            closed = [arg.replace("127.0.0.1:8181", f"127.0.0.1:{free_port()}") for arg in check]
            refused = subprocess.run(closed, env=env, capture_output=True, timeout=10, check=False)
            assert refused.returncode != 0

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
    runtime = stages()[-1]
    assert broker["healthcheck"]["test"] == ["CMD", *healthcheck_command()]
    assert f"./deploy/compose-config.yaml:{IMAGE_CONFIG}:ro" in broker["volumes"]
    assert broker["read_only"] is True
    assert broker["cap_drop"] == ["ALL"]
    assert only(runtime, "USER") == "10001:10001"
    assert "broker-state:/var/lib/broker" in broker["volumes"]
    assert "broker-state" in compose()["volumes"]
    assert all("ports" not in service for service in services.values())
    assert services["app-sidecar"]["network_mode"] == "service:broker"

    secret = broker["secrets"][0]
    assert compose()["secrets"][secret]["file"] == "./deploy/secrets/hiro_password.txt"
    config = yaml.safe_load(COMPOSE_CONFIG.read_text())
    for name, app in (("sidecar", "app-sidecar"), ("network-app", "app-network")):
        key_secret = config["clients"][name]["key"]["file"].removeprefix("/run/secrets/")
        assert key_secret in broker["secrets"], "the broker must know every client key"
        assert services[app]["secrets"] == [key_secret], "each app holds only its own key"
        assert services[app]["environment"]["BROKER_KEY_FILE"] == f"/run/secrets/{key_secret}"
    assert SECRET_FILE.read_text().strip() == hiro.DEMO_PASSWORD
    provider = yaml.safe_load(COMPOSE_CONFIG.read_text())["providers"]["hiro"]
    assert provider["password"] == {"file": f"/run/secrets/{secret}"}
    assert provider["client_id"] == hiro.DEMO_CLIENT_ID
    assert provider["client_secret"] == hiro.DEMO_CLIENT_SECRET
    assert provider["username"] == hiro.DEMO_USERNAME
    idp_port = services["idp"]["command"][services["idp"]["command"].index("--port") + 1]
    assert provider["url"] == f"http://idp:{idp_port}"
    images = {i.args.split()[0] for i in dockerfile() if i.keyword == "FROM"}
    assert images == {"python:3.11-slim"}, "both stages must share the base (the venv links to it)"
