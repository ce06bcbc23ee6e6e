"""Static checks of the production shape: docker-compose.yml and the service Dockerfiles.

No Docker engine is needed: the compose file is read with pyyaml (`safe_load` resolves the
anchors and `<<` merge keys, so what is checked is what compose would see before
`${VAR}` interpolation). Each check is a function returning a list of problems, so the
self-tests at the bottom can prove that each one catches a broken file.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
SERVICES_DIR = REPO / "services"
ENDPOINT_VARS = ("CRM_KAFKA_BOOTSTRAP", "CRM_DATABASE_URL", "CRM_REDIS_URL")


# ---------------------------------------------------------------------------------------------
# Reading compose
# ---------------------------------------------------------------------------------------------
def load_compose() -> dict:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    assert isinstance(data.get("services"), dict) and data["services"], "docker-compose.yml has no services"
    return data


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose()


def services_of(compose: dict) -> dict[str, dict]:
    return compose["services"]


def is_one_shot(svc: dict) -> bool:
    # `restart: "no"` (quoted) is the string; an unquoted `no` is YAML 1.1 false.
    return svc.get("restart", "no") in ("no", False)


def environment(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        out = {}
        for item in env:
            key, sep, value = str(item).partition("=")
            out[key] = value if sep else ""
        return out
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def depends_on(svc: dict) -> dict[str, str]:
    deps = svc.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def service_folders() -> list[Path]:
    """Service folders that run: a pyproject.toml and a `python -m <module>` entry point (a service
    still being built, without `__main__.py`, gets its compose block when it can start)."""
    return sorted(p for p in SERVICES_DIR.iterdir() if p.is_dir() and (p / "pyproject.toml").is_file()
                  and (p / p.name.replace("-", "_") / "__main__.py").is_file())


def _expand(port_spec: str) -> list[int]:
    if "-" in port_spec:
        lo, hi = port_spec.split("-", 1)
        return list(range(int(lo), int(hi) + 1))
    return [int(port_spec)]


def published_ports(svc: dict) -> list[tuple[int, str]]:
    """(host port, protocol) for every port published on the host; container-only ports are skipped."""
    out: list[tuple[int, str]] = []
    for entry in svc.get("ports") or []:
        if isinstance(entry, dict):  # long syntax
            if entry.get("published") in (None, ""):
                continue
            proto = entry.get("protocol", "tcp")
            out += [(p, proto) for p in _expand(str(entry["published"]))]
            continue
        spec, _, proto = str(entry).partition("/")
        proto = proto or "tcp"
        # [ip:]host:container; an IPv6 host ip is bracketed: [::1]:5432:5432
        spec = re.sub(r"^\[[^\]]*\]:", "", spec)
        parts = spec.split(":")
        if len(parts) == 1:  # container port only: docker picks a free host port
            continue
        out += [(p, proto) for p in _expand(parts[-2])]
    return out


def dockerfile_path(svc: dict) -> Path | None:
    build = svc.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        context, dockerfile = build, "Dockerfile"
    else:
        context, dockerfile = build.get("context", "."), build.get("dockerfile", "Dockerfile")
    return (REPO / context / dockerfile).resolve()


# ---------------------------------------------------------------------------------------------
# Checks: each returns the list of problems found
# ---------------------------------------------------------------------------------------------
def check_build_or_image(compose: dict) -> list[str]:
    return [f"{name}: neither build nor image" for name, svc in services_of(compose).items()
            if not svc.get("build") and not svc.get("image")]


def check_healthchecks(compose: dict) -> list[str]:
    problems = []
    for name, svc in services_of(compose).items():
        if is_one_shot(svc):
            continue
        hc = svc.get("healthcheck")
        if not isinstance(hc, dict) or hc.get("disable") or not hc.get("test") or hc["test"] in (["NONE"], "NONE"):
            problems.append(f"{name}: long-running service without a healthcheck")
    return problems


def check_app_env(compose: dict) -> list[str]:
    problems = []
    names = set(services_of(compose))
    for name, svc in services_of(compose).items():
        if "build" not in svc:
            continue
        env = environment(svc)
        for var in ENDPOINT_VARS:
            if not env.get(var):
                problems.append(f"{name}: no {var}")
        # The endpoints must point at services of this file.
        hosts = {
            "CRM_KAFKA_BOOTSTRAP": [hp.rsplit(":", 1)[0] for hp in env.get("CRM_KAFKA_BOOTSTRAP", "").split(",") if hp],
            "CRM_DATABASE_URL": [urlsplit(env.get("CRM_DATABASE_URL", "")).hostname],
            "CRM_REDIS_URL": [urlsplit(env.get("CRM_REDIS_URL", "")).hostname],
        }
        for var, var_hosts in hosts.items():
            for host in var_hosts:
                if env.get(var) and host not in names:
                    problems.append(f"{name}: {var} points at {host!r}, not a compose service")
    return problems


def check_production_keys(compose: dict) -> list[str]:
    problems = []
    for name, svc in services_of(compose).items():
        if "build" not in svc:
            continue
        env = environment(svc)
        if env.get("CRM_ENV") != "production":
            problems.append(f"{name}: CRM_ENV is {env.get('CRM_ENV')!r}, not production")
        keys = env.get("CRM_API_KEYS")
        if keys is None:
            if not svc.get("env_file"):
                problems.append(f"{name}: no CRM_API_KEYS and no env_file")
        elif "${CRM_API_KEYS" not in keys:
            problems.append(f"{name}: CRM_API_KEYS is hard-coded instead of taken from the host env")
    return problems


def production_secrets() -> dict[str, list[str]]:
    """Per compose service, the env variables of its settings whose default is a dev key or secret
    (`dev-…`): production refuses those (the notifier's bootstrap; every service's key check for the
    console's upstream key), so compose must take them from the host (`${VAR:?...}`) or the service
    cannot start. Read from the settings classes themselves, so a new one cannot be missed."""
    from member_profile.settings import MemberProfileSettings
    from notifier.settings import NotifierSettings
    from ops_console.settings import OpsConsoleSettings
    from pos_gateway.settings import GatewaySettings
    from pydantic import SecretStr
    from replenishment.settings import ReplenishmentSettings
    from segmenter.settings import SegmenterSettings

    secrets: dict[str, list[str]] = {}
    for service, settings in (("member-profile", MemberProfileSettings), ("notifier", NotifierSettings),
                              ("ops-console", OpsConsoleSettings), ("pos-gateway", GatewaySettings),
                              ("replenishment", ReplenishmentSettings), ("segmenter", SegmenterSettings)):
        for name, field in settings.model_fields.items():
            default = field.default.get_secret_value() if isinstance(field.default, SecretStr) else field.default
            if isinstance(default, str) and default.startswith("dev-"):
                secrets.setdefault(service, []).append(f"{settings.model_config['env_prefix']}{name}".upper())
    return secrets


def check_production_secrets(compose: dict) -> list[str]:
    problems = []
    svcs = services_of(compose)
    for name, variables in production_secrets().items():
        env = environment(svcs.get(name, {}))
        for var in variables:
            if not str(env.get(var, "")).startswith(f"${{{var}:?"):
                problems.append(f"{name}: {var} is not required from the host (its dev default is refused in production)")
    return problems


def check_port_clashes(compose: dict) -> list[str]:
    seen: dict[tuple[int, str], str] = {}
    problems = []
    for name, svc in services_of(compose).items():
        for port in published_ports(svc):
            if port in seen:
                problems.append(f"host port {port[0]}/{port[1]} published by {seen[port]} and {name}")
            seen.setdefault(port, name)
    return problems


def check_depends_on(compose: dict) -> list[str]:
    problems = []
    svcs = services_of(compose)
    for name, svc in svcs.items():
        for target, condition in depends_on(svc).items():
            if target not in svcs:
                problems.append(f"{name}: depends_on unknown service {target!r}")
                continue
            if condition == "service_healthy" and "healthcheck" not in svcs[target]:
                problems.append(f"{name}: waits for {target} healthy, but {target} has no healthcheck")
            if condition == "service_completed_successfully" and not is_one_shot(svcs[target]):
                problems.append(f"{name}: waits for {target} to complete, but {target} restarts")
    return problems


def check_dockerfiles_exist(compose: dict) -> list[str]:
    problems = []
    for name, svc in services_of(compose).items():
        path = dockerfile_path(svc)
        if path is None:
            continue
        if not path.is_relative_to(REPO):
            problems.append(f"{name}: build leaves the repo: {path}")
        elif not path.is_file():
            problems.append(f"{name}: no Dockerfile at {path.relative_to(REPO)}")
    return problems


def check_postgres_tuning(compose: dict) -> list[str]:
    """PostgreSQL in production runs with the settings the embedded stack's figures were measured with
    (`crm_shared.embedded.POSTGRES_TUNING`: checkpoints by time, fresh tables analysed within seconds)."""
    from crm_shared.embedded import POSTGRES_TUNING

    service = services_of(compose).get("postgres")
    if service is None:
        return ["no postgres service"]
    command = service.get("command") or []
    words = shlex.split(command) if isinstance(command, str) else [str(w) for w in command]
    given = {words[i + 1] for i, word in enumerate(words[:-1]) if word == "-c"}
    return [f"postgres: runs without -c {name}={value} (the embedded stack's)" for name, value in POSTGRES_TUNING
            if f"{name}={value}" not in given]


def check_kafka_kraft(compose: dict) -> list[str]:
    svcs = services_of(compose)
    kafkas = [n for n, s in svcs.items() if n == "kafka" or str(s.get("image", "")).startswith("apache/kafka")]
    if not kafkas:
        return ["no kafka service"]
    problems = []
    for name in kafkas:
        env = environment(svcs[name])
        roles = {r.strip() for r in env.get("KAFKA_PROCESS_ROLES", "").split(",")}
        if "controller" not in roles or "broker" not in roles:
            problems.append(f"{name}: not a KRaft broker+controller (KAFKA_PROCESS_ROLES={env.get('KAFKA_PROCESS_ROLES')!r})")
        if any(k.startswith("KAFKA_ZOOKEEPER") for k in env):
            problems.append(f"{name}: ZooKeeper settings on a KRaft node")
        if env.get("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "").lower() != "false":
            problems.append(f"{name}: auto topic creation is not off")
    return problems


def check_service_folders(compose: dict, folders: list[Path]) -> list[str]:
    problems = []
    svcs = services_of(compose)
    for folder in folders:
        name = folder.name  # the compose block is named after the folder
        svc = svcs.get(name)
        if svc is None or "build" not in svc:
            problems.append(f"services/{name}: no compose service {name!r} with a build")
            continue
        if dockerfile_path(svc) != (folder / "Dockerfile").resolve():
            problems.append(f"{name}: builds {dockerfile_path(svc)}, not services/{name}/Dockerfile")
        if is_one_shot(svc):
            problems.append(f"{name}: the service itself is a one-shot")
    return problems


EDGE_CONFIG = REPO / "deploy" / "edge" / "nginx.conf"


def consumer_services() -> dict[str, int]:
    """Compose name -> port of every service with consumer groups (crm_shared/services.py)."""
    from crm_shared.services import SERVICES

    return {spec.name: spec.port for spec in SERVICES if spec.consumer_groups}


def is_app(svc: dict) -> bool:
    return "build" in svc and not is_one_shot(svc)


def check_scalable(compose: dict) -> list[str]:
    """A consumer must be able to run several replicas (`--scale`): no fixed container name, no
    fixed host port (the edge publishes the ports), nothing pinning it to one replica."""
    problems = []
    svcs = services_of(compose)
    for name in consumer_services():
        svc = svcs.get(name)
        if svc is None:
            continue  # check_service_folders reports a missing block
        if "container_name" in svc:
            problems.append(f"{name}: container_name {svc['container_name']!r} blocks --scale")
        if published_ports(svc):
            problems.append(f"{name}: publishes host ports {published_ports(svc)}, which blocks --scale; the edge publishes them")
        mode = (svc.get("deploy") or {}).get("mode")
        if mode == "global":
            problems.append(f"{name}: deploy.mode global")
    return problems


def check_resource_limits(compose: dict) -> list[str]:
    problems = []
    for name, svc in services_of(compose).items():
        limits = ((svc.get("deploy") or {}).get("resources") or {}).get("limits") or {}
        for what in ("cpus", "memory"):
            if not limits.get(what):
                problems.append(f"{name}: no deploy.resources.limits.{what}")
    return problems


def dockerfile_env(path: Path | None) -> dict[str, str]:
    if path is None or not path.is_file():
        return {}
    env: dict[str, str] = {}
    for instr, args in dockerfile_instructions(path.read_text(encoding="utf-8")):
        if instr == "ENV":
            for key, value in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)", args):
                env[key] = value
    return env


def check_listens_on_all_interfaces(compose: dict) -> list[str]:
    """Settings default to 127.0.0.1: in a container that is unreachable from the edge and the other
    services. `<PREFIX>_HOST` must be 0.0.0.0, from the compose env or the image's ENV."""
    problems = []
    for name, svc in services_of(compose).items():
        if not is_app(svc):
            continue
        var = name.replace("-", "_").upper() + "_HOST"
        host = environment(svc).get(var) or dockerfile_env(dockerfile_path(svc)).get(var)
        if host != "0.0.0.0":
            problems.append(f"{name}: {var} is {host!r}, so the service listens on loopback only")
    return problems


def check_migrations_run_once(compose: dict) -> list[str]:
    """A service with a schema waits for a one-shot that migrates it, so replicas never race."""
    problems = []
    svcs = services_of(compose)
    for name, svc in svcs.items():
        if not is_app(svc):
            continue
        folder = SERVICES_DIR / name
        if not (folder / "migrations").is_dir():
            continue
        module = name.replace("-", "_")
        migrators = [target for target, condition in depends_on(svc).items()
                     if condition == "service_completed_successfully" and target in svcs
                     and re.search(rf"\b{module} migrate\b", " ".join(map(str, svcs[target].get("command") or [])))]
        if not migrators:
            problems.append(f"{name}: no one-shot `python -m {module} migrate` it waits for")
    return problems


def edge_routes(config: str) -> dict[int, str]:
    """Port -> `service:port` it proxies to, from the edge's nginx.conf."""
    routes = {}
    for listen, upstream in re.findall(r"listen\s+(\d+);[^}]*?set\s+\$upstream\s+([\w.-]+:\d+);", config):
        routes[int(listen)] = upstream
    return routes


def served_services() -> dict[str, int]:
    """Compose name -> port of every service with an HTTP port (crm_shared/services.py): the five and the ops console."""
    from crm_shared.services import SERVICES

    return {spec.name: spec.port for spec in SERVICES}


def check_edge(compose: dict, config: str) -> list[str]:
    svcs = services_of(compose)
    edge = svcs.get("edge")
    if edge is None:
        return ["no edge service in front of the app services"]
    problems = []
    routes = edge_routes(config)
    published = {port for port, _ in published_ports(edge)}
    for name, port in served_services().items():
        if name not in svcs:
            continue
        if routes.get(port) != f"{name}:{port}":
            problems.append(f"edge: port {port} does not proxy to {name}:{port} (nginx.conf has {routes.get(port)!r})")
        if port not in published:
            problems.append(f"edge: does not publish {name}'s port {port}")
    for port, upstream in routes.items():
        if upstream.split(":")[0] not in svcs:
            problems.append(f"edge: port {port} proxies to {upstream}, not a compose service")
    if "resolver 127.0.0.11" not in config:
        problems.append("edge: no Docker DNS resolver, so new replicas are never seen")
    if not re.search(r"^\s*access_log\s+off;", config, re.M):
        problems.append("edge: access log on (URLs carry member ids)")
    volume_sources = [str(v).split(":")[0] for v in edge.get("volumes") or []]
    if "./deploy/edge/nginx.conf" not in volume_sources:
        problems.append("edge: does not mount ./deploy/edge/nginx.conf")
    return problems


# ---------------------------------------------------------------------------------------------
# Dockerfiles
# ---------------------------------------------------------------------------------------------
def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comment lines dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        instr, _, args = buf.partition(" ")
        out.append((instr.upper(), args.strip()))
        buf = ""
    if buf:
        instr, _, args = buf.partition(" ")
        out.append((instr.upper(), args.strip()))
    return out


def copy_sources(args: str) -> list[str]:
    """Local sources of a COPY/ADD (empty for `--from=` copies, which read another stage)."""
    words = json.loads(args) if args.startswith("[") else args.split()
    flags = [w for w in words if w.startswith("--")]
    if any(f.startswith("--from") for f in flags):
        return []
    paths = [w for w in words if not w.startswith("--")]
    return paths[:-1]


PIN_RE = re.compile(r"(?:-c|--constraint)(?:\s+|=)\S*constraints\.txt\b")


def check_dockerfile_pinned(text: str) -> list[str]:
    problems = []
    instructions = dockerfile_instructions(text)
    copied = [src for instr, args in instructions if instr in ("COPY", "ADD") for src in copy_sources(args)]
    if not any(src.lstrip("./") == "constraints.txt" for src in copied):
        problems.append("does not COPY constraints.txt from the repo root")
    pip_runs = [args for instr, args in instructions if instr == "RUN" and re.search(r"\bpip3?\s+install\b", args)]
    if not pip_runs:
        problems.append("no `pip install`")
    for args in pip_runs:
        for cmd in re.split(r"&&|;", args):
            if re.search(r"\bpip3?\s+install\b", cmd):
                if not PIN_RE.search(cmd):
                    problems.append(f"unpinned install (no -c constraints.txt): {cmd.strip()}")
                if re.search(r"\[[^\]]*\b(test|dev)\b", cmd):
                    problems.append(f"test/dev extras in the image: {cmd.strip()}")
    users = [args.split(":")[0] for instr, args in instructions if instr == "USER"]
    if not users or users[-1] in ("root", "0"):
        problems.append("runs as root (no final non-root USER)")
    if not any(instr == "HEALTHCHECK" and not args.upper().startswith("NONE") for instr, args in instructions):
        problems.append("no HEALTHCHECK")
    return problems


GENERIC_ENV = ("PATH", "PYTHON", "PIP_", "CRM_")


def env_keys(args: str) -> list[str]:
    """The variable names an `ENV K=V K2=V2` (or legacy `ENV K V`) sets."""
    words = shlex.split(args)
    if words and "=" not in words[0]:
        return [words[0]]
    return [w.split("=", 1)[0] for w in words]


def check_dockerfile_is_its_own(folder: str, text: str) -> list[str]:
    """A Dockerfile copied from another service and half edited: the settings it sets are the service's
    own (`<PREFIX>_...`), it copies only its own folder, runs its own module and checks its own port."""
    prefix, module = folder.upper().replace("-", "_") + "_", folder.replace("-", "_")
    instructions = dockerfile_instructions(text)
    problems = [f"sets {key}, not one of {prefix}* (copied from another service?)"
                for instr, args in instructions if instr == "ENV" for key in env_keys(args)
                if not key.startswith((prefix, *GENERIC_ENV))]
    problems += [f"copies {src}, another service's folder" for instr, args in instructions if instr in ("COPY", "ADD")
                 for src in copy_sources(args) if src.startswith("services/") and not src.startswith(f"services/{folder}/")]
    commands = [args for instr, args in instructions if instr == "CMD"]
    if not commands or f'"{module}"' not in commands[-1]:
        problems.append(f"CMD does not run python -m {module}")
    exposed = [args.split("/")[0] for instr, args in instructions if instr == "EXPOSE"]
    checks = [args for instr, args in instructions if instr == "HEALTHCHECK"]
    if len(exposed) != 1 or not checks or f":{exposed[0]}/" not in checks[-1]:
        problems.append(f"the HEALTHCHECK does not probe the exposed port {exposed}")
    return problems


# ---------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------
def test_compose_has_the_stack(compose):
    svcs = services_of(compose)
    for name in ("kafka", "postgres", "redis", "init", "pos-gateway"):
        assert name in svcs, f"no {name!r} service"
    assert is_one_shot(svcs["init"]), "init must be a one-shot (restart: \"no\")"
    assert any("build" in s and not is_one_shot(s) for s in svcs.values()), "no long-running app service"


def test_every_service_has_build_or_image(compose):
    assert check_build_or_image(compose) == []


def test_long_running_services_have_healthcheck(compose):
    assert check_healthchecks(compose) == []


def test_app_services_have_endpoint_env(compose):
    assert any("build" in s for s in services_of(compose).values()), "no app service (with build)"
    assert check_app_env(compose) == []


def test_app_services_run_production_with_keys_from_host(compose):
    assert check_production_keys(compose) == []


def test_production_secrets_come_from_the_host(compose):
    assert check_production_secrets(compose) == []


def test_the_dev_defaults_are_read_from_the_settings():
    assert production_secrets() == {"notifier": ["NOTIFIER_PSEUDONYM_KEY", "NOTIFIER_WEBHOOK_SECRET"],
                                    "ops-console": ["OPS_CONSOLE_UPSTREAM_API_KEY"]}


def test_host_ports_do_not_clash(compose):
    assert (8001, "tcp") in published_ports(services_of(compose)["edge"])
    assert check_port_clashes(compose) == []


def test_every_consumer_can_run_several_replicas(compose):
    assert set(consumer_services()) >= {"pos-gateway", "member-profile", "segmenter", "replenishment", "notifier"}
    assert check_scalable(compose) == []


def test_every_service_has_resource_limits(compose):
    assert check_resource_limits(compose) == []


def test_app_services_listen_on_all_interfaces(compose):
    assert check_listens_on_all_interfaces(compose) == []


def test_migrations_run_once_before_the_replicas(compose):
    assert check_migrations_run_once(compose) == []


def test_the_edge_proxies_every_service_to_all_its_replicas(compose):
    assert check_edge(compose, EDGE_CONFIG.read_text(encoding="utf-8")) == []


def test_scaling_is_documented():
    text = (REPO / "deploy" / "scaling.md").read_text(encoding="utf-8")
    from crm_shared.topics import ALL_TOPICS

    missing = [t.name for t in ALL_TOPICS if t.has_dlq and f"`{t.name}`" not in text]
    missing += [name for name in consumer_services() if f"**{name}**" not in text]
    assert missing == [], "deploy/scaling.md does not cover these topics/services"


def test_depends_on_targets_exist(compose):
    assert check_depends_on(compose) == []


def test_build_dockerfiles_exist(compose):
    assert check_dockerfiles_exist(compose) == []


def test_postgres_runs_with_the_embedded_stack_s_tuning(compose):
    assert check_postgres_tuning(compose) == []


def test_kafka_is_kraft_without_auto_topic_creation(compose):
    assert check_kafka_kraft(compose) == []


def test_every_service_folder_has_a_compose_block(compose):
    folders = service_folders()
    assert SERVICES_DIR / "pos-gateway" in folders
    assert check_service_folders(compose, folders) == []


def test_every_service_folder_has_a_dockerfile():
    missing = [f.name for f in service_folders() if not (f / "Dockerfile").is_file()]
    assert missing == []


def test_dockerfiles_pin_installs_with_constraints():
    dockerfiles = sorted(SERVICES_DIR.glob("*/Dockerfile"))
    assert dockerfiles, "no Dockerfile under services/*/"
    problems = [f"{d.relative_to(REPO)}: {p}"
                for d in dockerfiles for p in check_dockerfile_pinned(d.read_text(encoding="utf-8"))]
    assert problems == []


def test_each_dockerfile_is_its_own_service_s():
    problems = [f"services/{f.name}/Dockerfile: {p}" for f in service_folders()
                for p in check_dockerfile_is_its_own(f.name, (f / "Dockerfile").read_text(encoding="utf-8"))]
    assert problems == []


@pytest.mark.parametrize(
    "edit",
    [
        lambda t: t.replace("NOTIFIER_MIGRATIONS_DIR", "SEGMENTER_MIGRATIONS_DIR"),
        lambda t: t.replace("COPY services/notifier/migrations/", "COPY services/segmenter/migrations/"),
        lambda t: t.replace('CMD ["python", "-m", "notifier"]', 'CMD ["python", "-m", "segmenter"]'),
        lambda t: t.replace("EXPOSE 8005", "EXPOSE 8003"),
    ],
    ids=["other-settings", "other-folder", "other-module", "other-port"],
)
def test_dockerfile_check_catches_a_copied_dockerfile(edit):
    text = (SERVICES_DIR / "notifier" / "Dockerfile").read_text(encoding="utf-8")
    broken = edit(text)
    assert broken != text, "the edit did not apply: update this self-test"
    assert check_dockerfile_is_its_own("notifier", broken)


# ---------------------------------------------------------------------------------------------
# Self-tests: each check catches a broken copy of the real file
# ---------------------------------------------------------------------------------------------
def _drop_healthcheck(c):
    del c["services"]["pos-gateway"]["healthcheck"]


def _drop_redis_url(c):
    env = dict(c["services"]["pos-gateway"]["environment"])
    del env["CRM_REDIS_URL"]
    c["services"]["pos-gateway"]["environment"] = env


def _wrong_db_host(c):
    env = dict(c["services"]["pos-gateway"]["environment"])
    env["CRM_DATABASE_URL"] = "postgresql+asyncpg://crm:crm@localhost:5432/crm"
    c["services"]["pos-gateway"]["environment"] = env


def _hardcoded_keys(c):
    env = dict(c["services"]["pos-gateway"]["environment"])
    env["CRM_API_KEYS"] = "k1:pos:store-7"
    c["services"]["pos-gateway"]["environment"] = env


def _port_clash(c):
    c["services"]["redis"]["ports"] = ["127.0.0.1:8001:6379"]


def _ghost_dependency(c):
    c["services"]["pos-gateway"]["depends_on"] = {"zookeeper": {"condition": "service_healthy"}}


def _missing_dockerfile(c):
    c["services"]["pos-gateway"]["build"] = {"context": ".", "dockerfile": "services/pos-gateway/Dockerfile.nope"}


def _zookeeper_mode(c):
    c["services"]["kafka"]["environment"] = {**c["services"]["kafka"]["environment"], "KAFKA_PROCESS_ROLES": "broker"}


def _auto_create(c):
    c["services"]["kafka"]["environment"] = {**c["services"]["kafka"]["environment"], "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "true"}


def _default_naptime(c):
    c["services"]["postgres"]["command"] = ["postgres", "-c", "max_wal_size=4GB"]


def _no_image(c):
    del c["services"]["postgres"]["image"]


def _no_gateway_block(c):
    del c["services"]["pos-gateway"]


def _fixed_port(c):
    c["services"]["member-profile"]["ports"] = ["8002:8002"]


def _container_name(c):
    c["services"]["notifier"]["container_name"] = "crm-notifier"


def _no_limits(c):
    del c["services"]["redis"]["deploy"]


def _loopback(c):
    env = dict(c["services"]["notifier"]["environment"])
    env["NOTIFIER_HOST"] = "127.0.0.1"
    c["services"]["notifier"]["environment"] = env


def _no_migrate_job(c):
    deps = dict(c["services"]["replenishment"]["depends_on"])
    del deps["replenishment-migrate"]
    c["services"]["replenishment"]["depends_on"] = deps


def _default_pseudonym_key(c):
    env = dict(c["services"]["notifier"]["environment"])
    del env["NOTIFIER_PSEUDONYM_KEY"]
    c["services"]["notifier"]["environment"] = env


def _no_edge(c):
    del c["services"]["edge"]


def _edge_publishes_less(c):
    c["services"]["edge"]["ports"] = ["8001-8004:8001-8004"]


@pytest.mark.parametrize(
    ("breakage", "check"),
    [
        (_drop_healthcheck, check_healthchecks),
        (_drop_redis_url, check_app_env),
        (_wrong_db_host, check_app_env),
        (_hardcoded_keys, check_production_keys),
        (_default_pseudonym_key, check_production_secrets),
        (_port_clash, check_port_clashes),
        (_ghost_dependency, check_depends_on),
        (_missing_dockerfile, check_dockerfiles_exist),
        (_zookeeper_mode, check_kafka_kraft),
        (_auto_create, check_kafka_kraft),
        (_default_naptime, check_postgres_tuning),
        (_no_image, check_build_or_image),
        (_no_gateway_block, lambda c: check_service_folders(c, service_folders())),
        (_fixed_port, check_scalable),
        (_container_name, check_scalable),
        (_no_limits, check_resource_limits),
        (_loopback, check_listens_on_all_interfaces),
        (_no_migrate_job, check_migrations_run_once),
        (_no_edge, lambda c: check_edge(c, EDGE_CONFIG.read_text(encoding="utf-8"))),
        (_edge_publishes_less, lambda c: check_edge(c, EDGE_CONFIG.read_text(encoding="utf-8"))),
    ],
    ids=lambda v: getattr(v, "__name__", "check").lstrip("_"),
)
def test_checks_catch_a_broken_compose(compose, breakage, check):
    broken = copy.deepcopy(compose)
    breakage(broken)
    assert check(broken), f"{breakage.__name__} went unnoticed"


@pytest.mark.parametrize(
    "edit",
    [
        lambda t: t.replace("set $upstream notifier:8005;", "set $upstream notifier:8099;"),
        lambda t: t.replace("resolver 127.0.0.11", "resolver 8.8.8.8"),
        lambda t: t.replace("access_log off;", "access_log /var/log/nginx/access.log;"),
    ],
    ids=["wrong-upstream", "no-docker-dns", "access-log"],
)
def test_edge_check_catches_a_broken_config(compose, edit):
    text = EDGE_CONFIG.read_text(encoding="utf-8")
    broken = edit(text)
    assert broken != text, "the edit did not apply: update this self-test"
    assert check_edge(compose, broken)


@pytest.mark.parametrize(
    "edit",
    [
        lambda t: t.replace("-c constraints.txt", ""),
        lambda t: t.replace("COPY constraints.txt ./constraints.txt\n", ""),
        lambda t: t.replace("./services/pos-gateway\n", "./services/pos-gateway[test]\n"),
        lambda t: re.sub(r"(?m)^USER .*$", "USER root", t),
    ],
    ids=["unpinned", "no-copy", "test-extras", "root"],
)
def test_dockerfile_check_catches_a_broken_dockerfile(edit):
    text = (SERVICES_DIR / "pos-gateway" / "Dockerfile").read_text(encoding="utf-8")
    broken = edit(text)
    assert broken != text, "the edit did not apply: update this self-test"
    assert check_dockerfile_pinned(broken)
