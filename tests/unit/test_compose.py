"""Static checks of docker-compose.yml and its GCS overlay, without a Docker engine: each
container runs a real command with real settings of its service, probes the port that
service listens on, installs an extra that exists, and waits for what it needs."""

from __future__ import annotations

import importlib
import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices

from libs.contracts.events import Event
from libs.contracts.settings import OwnStagingSettings, ServiceSettings
from libs.contracts.topics import all_topic_names
from libs.tools.devstack import SERVICES
from services.iso_watcher.config import IsoWatcherSettings

ROOT = Path(__file__).resolve().parents[2]
BASE_FILE = ROOT / "docker-compose.yml"
GCS_FILE = ROOT / "docker-compose.gcs.yml"

JOB = "topics"  # the one-shot `dicomflow topics`
# Read by the image's HEALTHCHECK or by a client library, not by dicomflow's settings.
PROBE = ["python", "-m", "libs.tools.healthcheck"]
NOT_SETTINGS = {"OPS_PORT_FOR_HEALTHCHECK", "GOOGLE_APPLICATION_CREDENTIALS", "FORWARDED_ALLOW_IPS"}
# Accepted by the settings class but overwritten from API_HOST/API_PORT: setting them misleads.
IGNORED = {"api": {"API_OPS_HOST", "API_OPS_PORT"}}
# Reached from outside the host: the Orthanc watcher (Orthanc calls its webhook), the DICOM
# receiver (modalities and PACS send to it) and the PACS watcher (it calls the PACS). The API
# (archive downloads included: it relays them to the packager) only through the TLS proxy.
PUBLIC = {"orthanc-watcher", "dicom-receiver", "pacs-watcher"}
# Services that read the source files named by file:// URIs, at the watcher's paths.
READS_NAS = {"nas-watcher", "extractor", "storage-writer"}
# Containers with a published port (and so on the public network as well).
PUBLISHED = {"proxy", "grafana", "orthanc"}
# What the operator must set for a service to start (its compose defaults refuse to).
OPERATOR_ENV = {"dicom-receiver": {"RECEIVER_ALLOWED_CALLERS": "CT1,MR1@10.0.0.5"}}
SERVICE_UID = "10001"
TOPIC_LITERAL = re.compile(r"""["']([a-z][a-z_]*\.[a-z][a-z_]*\.v[0-9]+(?:\.dlq)?)["']""")
TOPIC_SETTINGS = ("KAFKA_BOOTSTRAP_SERVERS", "KAFKA_TOPIC_PARTITIONS", "KAFKA_REPLICATION_FACTOR")
SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN", "CREDENTIALS")
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


BASE = load(BASE_FILE)
GCS = load(GCS_FILE)


def merge(base: Any, overlay: Any) -> Any:
    """Compose's merge for the keys used here: mappings by key, volume lists concatenated."""
    if isinstance(base, dict) and isinstance(overlay, dict):
        out = dict(base)
        for key, value in overlay.items():
            out[key] = merge(base[key], value) if key in base else value
        return out
    if isinstance(base, list) and isinstance(overlay, list):
        return base + overlay
    return overlay


MERGED = merge(BASE, GCS)


def run_services(compose: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(dicomflow service name, compose service) for each container running `dicomflow run`."""
    for spec in compose["services"].values():
        command = spec.get("command") or []
        if "build" in spec and command[:1] == ["run"]:
            yield command[1], spec


def settings_class(service: str) -> type[ServiceSettings]:
    module = importlib.import_module(f"{SERVICES[service]}.config")
    found = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, ServiceSettings)
        and obj.__module__ == module.__name__
    ]
    assert len(found) == 1, f"{module.__name__} should define one settings class"
    return found[0]


def env_names(cls: type[ServiceSettings]) -> set[str]:
    """The environment variables pydantic-settings reads for `cls`."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    names: set[str] = set()
    for name, field in cls.model_fields.items():
        alias = field.validation_alias
        if alias is None:
            names.add((prefix + name).upper())
        elif isinstance(alias, str):
            names.add(alias.upper())
        elif isinstance(alias, AliasChoices):
            names.update(c.upper() for c in alias.choices if isinstance(c, str))
        else:
            raise AssertionError(f"{cls.__name__}.{name}: alias {alias!r} not understood")
    return names


def resolve(value: str) -> str:
    """Compose interpolation with defaults, and a placeholder for required variables."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.groups()
        if op and op.endswith("-"):
            return arg
        return f"placeholder-{name.lower()}"

    return INTERPOLATION.sub(one, value).replace("$$", "$")


def environment(spec: dict[str, Any]) -> dict[str, str]:
    env = spec.get("environment") or {}
    assert isinstance(env, dict), "environment as a mapping, so overlays merge by name"
    return env


def build_settings(
    service: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> ServiceSettings:
    cls = settings_class(service)
    for name in env_names(cls):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, resolve(value))
    return cls()


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)
    elif isinstance(node, str):
        yield node


def test_every_service_is_deployed_once_and_runs_a_known_service() -> None:
    names = [name for name, _ in run_services(BASE)]
    assert sorted(names) == sorted(SERVICES)
    for key, spec in BASE["services"].items():
        command = spec.get("command") or []
        if command[:1] == ["run"]:
            assert command == ["run", key], f"{key}: run the service it is named after"
            assert "entrypoint" not in spec, f"{key}: keep the image's `dicomflow` entry point"


@pytest.mark.parametrize("compose", [BASE, MERGED], ids=["base", "with-gcs"])
def test_environment_holds_only_real_settings(compose: dict[str, Any]) -> None:
    for service, spec in run_services(compose):
        env = environment(spec)
        accepted = env_names(settings_class(service)) - IGNORED.get(service, set())
        unknown = set(env) - accepted - NOT_SETTINGS
        assert not unknown, f"{service}: not settings of {settings_class(service).__name__}"
        for name, value in env.items():
            assert isinstance(value, str), f"{service}: quote {name}, YAML would retype it"


@pytest.mark.parametrize("compose", [BASE, MERGED], ids=["base", "with-gcs"])
def test_healthcheck_probes_the_ops_port_the_service_listens_on(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for service, spec in run_services(compose):
        env = environment(spec)
        # The values validate, too (with what the operator must set).
        settings = build_settings(service, {**env, **OPERATOR_ENV.get(service, {})}, monkeypatch)
        assert settings.ops_host == "0.0.0.0", f"{service}: ops server unreachable from outside"
        assert env.get("OPS_PORT_FOR_HEALTHCHECK") == str(settings.ops_port), service
        assert settings.ops_port != 0, f"{service}: a fixed port, so it can be probed"
        # libs/tools/healthcheck.py: /health on OPS_PORT_FOR_HEALTHCHECK, HTTP or HTTPS
        # (tests/integration/test_healthcheck_probe.py runs it against both).
        assert spec["healthcheck"]["test"] == ["CMD", *PROBE], service
        published = {str(settings.ops_port), str(getattr(settings, "port", settings.ops_port))}
        for mapping in spec.get("ports", []):
            assert str(mapping).rsplit(":", 1)[-1] in published, service
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert f"CMD {json.dumps(PROBE)}" in dockerfile  # the image's own HEALTHCHECK


def test_topics_job_creates_the_topics_before_the_pipeline_starts() -> None:
    services = BASE["services"]
    job = services[JOB]
    assert job["command"] == ["topics"]
    assert "entrypoint" not in job
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r'^ENTRYPOINT \["dicomflow"\]$', dockerfile, re.M)
    assert job["depends_on"] == {"kafka": {"condition": "service_healthy"}}
    assert job.get("restart") == "no"

    env = environment(job)
    assert set(TOPIC_SETTINGS) <= set(env)
    assert set(env) <= env_names(ServiceSettings), "`dicomflow topics` reads unprefixed names"
    for service, spec in run_services(BASE):
        depends = spec.get("depends_on") or {}
        assert depends.get(JOB) == {"condition": "service_completed_successfully"}, service
        for name in TOPIC_SETTINGS:
            # Services and the reconciler re-create missing topics: the same way as the job.
            assert environment(spec)[name] == env[name], f"{service}: {name}"


def test_dependencies_are_waited_for_until_healthy() -> None:
    services = BASE["services"]
    for key in ("kafka", "postgres"):
        assert "healthcheck" in services[key]
    assert "kafka-broker-api-versions.sh" in " ".join(services["kafka"]["healthcheck"]["test"])
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    for service, spec in run_services(BASE):
        env = environment(spec)
        depends = spec["depends_on"]
        needs = {"kafka"} | ({"postgres"} if "DATABASE_URL" in env else set())
        assert {k for k in depends if k != JOB} == needs, service
        for name in needs:
            assert depends[name] == {"condition": "service_healthy"}, service
        assert spec["restart"] == "unless-stopped", service


@pytest.mark.parametrize("path", [BASE_FILE, GCS_FILE], ids=lambda p: p.name)
def test_secrets_must_be_given(path: Path) -> None:
    """A secret (or the bucket) has no default: compose refuses to start without it."""
    compose = load(path)
    seen = 0
    for text in strings(compose):
        for m in INTERPOLATION.finditer(text):
            name, op, arg = m.groups()
            if any(word in name for word in SECRET_WORDS) or name == "GCS_BUCKET":
                seen += 1
                assert op == ":?" and arg.strip(), f"{path.name}: {m.group(0)} needs :?message"
        masked = INTERPOLATION.sub("INTERPOLATED", text)
        for url in re.findall(r"\w+://[^\s\"']+", masked):
            userinfo = url.split("://", 1)[1].split("@", 1)
            if len(userinfo) == 2 and ":" in userinfo[0]:
                password = userinfo[0].split(":", 1)[1]
                assert password == "INTERPOLATED", f"{path.name}: literal password in {url}"
    assert seen, f"{path.name}: expected its secrets to be interpolated"


def test_every_service_extra_exists_in_pyproject() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    extras = set(pyproject["project"]["optional-dependencies"])
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    default = re.search(r"^ARG SERVICE_EXTRA=(\S+)$", dockerfile, re.M)
    assert default and default.group(1) in extras
    assert '".[${SERVICE_EXTRA}]"' in dockerfile

    for compose in (BASE, MERGED):
        for key, spec in compose["services"].items():
            if "build" not in spec:
                continue
            chosen = spec["build"]["args"]["SERVICE_EXTRA"].split(",")
            assert set(chosen) <= extras, f"{key}: {chosen}"
            command = spec["command"]
            if command[0] == "run":
                assert command[1] in chosen, f"{key}: its own extra"
            if environment(spec).get("STORAGE_URL", "").startswith("gs://"):
                assert "gcs" in chosen, f"{key}: gs:// needs the gcs extra"


def test_gcs_overlay_only_changes_services_of_the_base_file() -> None:
    assert set(GCS) <= {"services"}, "networks and volumes belong to the base file"
    assert set(GCS["services"]) <= set(BASE["services"])
    for key, spec in GCS["services"].items():
        for network in spec.get("networks", {}):
            assert network in BASE["networks"], f"{key}: {network}"
        env = environment(spec)
        assert env["STORAGE_URL"].startswith("gs://")
        targets = [v.split(":")[-2] for v in spec["volumes"]]
        assert env["GOOGLE_APPLICATION_CREDENTIALS"] in targets, key
        assert all(v.endswith(":ro") for v in spec["volumes"]), f"{key}: key file read-only"
        assert spec["image"] != BASE["services"][key]["image"], f"{key}: own tag for gcs build"


def test_files_are_where_the_services_look_for_them() -> None:
    for service, spec in run_services(BASE):
        volumes = spec.get("volumes", [])
        env = environment(spec)
        if service in READS_NAS:
            assert any(v.endswith(":/nas:ro") for v in volumes), f"{service}: /nas read-only"
        if service == "nas-watcher":
            assert env["NAS_ROOTS"] == "/nas"
        if "STORAGE_URL" in env:
            target = env["STORAGE_URL"].removeprefix("file://")
            assert any(v.split(":")[:2] == ["storage", target] for v in volumes), service


def test_data_stores_are_unreachable_from_outside() -> None:
    assert BASE["networks"]["internal"] == {"internal": True}
    assert BASE["networks"]["egress"] == {}, "egress: outbound calls to remote peers"
    for key, spec in BASE["services"].items():
        networks = set(spec["networks"])
        assert "internal" in networks, key
        if key not in PUBLIC | PUBLISHED:
            assert networks <= {"internal", "egress"}, f"{key}: not on the public network"
            assert "ports" not in spec, f"{key}: not published"
    for port in BASE["services"]["orthanc"]["ports"]:
        assert port.startswith("127.0.0.1:"), "the demo Orthanc is for this host only"
    for key in ("kafka", "postgres", "prometheus", "grafana", "orthanc"):
        # Data in named volumes; only configuration from the repository is bind-mounted.
        mounts = [v.split(":")[0] for v in BASE["services"][key]["volumes"]]
        data = [m for m in mounts if not m.startswith("./deploy/")]
        assert data and all(m in BASE["volumes"] for m in data), f"{key}: named volumes"


def test_every_topic_the_code_names_is_created_by_the_topics_job() -> None:
    """The job runs `dicomflow topics`, which creates `libs.contracts.topics.TOPICS` and their DLQs:
    every event's topic and every topic name written in the code must be among them."""
    created = set(all_topic_names())
    domains = {name.split(".")[0] for name in created}
    events: list[type[Event]] = []
    pending: list[type[Event]] = [Event]
    while pending:
        cls = pending.pop()
        pending += cls.__subclasses__()
        events.append(cls)
    for cls in events:
        if cls.TOPIC:
            assert cls.TOPIC in created, f"{cls.__name__}: add it to PIPELINE_EVENTS"
    for folder in ("libs", "services"):
        for path in (ROOT / folder).rglob("*.py"):
            for topic in TOPIC_LITERAL.findall(path.read_text(encoding="utf-8")):
                if topic.split(".")[0] not in domains:
                    continue  # same shape, not a topic (e.g. a payload format name)
                assert topic in created, f"{path.relative_to(ROOT)} names {topic}"


def test_monitoring_gets_the_repository_files() -> None:
    services = BASE["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    config = load(ROOT / "deploy" / "prometheus" / "prometheus.yml")
    for job in config["scrape_configs"]:
        (sd,) = job["dns_sd_configs"]
        (name,) = sd["names"]
        spec = services[name]
        assert str(sd["port"]) == environment(spec)["OPS_PORT_FOR_HEALTHCHECK"], name
        assert "internal" in spec["networks"], name

    mounts = dict(v.rsplit(":", 2)[:2] for v in grafana["volumes"] if v.startswith("./"))
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = load(ROOT / "deploy" / "grafana" / "provisioning" / "dashboards" / "dicomflow.yml")
    assert provider["providers"][0]["options"]["path"] == mounts["./deploy/grafana/dashboards"]
    home = environment(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(mounts["./deploy/grafana/dashboards"] + "/")
    assert (ROOT / "deploy" / "grafana" / "dashboards" / home.rsplit("/", 1)[1]).exists()
    source = load(ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    assert grafana["depends_on"] == {"prometheus": {"condition": "service_healthy"}}
    for key in ("prometheus", "grafana", "orthanc"):
        assert services[key]["healthcheck"]["test"], key
        assert services[key]["restart"] == "unless-stopped", key


def test_receiver_refuses_to_start_open_to_anyone_with_the_compose_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Published on every address with no allow-list, it needs RECEIVER_ALLOW_ANY_CALLER."""
    spec = BASE["services"]["dicom-receiver"]
    env = environment(spec)
    assert spec["ports"] and resolve(env["RECEIVER_HOST"]) == "0.0.0.0"
    with pytest.raises(ValueError, match="RECEIVER_ALLOWED_CALLERS"):
        build_settings("dicom-receiver", env, monkeypatch)
    build_settings("dicom-receiver", {**env, "RECEIVER_ALLOW_ANY_CALLER": "true"}, monkeypatch)


def _runtime_stage_paths(dockerfile: str) -> tuple[set[str], set[str], str]:
    """(directories created, directories chowned to the service user, USER) of the image's
    final stage, from its RUN lines (continuations joined)."""
    stage = dockerfile.rsplit("\nFROM ", 1)[1].replace("\\\n", " ")
    created: set[str] = set()
    owned: set[str] = set()
    for line in stage.splitlines():
        if not line.startswith("RUN "):
            continue
        for command in re.split(r"&&|;", line[4:]):
            words = command.split()
            if words[:2] == ["mkdir", "-p"]:
                created.update(w for w in words[2:] if w.startswith("/"))
            elif words[:1] == ["chown"]:
                assert words[1] in {"dicomflow:dicomflow", f"{SERVICE_UID}:{SERVICE_UID}"}
                owned.update(w for w in words[2:] if w.startswith("/"))
    user = re.findall(r"^USER (\S+)$", stage, re.M)[-1]
    return created, owned, user


def test_every_volume_mount_point_is_created_and_owned_by_the_service_user() -> None:
    """A named volume takes the ownership of the image's directory it is first mounted on;
    a path the image lacks is created root-owned, and uid 10001 cannot write it. (Bind
    mounts keep the host folder's owner: the compose header says what each needs.)"""
    created, owned, user = _runtime_stage_paths((ROOT / "Dockerfile").read_text("utf-8"))
    assert user.split(":")[0] in {"dicomflow", SERVICE_UID}
    checked = set()
    for compose in (BASE, MERGED):
        for key, spec in compose["services"].items():
            if "build" not in spec:
                continue  # third-party images own their paths
            for volume in spec.get("volumes", []):
                source, target = resolve(volume).split(":")[:2]
                if source not in compose["volumes"]:
                    continue  # a bind mount: the host's folder and its owner, as they are
                # Named: a new volume takes the ownership of the image's directory.
                assert target in created, f"{key}: {target} is not created in the Dockerfile"
                assert target in owned, f"{key}: {target} not owned by uid {SERVICE_UID}"
                checked.add(source)
    assert {"storage", "archives", "staging"} <= checked


# The host folders a service writes into (bind mounts keep the host's owner): service -> target.
READ_WRITE_BINDS = {"iso-watcher": "/inbox"}  # discs move to processed/ and failed/ inside it


def test_read_write_bind_mounts_are_the_folders_the_services_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bind mount is the host's folder with the host's owner (a missing one is created
    root-owned): each read-write one is the folder its service's settings write into, and
    the compose header tells the operator it must be writable by uid 10001. Every other
    bind mount is read-only."""
    header = BASE_FILE.read_text(encoding="utf-8").split("\nservices:")[0]
    found: dict[str, str] = {}
    for service, spec in run_services(BASE):
        for volume in spec.get("volumes", []):
            source, target, *mode = resolve(volume).split(":")
            if source in BASE["volumes"]:
                continue  # named: test_every_volume_mount_point_is_created_and_owned_...
            if mode == ["ro"]:
                continue
            assert service not in found, f"{service}: one folder it writes"
            found[service] = target
            variable = INTERPOLATION.search(volume)
            assert variable is not None, f"{service}: the host folder is the operator's choice"
            name, default = variable.group(1), variable.group(3)
            assert default and (ROOT / default).resolve().is_relative_to(ROOT / "var"), name
            # Its line in the header and the indented lines continuing it.
            entry = re.search(rf"^#   {name} .*(?:\n# {{6,}}\S.*)*", header, re.M)
            words = " ".join(entry.group(0).replace("#", " ").split()) if entry else ""
            assert f"writable by uid {SERVICE_UID}" in words, (
                f"the compose header must say {name} is writable by uid {SERVICE_UID}"
            )
    assert found == READ_WRITE_BINDS
    spec = BASE["services"]["iso-watcher"]
    iso = build_settings("iso-watcher", environment(spec), monkeypatch)
    assert isinstance(iso, IsoWatcherSettings)
    inbox = Path(READ_WRITE_BINDS["iso-watcher"])
    assert iso.inbox == inbox
    for moved_to in (iso.processed, iso.failed):
        assert moved_to.is_relative_to(inbox), "it writes inside the read-write mount only"
    assert not iso.staging_dir.is_relative_to(inbox)


def test_the_api_is_published_only_through_the_tls_proxy() -> None:
    services = BASE["services"]
    api, proxy = services["api"], services["proxy"]
    assert "ports" not in api and set(api["networks"]) == {"internal"}
    assert environment(api)["FORWARDED_ALLOW_IPS"] == "*"  # only the proxy reaches it
    assert [p.rsplit(":", 1)[-1] for p in proxy["ports"]] == ["443"]
    assert "./deploy/caddy/Caddyfile:/etc/caddy/Caddyfile:ro" in proxy["volumes"]
    caddyfile = (ROOT / "deploy" / "caddy" / "Caddyfile").read_text("utf-8")
    assert re.search(r"^\{\$PROXY_SITE\}:443 \{$", caddyfile, re.M)
    assert "\ttls {$PROXY_TLS}" in caddyfile
    assert "reverse_proxy api:" + environment(api)["API_PORT"] in caddyfile
    assert "flush_interval -1" in caddyfile  # downloads stream, never buffered


# Read files a source staged by their file:// URI, in their own containers.
READS_STAGING = {"extractor", "storage-writer"}


def staging_mount(spec: dict[str, Any]) -> tuple[Path, bool] | None:
    """Where the container mounts the shared `staging` volume, and whether read-write."""
    for volume in spec.get("volumes", []):
        source, target, *mode = resolve(volume).split(":")
        if source == "staging":
            return Path(target), mode != ["ro"]
    return None


def test_staged_files_are_on_the_volume_the_pipeline_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every source that stages files for the pipeline (its settings' `*staging_dir`) writes
    them on the shared `staging` volume, which the extractor and the storage-writer mount at
    the same path: a staged file's URI names it in every container. A folder inside the
    source's own container would make each of its files `gone` to the pipeline."""
    readers = {}
    for service, spec in run_services(BASE):
        if service in READS_STAGING:
            readers[service] = staging_mount(spec)
    assert set(readers) == READS_STAGING
    assert set(readers.values()) == {(Path("/staging"), False)}, readers
    staging_sources, folders = set(), set()
    for service, spec in run_services(BASE):
        cls = settings_class(service)
        own = [
            name
            for name, field in cls.model_fields.items()
            if name.endswith("staging_dir") and field.validation_alias is None
        ]
        if not own:
            continue
        env = environment(spec) | OPERATOR_ENV.get(service, {})
        settings = build_settings(service, env, monkeypatch)
        mount = staging_mount(spec)
        for name in own:
            folder = Path(getattr(settings, name))
            assert mount is not None and mount[1], f"{service}: the staging volume, read-write"
            assert folder.is_absolute() and folder.is_relative_to(mount[0]), (
                f"{service}: {name} = {folder} is not on the staging volume ({mount[0]})"
            )
            staging_sources.add(service)
            folders.add(folder)
    # The extractor knows them all as our own (their files stamped at once: ADR 0031).
    extractor = build_settings("extractor", environment(BASE["services"]["extractor"]), monkeypatch)
    assert isinstance(extractor, OwnStagingSettings)
    assert set(extractor.own_staging()) == folders
    assert staging_sources == {
        "dicom-receiver",
        "orthanc-watcher",
        "iso-watcher",
        "pacs-watcher",
        "api",
    }
