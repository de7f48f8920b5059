"""The production stack's assets (``infra/docker-compose.yml``, ``Dockerfile``, Grafana
provisioning, the Prometheus and Alertmanager configurations) agree with the code: images,
commands, environment variables, topics, partitions, ports and versions.

No Docker engine runs here, so the files are parsed, not started. Each check is a function
returning the problems it finds; every check runs once on the real files (no problem
expected) and once on a copy broken on purpose (a problem expected), so none can pass
vacuously.
"""

from __future__ import annotations

import copy
import re
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer.main
import yaml

from processors.cli import app
from processors.correlator.step import CHAIN_LINKS
from processors.storage.migrations import MINIMUM_VERSION
from producers.settings import Settings
from schemas import topics

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
COMPOSE_FILE = INFRA / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DATASOURCE_FILE = INFRA / "grafana" / "provisioning" / "datasources" / "clickhouse.yml"
DASHBOARDS_FILE = INFRA / "grafana" / "provisioning" / "dashboards" / "custody.yml"
PROMETHEUS_DATASOURCE_FILE = INFRA / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
PROMETHEUS_FILE = INFRA / "prometheus" / "prometheus.yml"
ALERTMANAGER_FILE = INFRA / "alertmanager" / "alertmanager.yml"

CUSTODY_SERVICES = {"migrate", "correlate", "ingest", "serve", "notify", "collect"}
# Each long-running Custody service: the Prometheus job that scrapes it, and the setting
# of its /metrics address.
SCRAPED = {
    "correlate": ("custody-correlate", "correlator_metrics_address"),
    "ingest": ("custody-ingest", "ingest_metrics_address"),
    "serve": ("custody-serve", "serve_metrics_address"),
    "notify": ("custody-notify", "notify_metrics_address"),
    "collect": ("custody-collect", "collect_metrics_address"),
}
GRAFANA_PLUGIN = "grafana-clickhouse-datasource"
DASHBOARDS_SOURCE = ROOT / "dashboards" / "grafana"

Compose = dict[str, Any]
Check = Callable[[Compose], list[str]]

_INTERPOLATION = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def _load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path} is not a YAML mapping"
    return data


def _interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` with the defaults (the environment is not consulted)."""
    return _INTERPOLATION.sub(lambda m: m.group(2) or "", value)


def _services(compose: Compose) -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = compose.get("services") or {}
    return services


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment in either of compose's forms (mapping or KEY=VALUE list)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): _interpolate(str(v)) for k, v in env.items()}


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def _image_tag(image: str) -> str:
    """The tag of an image reference ('' when there is none)."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else ""


def _settings_env_names() -> set[str]:
    return {f"CUSTODY_{name.upper()}" for name in Settings.model_fields}


def _setting_default(name: str) -> Any:
    return Settings.model_fields[name].default


def _mounts(service: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(source, target) of a service's volumes in short syntax."""
    for volume in service.get("volumes") or []:
        source, target, *_ = str(volume).split(":")
        yield source, target


def _host_path(source: str) -> Path | None:
    """The host path of a bind mount (relative to the compose file), None for a volume."""
    return (INFRA / source).resolve() if source.startswith((".", "/")) else None


# ---- checks ---------------------------------------------------------------------------


def check_images_pinned(compose: Compose) -> list[str]:
    """Every service names an image with an explicit tag other than ``latest``."""
    problems = []
    for name, service in _services(compose).items():
        image = str(service.get("image", ""))
        tag = _image_tag(image)
        if not image or not tag or tag == "latest":
            problems.append(f"{name}: image {image!r} is not pinned to a version")
    return problems


def check_custody_services_build(compose: Compose) -> list[str]:
    """The Custody services build the repository's Dockerfile (and only they build)."""
    problems = []
    built = set()
    for name, service in _services(compose).items():
        build = service.get("build")
        if build is None:
            continue
        built.add(name)
        if isinstance(build, str):
            build = {"context": build}
        context = (INFRA / build.get("context", ".")).resolve()
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        if context != ROOT or dockerfile != DOCKERFILE:
            problems.append(f"{name}: builds {dockerfile}, not the repository's Dockerfile")
    if built != CUSTODY_SERVICES:
        problems.append(f"services built from the Dockerfile: {sorted(built)}")
    return problems


def check_commands_exist(compose: Compose) -> list[str]:
    """Each Custody service runs a command of the ``custody`` app, with options it has."""
    # typer's group (click's, or the copy of click that newer typer releases vendor).
    commands: dict[str, Any] = getattr(typer.main.get_command(app), "commands", {})
    assert commands, "the custody app has no commands"
    problems = []
    for name in sorted(CUSTODY_SERVICES & set(_services(compose))):
        argv = _command(_services(compose)[name])
        if not argv or argv[0] not in commands:
            problems.append(f"{name}: {argv!r} is not a custody command")
            continue
        command = commands[argv[0]]
        options = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
        problems += [
            f"{name}: custody {argv[0]} has no option {arg}"
            for arg in argv[1:]
            if arg.startswith("-") and arg.split("=", 1)[0] not in options
        ]
    return problems


def check_custody_environment(compose: Compose) -> list[str]:
    """Every ``CUSTODY_*`` variable is a Settings field, and the values are valid settings."""
    known = _settings_env_names()
    problems = []
    for name, service in _services(compose).items():
        env = _environment(service)
        custody = {k: v for k, v in env.items() if k.startswith("CUSTODY_")}
        unknown = sorted(set(custody) - known)
        if unknown:
            problems.append(f"{name}: {unknown} are not fields of producers.settings.Settings")
            continue
        if custody:
            values: dict[str, Any] = {
                k.removeprefix("CUSTODY_").lower(): v for k, v in custody.items()
            }
            try:
                Settings(**values)
            except ValueError as exc:
                problems.append(f"{name}: invalid settings: {exc}")
    return problems


def _created_topics(compose: Compose) -> tuple[set[str], set[int]]:
    """Topics and partition counts in kafka-init's script."""
    script = " ".join(_command(_services(compose).get("kafka-init", {})))
    names: set[str] = set()
    for loop in re.findall(r"for \w+ in ([^;]+);", script):
        names.update(loop.split())
    names.update(re.findall(r"--topic[ =]([\w.-]+)", script))
    partitions = {int(n) for n in re.findall(r"--partitions[ =](\d+)", script)}
    return names, partitions


def check_topics(compose: Compose) -> list[str]:
    """kafka-init creates the contract topics and chain-links, with the default partitions."""
    names, partitions = _created_topics(compose)
    expected = {*topics.ALL, CHAIN_LINKS}
    problems = []
    if names != expected:
        problems.append(f"kafka-init creates {sorted(names)}, the code needs {sorted(expected)}")
    default = _setting_default("event_partitions")
    if partitions != {default}:
        problems.append(f"kafka-init's partitions {sorted(partitions)} != {default}")
    for name, service in _services(compose).items():
        configured = _environment(service).get("CUSTODY_EVENT_PARTITIONS")
        if configured is not None and partitions != {int(configured)}:
            problems.append(f"{name}: CUSTODY_EVENT_PARTITIONS={configured} != kafka-init's")
    return problems


def check_kafka(compose: Compose) -> list[str]:
    """Kafka runs in KRaft mode, and the Custody services bootstrap from its listener."""
    services = _services(compose)
    env = _environment(services.get("kafka", {}))
    problems = []
    if "controller" not in env.get("KAFKA_PROCESS_ROLES", "") or "zookeeper" in str(env):
        problems.append("kafka is not a KRaft broker+controller")
    advertised = env.get("KAFKA_ADVERTISED_LISTENERS", "")
    for name in sorted(CUSTODY_SERVICES & set(services)):
        bootstrap = _environment(services[name]).get("CUSTODY_KAFKA_BOOTSTRAP")
        if name != "migrate" and (not bootstrap or f"//{bootstrap}" not in advertised):
            problems.append(f"{name}: CUSTODY_KAFKA_BOOTSTRAP={bootstrap} is not advertised")
    return problems


def check_serve(compose: Compose) -> list[str]:
    """serve listens on all interfaces on the default port, and publishes that port."""
    serve = _services(compose).get("serve", {})
    env = _environment(serve)
    port = _setting_default("serve_port")
    problems = []
    # Compared with what the compose file sets; nothing binds here.
    if env.get("CUSTODY_SERVE_HOST") != "0.0.0.0":  # noqa: S104
        problems.append("serve: CUSTODY_SERVE_HOST must be 0.0.0.0 inside a container")
    if int(env.get("CUSTODY_SERVE_PORT", port)) != port:
        problems.append(f"serve: CUSTODY_SERVE_PORT is not the default {port}")
    published = {str(p).rsplit(":", 1)[-1] for p in serve.get("ports") or []}
    if str(port) not in published:
        problems.append(f"serve: container port {port} is not published ({sorted(published)})")
    return problems


def check_clickhouse(compose: Compose) -> list[str]:
    """The server is new enough for the migrations and lets its admin manage access;
    ingest connects as the writer and serve as the analyst, with the passwords migrate
    creates them with; notify and collect not at all; the other roles as the server's admin user."""
    services = _services(compose)
    clickhouse = services.get("clickhouse", {})
    tag = _image_tag(str(clickhouse.get("image", "")))
    problems = []
    match = re.match(r"(\d+)\.(\d+)", tag)
    if not match or (int(match[1]), int(match[2])) < MINIMUM_VERSION:
        problems.append(f"clickhouse {tag!r} is older than {MINIMUM_VERSION}")
    env = _environment(clickhouse)
    if env.get("CLICKHOUSE_DEFAULT_ACCESS_MANAGEMENT") != "1":
        problems.append("clickhouse: its admin cannot create the roles of migration 0004")
    migrate = _environment(services.get("migrate", {}))
    database = env.get("CLICKHOUSE_DB")
    expected: dict[str, str | None] = {
        name: f"clickhouse://{env.get('CLICKHOUSE_USER')}:{env.get('CLICKHOUSE_PASSWORD')}"
        f"@clickhouse:9000/{database}"
        for name in CUSTODY_SERVICES
    }
    # notify reads Kafka and posts to Alertmanager, collect publishes to Kafka: no
    # ClickHouse credentials at all.
    expected["notify"] = expected["collect"] = None
    settings = Settings()
    expected["ingest"] = (
        f"clickhouse://{settings.clickhouse_writer_user}:"
        f"{migrate.get('CUSTODY_CLICKHOUSE_WRITER_PASSWORD')}@clickhouse:9000/{database}"
    )
    expected["serve"] = (
        f"clickhouse://{settings.clickhouse_analyst_user}:"
        f"{migrate.get('CUSTODY_CLICKHOUSE_ANALYST_PASSWORD')}@clickhouse:9000/{database}"
    )
    for name in sorted(CUSTODY_SERVICES & set(services)):
        url = _environment(services[name]).get("CUSTODY_CLICKHOUSE_URL")
        if url != expected[name]:
            problems.append(f"{name}: CUSTODY_CLICKHOUSE_URL does not match its ClickHouse user")
    return problems


def check_dependencies(compose: Compose) -> list[str]:
    """depends_on names existing services; health conditions need a healthcheck; ingest
    and serve wait for the migrations, migrate for a healthy ClickHouse."""
    services = _services(compose)
    problems = []
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        if isinstance(depends, list):
            depends = {d: {"condition": "service_started"} for d in depends}
        for dep, spec in depends.items():
            if dep not in services:
                problems.append(f"{name}: depends on unknown service {dep}")
            elif spec.get("condition") == "service_healthy" and (
                "healthcheck" not in services[dep]
            ):
                problems.append(f"{name}: waits for {dep} to be healthy; it has no healthcheck")
    required = {
        ("migrate", "clickhouse"): "service_healthy",
        ("ingest", "migrate"): "service_completed_successfully",
        ("serve", "migrate"): "service_completed_successfully",
        ("ingest", "kafka-init"): "service_completed_successfully",
        ("correlate", "kafka-init"): "service_completed_successfully",
        ("notify", "kafka-init"): "service_completed_successfully",
    }
    for (name, dep), condition in required.items():
        spec = (services.get(name, {}).get("depends_on") or {}).get(dep)
        if not isinstance(spec, dict) or spec.get("condition") != condition:
            problems.append(f"{name} must depend on {dep} with {condition}")
    return problems


def check_grafana(compose: Compose) -> list[str]:
    """Grafana installs the plugin the data source uses, mounts the provisioning files and
    the dashboards where the file provider reads them."""
    grafana = _services(compose).get("grafana", {})
    env = _environment(grafana)
    plugins = {p.split()[0] for p in env.get("GF_INSTALL_PLUGINS", "").split(",") if p.strip()}
    problems = []
    datasources = _load_yaml(DATASOURCE_FILE).get("datasources") or []
    source = next((d for d in datasources if d.get("uid") == "clickhouse"), None)
    if source is None:
        return ["no data source with uid clickhouse"]
    if source.get("type") not in plugins or source.get("type") != GRAFANA_PLUGIN:
        problems.append(f"data source type {source.get('type')} is not installed ({plugins})")
    json_data = source.get("jsonData", {})
    clickhouse_env = _environment(_services(compose).get("clickhouse", {}))
    if json_data.get("host") not in _services(compose) or json_data.get("protocol") != "native":
        problems.append("data source host/protocol do not name the clickhouse service natively")
    if json_data.get("defaultDatabase") != clickhouse_env.get("CLICKHOUSE_DB"):
        problems.append("data source defaultDatabase is not the ClickHouse database")
    for variable in re.findall(r"\$\{?(\w+)", DATASOURCE_FILE.read_text()):
        if variable not in env:
            problems.append(f"data source reads ${variable}, not in grafana's environment")
    providers = _load_yaml(DASHBOARDS_FILE).get("providers") or []
    paths = {p.get("options", {}).get("path") for p in providers if p.get("type") == "file"}
    mounts = {target: _host_path(source) for source, target in _mounts(grafana)}
    for path in paths:
        if mounts.get(str(path)) != DASHBOARDS_SOURCE:
            problems.append(f"dashboards path {path} is not a mount of {DASHBOARDS_SOURCE}")
    if not paths:
        problems.append("no file provider for the dashboards")
    if mounts.get("/etc/grafana/provisioning") != INFRA / "grafana" / "provisioning":
        problems.append("grafana does not mount infra/grafana/provisioning")
    return problems


def _targets(configs: list[dict[str, Any]]) -> list[str]:
    return [str(t) for c in configs for s in c.get("static_configs") or [] for t in s["targets"]]


def _mounted_config(compose: Compose, name: str) -> Path | None:
    """The host file a service's ``--config.file=`` names through its bind mounts."""
    service = _services(compose).get(name, {})
    flag = next((a for a in _command(service) if a.startswith("--config.file=")), "")
    config = PurePosixPath(flag.removeprefix("--config.file="))
    for source, target in _mounts(service):
        host = _host_path(source)
        if host is not None and config.is_relative_to(target):
            return host / config.relative_to(target)
    return None


def check_monitoring(compose: Compose) -> list[str]:
    """Prometheus scrapes each long-running Custody service where its metrics address
    listens (all interfaces of its container); Prometheus and Alertmanager read the
    repository's configurations; notify posts to the Alertmanager Prometheus alerts; Grafana's
    Prometheus data source is the prometheus service."""
    services = _services(compose)
    config = _load_yaml(PROMETHEUS_FILE)
    scrapes = {job["job_name"]: _targets([job]) for job in config.get("scrape_configs") or []}
    problems = []
    for name, (job, setting) in sorted(SCRAPED.items()):
        variable = f"CUSTODY_{setting.upper()}"
        host, _, port = _environment(services.get(name, {})).get(variable, "").rpartition(":")
        # Compared with what the compose file sets; nothing binds here.
        if host != "0.0.0.0":  # noqa: S104
            problems.append(f"{name}: {variable} must listen on 0.0.0.0 inside a container")
        if scrapes.get(job) != [f"{name}:{port}"]:
            problems.append(f"job {job} scrapes {scrapes.get(job)}, {name} serves on {port}")
    for name, expected in (("prometheus", PROMETHEUS_FILE), ("alertmanager", ALERTMANAGER_FILE)):
        if _mounted_config(compose, name) != expected:
            problems.append(f"{name} does not read {expected.relative_to(ROOT)}")
    alertmanagers = _targets((config.get("alerting") or {}).get("alertmanagers") or [])
    notify = _environment(services.get("notify", {}))
    posted_to = urlsplit(notify.get("CUSTODY_ALERTMANAGER_URL", ""))
    if posted_to.netloc not in alertmanagers or posted_to.hostname != "alertmanager":
        problems.append(f"notify posts to {posted_to.netloc}, Prometheus to {alertmanagers}")
    datasources = _load_yaml(PROMETHEUS_DATASOURCE_FILE).get("datasources") or []
    urls = {
        urlsplit(d.get("url", "")).hostname for d in datasources if d.get("uid") == "prometheus"
    }
    if urls != {"prometheus"} or "prometheus" not in services:
        problems.append(f"Grafana's Prometheus data source reads {urls}")
    return problems


CHECKS: list[Check] = [
    check_images_pinned,
    check_custody_services_build,
    check_commands_exist,
    check_custody_environment,
    check_topics,
    check_kafka,
    check_serve,
    check_clickhouse,
    check_dependencies,
    check_grafana,
    check_monitoring,
]


# ---- tests ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> Compose:
    """The compose file, parsed (anchors and merge keys resolved by PyYAML)."""
    return _load_yaml(COMPOSE_FILE)


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_compose_agrees_with_code(compose: Compose, check: Check) -> None:
    """Each check finds nothing wrong in the real compose file."""
    assert check(compose) == []


def _set(path: str, value: Any) -> Callable[[Compose], None]:
    """A breakage: set ``services.<path>`` (dot-separated) to ``value``."""

    def apply(compose: Compose) -> None:
        *parents, last = path.split(".")
        node = compose["services"]
        for key in parents:
            node = node[key]
        node[last] = value

    return apply


BREAKAGES: list[tuple[Check, Callable[[Compose], None]]] = [
    (check_images_pinned, _set("grafana.image", "grafana/grafana:latest")),
    (check_images_pinned, _set("kafka.image", "apache/kafka")),
    (check_custody_services_build, _set("serve.build", {"context": "."})),
    (check_commands_exist, _set("correlate.command", ["correlator"])),
    (check_commands_exist, _set("ingest.command", ["ingest", "--no-server"])),
    (check_custody_environment, _set("ingest.environment.CUSTODY_INGEST_BATCH", "10")),
    (check_custody_environment, _set("ingest.environment.CUSTODY_SERVE_PORT", "http")),
    (check_topics, _set("kafka-init.command", ["for t in custody.events.v1; do x; done"])),
    (
        check_topics,
        lambda c: c["services"]["kafka-init"].update(
            command=[
                c["services"]["kafka-init"]["command"][0].replace("--partitions 6", ""),
                "--partitions 3",
            ]
        ),
    ),
    (check_topics, _set("correlate.environment.CUSTODY_EVENT_PARTITIONS", "12")),
    (check_kafka, _set("correlate.environment.CUSTODY_KAFKA_BOOTSTRAP", "localhost:9092")),
    (check_kafka, _set("kafka.environment.KAFKA_PROCESS_ROLES", "broker")),
    (check_serve, _set("serve.ports", ["8080:8080"])),
    (check_serve, _set("serve.environment.CUSTODY_SERVE_HOST", "127.0.0.1")),
    (check_clickhouse, _set("clickhouse.image", "clickhouse/clickhouse-server:23.8")),
    (check_clickhouse, _set("clickhouse.environment.CLICKHOUSE_DB", "default")),
    (check_dependencies, _set("ingest.depends_on", {"kafka-init": {"condition": "x"}})),
    (check_dependencies, _set("serve.depends_on", {"nowhere": {}})),
    (check_grafana, _set("grafana.environment.GF_INSTALL_PLUGINS", "grafana-piechart-panel")),
    (check_grafana, _set("grafana.volumes", ["./grafana/provisioning:/etc/grafana/provisioning"])),
    (
        check_clickhouse,
        _set("notify.environment.CUSTODY_CLICKHOUSE_URL", "clickhouse://x:y@clickhouse:9000/c"),
    ),
    (check_dependencies, _set("notify.depends_on", {"alertmanager": {}})),
    (check_monitoring, _set("ingest.environment.CUSTODY_INGEST_METRICS_ADDRESS", "127.0.0.1:9470")),
    (check_monitoring, _set("notify.environment.CUSTODY_NOTIFY_METRICS_ADDRESS", "0.0.0.0:9999")),
    (
        check_monitoring,
        _set("notify.environment.CUSTODY_ALERTMANAGER_URL", "http://localhost:9093"),
    ),
    (check_monitoring, _set("prometheus.volumes", ["./prometheus:/etc/prom:ro"])),
    (check_monitoring, _set("alertmanager.command", ["--config.file=/etc/alertmanager/am.yml"])),
]


@pytest.mark.parametrize(
    ("check", "breakage"),
    BREAKAGES,
    ids=[f"{check.__name__}-{i}" for i, (check, _) in enumerate(BREAKAGES)],
)
def test_each_check_can_fail(
    compose: Compose, check: Check, breakage: Callable[[Compose], None]
) -> None:
    """A compose file broken on purpose makes the check report a problem."""
    broken = copy.deepcopy(compose)
    breakage(broken)
    assert check(broken) != []


def test_every_check_is_shown_to_fail() -> None:
    """No check is left without a breakage that it catches."""
    assert {check for check, _ in BREAKAGES} == set(CHECKS)


def test_provisioning_files_exist() -> None:
    """Grafana's provisioning files are where the compose file mounts them from."""
    assert DATASOURCE_FILE.is_file()
    assert DASHBOARDS_FILE.is_file()
    assert PROMETHEUS_DATASOURCE_FILE.is_file()


# ---- Dockerfile -----------------------------------------------------------------------


def _dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    instructions = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def dockerfile_problems(text: str) -> list[str]:
    """The image runs ``custody`` as a non-root user from python:3.11-slim, with every
    package of pyproject copied in and no secret baked in."""
    instructions = _dockerfile_instructions(text)
    problems = []
    bases = [args.split()[0] for keyword, args in instructions if keyword == "FROM"]
    if not bases or not all(base.startswith("python:3.11-slim") for base in bases):
        problems.append(f"base images {bases} are not python:3.11-slim")
    entrypoints = [args for keyword, args in instructions if keyword == "ENTRYPOINT"]
    if not entrypoints or entrypoints[-1] not in ('["custody"]', "custody"):
        problems.append(f"entrypoint {entrypoints[-1:]} is not custody")
    users = [args for keyword, args in instructions if keyword == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("the image runs as root (no USER, or USER root last)")
    copied = " ".join(args for keyword, args in instructions if keyword == "COPY")
    for package in ("schemas", "producers", "processors", "infra/clickhouse", "dashboards"):
        if package not in copied:
            problems.append(f"{package} is not copied into the image")
    for keyword, args in instructions:
        if keyword in ("ENV", "ARG") and re.search(r"PASSWORD|SECRET|TOKEN|KEY", args, re.I):
            problems.append(f"{keyword} {args} may bake a secret into the image")
    return problems


def test_dockerfile() -> None:
    """The repository's Dockerfile passes its checks, and the entrypoint is the script."""
    assert dockerfile_problems(DOCKERFILE.read_text()) == []
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'custody = "producers.command:main"' in pyproject


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("USER custody:custody", "USER root"),
        ('ENTRYPOINT ["custody"]', 'ENTRYPOINT ["python"]'),
        ("FROM python:3.11-slim-bookworm AS runtime", "FROM python:3.12 AS runtime"),
        ("COPY infra/clickhouse ./infra/clickhouse", ""),
        ("COPY dashboards ./dashboards", ""),
        ("CUSTODY_HOME=/var/lib/custody", "CUSTODY_HOME=/var/lib/custody CUSTODY_SASL_PASSWORD=x"),
    ],
)
def test_dockerfile_checks_can_fail(old: str, new: str) -> None:
    """A Dockerfile broken on purpose is caught."""
    text = DOCKERFILE.read_text()
    assert old in text
    assert dockerfile_problems(text.replace(old, new)) != []
