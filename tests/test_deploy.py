"""Deployment files, read statically: Dockerfile, .dockerignore, compose.yaml, systemd/.

No Docker engine and no systemd needed; scripts/check-deploy.sh runs the real tools
(hadolint, docker compose config, systemd-analyze). Each test ties a file to the code it
deploys: exit codes, the default shutdown grace, the credential name, config keys.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bot.__main__ import EXIT_AUTH, EXIT_CONFIG
from bot.config import Config, LimitsConfig, LLMConfig, load_config
from tests.conftest import REPO

GRACE = LimitsConfig().shutdown_grace  # what SIGTERM's drain may take by default


# --- Dockerfile -----------------------------------------------------------------------------


def dockerfile() -> list[list[tuple[str, str]]]:
    """Stages of (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = (REPO / "Dockerfile").read_text()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", "", "\n".join(lines))
    stages: list[list[tuple[str, str]]] = []
    for line in joined.splitlines():
        if not line.strip():
            continue
        word, _, rest = line.strip().partition(" ")
        if word.upper() == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((word.upper(), rest.strip()))
    return stages


def args(stage: list[tuple[str, str]], instruction: str) -> list[str]:
    return [rest for word, rest in stage if word == instruction]


def env(stage: list[tuple[str, str]]) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S+)", " ".join(args(stage, "ENV"))))


def test_dockerfile_is_multi_stage_on_python_slim_and_runs_as_a_fixed_non_root_user():
    stages = dockerfile()
    assert len(stages) >= 2
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.M)
    assert all(s[0][1].startswith("${PYTHON_IMAGE}") for s in stages)
    final = stages[-1]
    users = args(final, "USER")
    assert users, "the final stage sets no USER: it would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, "a fixed numeric UID, not root or a name"
    assert f"--uid {uid}" in " ".join(args(final, "RUN"))


def test_dockerfile_runs_the_bot_in_exec_form():
    final = dockerfile()[-1]
    (entrypoint,) = args(final, "ENTRYPOINT")
    (cmd,) = args(final, "CMD")
    assert json.loads(entrypoint) == ["python", "-m", "bot"]
    assert isinstance(json.loads(cmd), list)  # exec form: SIGTERM reaches Python, not a shell
    assert args(final, "STOPSIGNAL") == ["SIGTERM"]


def test_dockerfile_has_an_exec_form_healthcheck():
    (healthcheck,) = args(dockerfile()[-1], "HEALTHCHECK")
    options, _, command = healthcheck.partition("CMD")
    assert "--interval" in options and "--timeout" in options
    assert json.loads(command) == ["python", "-m", "bot", "healthcheck"]


def test_dockerfile_keeps_data_in_a_volume():
    final = dockerfile()[-1]
    assert env(final)["DATABASE_PATH"] == "/data/bot.sqlite3"
    assert json.loads(args(final, "VOLUME")[0]) == ["/data"]


def test_dockerfile_installs_without_dev_extras_and_bakes_tiktoken_files_in():
    build, final = dockerfile()[0], dockerfile()[-1]
    installs = [r for r in args(build, "RUN") if "pip install" in r]
    assert installs and all("[" not in r and " -e " not in r for r in installs)
    cache = env(build)["TIKTOKEN_CACHE_DIR"]
    assert env(final)["TIKTOKEN_CACHE_DIR"] == cache
    assert any("load_encoding" in r for r in args(build, "RUN"))
    assert any(c.startswith("--from=") and cache in c for c in args(final, "COPY"))


def test_dockerfile_tiktoken_step_unpacks_files_the_bot_then_only_reads(tmp_path):
    """Run the Dockerfile's own snippet, then the bot's counter: it must not unpack again."""
    (run,) = [r for r in args(dockerfile()[0], "RUN") if "load_encoding" in r]
    code = re.search(r'-c "(.*)"', run).group(1)
    cache = tmp_path / "tiktoken"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TIKTOKEN", "BOT_"))}
    subprocess.run(
        [sys.executable, "-I", "-c", code],
        env={**clean, "TIKTOKEN_CACHE_DIR": str(cache)},
        check=True,
        timeout=60,
    )
    assert len(list(cache.iterdir())) == 2  # cl100k_base and o200k_base
    data = tmp_path / "data"
    use = "from bot.app import open_counter; from bot.config import load_config\n"
    use += "print(open_counter(load_config()).count('hello world'))"
    out = subprocess.run(
        [sys.executable, "-c", use],
        env={**clean, "TIKTOKEN_CACHE_DIR": str(cache), "DATABASE_PATH": str(data / "b.sqlite3")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert out.stdout.strip() == "2"
    assert not (data / ".tiktoken").exists()


def test_dockerignore_admits_only_what_the_image_copies():
    lines = [
        ln.strip()
        for ln in (REPO / ".dockerignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "*"
    admitted = {ln[1:] for ln in lines if ln.startswith("!")}
    assert admitted == {"pyproject.toml", "README.md", "bot", "config/bot.toml"}
    copied = set()
    for stage in dockerfile():
        for c in args(stage, "COPY"):
            if not c.startswith("--from"):
                copied |= {p.rstrip("/") for p in c.split()[:-1]}
    assert copied <= admitted


# --- compose.yaml ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    yaml = pytest.importorskip("yaml", reason="PyYAML (test extra) reads compose.yaml")
    return yaml.safe_load((REPO / "compose.yaml").read_text())


def seconds(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(ms|s|m|h)", value))


def test_compose_runs_vllm_on_an_nvidia_gpu_with_the_flags_that_matter(compose):
    vllm = compose["services"]["vllm"]
    assert vllm["image"].startswith("vllm/vllm-openai:") and not vllm["image"].endswith(":latest")
    flags = {c.split("=")[0] for c in vllm["command"]}
    assert {
        "--model",
        "--served-model-name",
        "--max-model-len",
        "--enable-prefix-caching",
        "--gpu-memory-utilization",
    } <= flags
    (device,) = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert "/health" in " ".join(vllm["healthcheck"]["test"])
    assert any(v.endswith(":/root/.cache/huggingface") for v in vllm["volumes"])


def test_compose_starts_the_bot_once_vllm_is_healthy_and_points_it_there(compose):
    bot = compose["services"]["bot"]
    assert bot["build"] == "."
    assert bot["depends_on"]["vllm"]["condition"] == "service_healthy"
    assert bot["environment"]["LLM_BASE_URL"] == "http://vllm:8000/v1"
    assert bot["environment"]["DATABASE_PATH"].startswith("/data/")
    assert any(v.endswith(":/data") for v in bot["volumes"])


def test_compose_hands_the_token_over_as_a_secret_file_the_bot_reads(compose):
    bot = compose["services"]["bot"]
    assert "DISCORD_TOKEN" not in bot["environment"]
    assert "env_file" not in bot  # .env's DISCORD_TOKEN= line would shadow the secret
    (secret,) = bot["secrets"]
    assert compose["secrets"][secret["source"]] == {"environment": "DISCORD_TOKEN"}
    directory = bot["environment"]["CREDENTIALS_DIRECTORY"]
    assert Path(directory, secret["target"]) == Path("/run/secrets/discord_token")
    uid = args(dockerfile()[-1], "USER")[-1].split(":")[0]
    assert secret["uid"] == uid and secret["gid"] == uid  # readable by the image's user


def test_compose_stops_gracefully_and_does_not_retry_fatal_exits_forever(compose):
    bot = compose["services"]["bot"]
    assert seconds(bot["stop_grace_period"]) >= GRACE + 5
    policy, _, retries = bot["restart"].partition(":")
    assert policy == "on-failure" and 1 <= int(retries) <= 10  # bounds 77/78 restart loops


def test_credentials_directory_delivers_the_token(monkeypatch, tmp_path):
    """The path compose and systemd both use: $CREDENTIALS_DIRECTORY/discord_token."""
    monkeypatch.chdir(tmp_path)
    for name in ("DISCORD_TOKEN", "BOT_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "discord_token").write_text("token-from-file\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    token = load_config().discord.token
    assert token is not None and token.get_secret_value() == "token-from-file"


# --- systemd --------------------------------------------------------------------------------


def unit(name: str) -> dict[str, list[str]]:
    """Every Key=value of a unit file (keys repeat), continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (REPO / "systemd" / name).read_text())
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


BOT = "vllm-discord-bot.service"


def test_unit_never_restarts_on_fatal_exit_codes():
    u = unit(BOT)
    assert u["Restart"] == ["on-failure"]
    codes = " ".join(u["RestartPreventExitStatus"]).split()
    assert {str(EXIT_AUTH), str(EXIT_CONFIG)} <= set(codes)


def test_unit_gives_the_sigterm_drain_time_to_finish():
    u = unit(BOT)
    assert u["KillSignal"] == ["SIGTERM"]
    assert seconds(u["TimeoutStopSec"][-1]) >= GRACE + 5


def test_unit_passes_the_token_as_a_credential_never_in_the_environment():
    u = unit(BOT)
    (credential,) = u["LoadCredential"]
    assert credential.startswith("discord_token:/etc/")
    environment = " ".join(u.get("Environment", []))
    assert "DISCORD_TOKEN" not in environment
    example = (REPO / "systemd" / "vllm-discord-bot.env").read_text()
    assert not re.search(r"^\s*#?\s*DISCORD_TOKEN", example, re.M)


def test_unit_runs_the_venv_with_state_in_its_state_directory():
    u = unit(BOT)
    # -P: the installed package, never a `bot` directory in the working directory.
    assert u["ExecStart"] == ["/opt/vllm-discord-bot/.venv/bin/python -P -m bot"]
    variables = dict(e.split("=", 1) for e in u["Environment"])
    assert variables["BOT_CONFIG"] == "/etc/vllm-discord-bot/bot.toml"
    (state,) = u["StateDirectory"]
    assert variables["DATABASE_PATH"] == f"/var/lib/{state}/bot.sqlite3"
    assert u["WorkingDirectory"] == [f"/var/lib/{state}"]  # no .env, no source tree there
    assert u["DynamicUser"] == ["yes"]


def test_unit_is_hardened():
    u = unit(BOT)
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "ProtectProc": "invisible",
        "ProcSubset": "pid",
        "UMask": "0077",
        "CapabilityBoundingSet": "",
    }.items():
        assert u.get(key) == [value], key
    assert u["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    assert u["SystemCallFilter"] == ["@system-service", "~@privileged @resources"]


def test_example_env_file_names_only_real_settings():
    names = {
        f"{section}_{key}".upper()
        for section, field in Config.model_fields.items()
        for key in field.annotation.model_fields  # type: ignore[union-attr]
    }
    text = (REPO / "systemd" / "vllm-discord-bot.env").read_text()
    used = re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", text, re.M)
    assert used and set(used) <= names


def test_vllm_unit_serves_where_the_bot_looks_by_default():
    u = unit("vllm.service")
    (exec_start,) = u["ExecStart"]
    assert exec_start.startswith("/opt/vllm-discord-bot/.venv/bin/vllm serve ")
    for flag in (
        "--model",
        "--served-model-name",
        "--max-model-len",
        "--enable-prefix-caching",
        "--gpu-memory-utilization",
    ):
        assert f"{flag} " in exec_start or exec_start.endswith(flag)
    assert "--host 127.0.0.1 --port 8000" in exec_start
    assert LLMConfig().base_url == "http://127.0.0.1:8000/v1"
    assert u["DynamicUser"] == ["yes"]
    assert not any(e.startswith("VLLM_") for e in u.get("Environment", []))  # vLLM's own names


def test_systemd_run_wrapper_matches_the_unit():
    """scripts/systemd-run-bot.sh must run as the same user, with the same files."""
    u = unit(BOT)
    script = (REPO / "scripts" / "systemd-run-bot.sh").read_text()
    assert f"User={u['User'][0]}" in script
    assert f"StateDirectory={u['StateDirectory'][0]}" in script
    assert "LoadCredential=discord_token:" in script
    assert '--working-directory="$state"' in script and 'python" -P -m bot' in script
    variables = dict(e.split("=", 1) for e in u["Environment"])
    for name in ("BOT_CONFIG", "DATABASE_PATH"):
        value = variables[name].replace("/etc/vllm-discord-bot", "$etc")
        value = value.replace("/var/lib/vllm-discord-bot", "$state")
        assert f'--setenv={name}="{value}"' in script


def test_readme_has_a_deploy_section_after_set_up():
    readme = (REPO / "README.md").read_text()
    headings = re.findall(r"^## (.+)$", readme, re.M)
    assert headings.index("Deploy") == headings.index("Set up") + 1
    deploy = readme.split("## Deploy", 1)[1].split("\n## ", 1)[0]
    for needle in ("docker compose", "systemctl enable --now", "backup", "LoadCredential"):
        assert needle in deploy, needle
