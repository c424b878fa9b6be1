"""Routing rules: the file's validation and which instance goes where."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from libs.contracts.events import (
    DicomHeader,
    FileRef,
    Hashes,
    InstanceAttrs,
    InstanceStored,
    PatientAttrs,
    SeriesAttrs,
    StudyAttrs,
)
from libs.runtime.metrics import ConsumerMetrics
from services.router.handlers import handle_stored_batch, routed
from services.router.metrics import RouterMetrics
from services.router.rules import Facts, RoutingConfig, load_rules, route

ROOT = Path(__file__).resolve().parents[2]
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"


def stored(
    *,
    source: str = "dicom:CT_ROOM1",
    modality: str = "CT",
    sop_class: str = CT,
    description: str = "CT THORAX",
    sop_uid: str = "1.2.3.4",
    disposition: str = "new",
) -> InstanceStored:
    header = DicomHeader(
        patient=PatientAttrs(patient_id="P1"),
        study=StudyAttrs(study_uid="1.2.3", study_description=description),
        series=SeriesAttrs(series_uid="1.2.3.1", modality=modality),
        instance=InstanceAttrs(
            sop_instance_uid=sop_uid,
            sop_class_uid=sop_class,
            transfer_syntax_uid="1.2.840.10008.1.2.1",
        ),
    )
    return InstanceStored(
        correlation_id="corr-1",
        source=source,
        file=FileRef(file_id=1, uri="file:///x.dcm", size=10),
        header=header,
        hashes=Hashes(file_sha256="a", content_sha256="b", has_pixels=True),
        disposition=disposition,  # type: ignore[arg-type]
        storage_url=f"file:///s/studies/1.2.3/1.2.3.1/{sop_uid}.dcm",
    )


def config(rules: list[dict[str, object]]) -> RoutingConfig:
    return RoutingConfig.model_validate(
        {
            "destinations": [
                {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104},
                {"name": "ai", "ae_title": "AI", "host": "127.0.0.1", "port": 105},
            ],
            "rules": rules,
        }
    )


def destinations(cfg: RoutingConfig, event: InstanceStored) -> dict[str, str]:
    return route(cfg, Facts.of(event))


def test_the_example_file_is_valid() -> None:
    cfg = load_rules(ROOT / "deploy/routing/rules.example.yaml")
    assert [d.name for d in cfg.destinations] == ["main-pacs", "ai-node"]
    assert cfg.destinations[0].verify == "c-find"
    assert cfg.rules[0].match.calling_ae == ["CT_*"]  # one pattern is a list of one


def test_every_criterion_must_match_and_any_pattern_of_one_does() -> None:
    cfg = config(
        [{"name": "r", "match": {"modality": ["MR", "ct"], "calling_ae": "ct_*"}, "to": ["pacs"]}]
    )
    assert destinations(cfg, stored()) == {"pacs": "r"}  # case does not matter
    assert destinations(cfg, stored(modality="US")) == {}
    assert destinations(cfg, stored(source="dicom:MR_ROOM")) == {}


def test_calling_ae_matches_only_what_our_scp_received() -> None:
    cfg = config([{"name": "r", "match": {"calling_ae": "*"}, "to": ["pacs"]}])
    assert destinations(cfg, stored(source="dicom:ANY")) == {"pacs": "r"}
    assert destinations(cfg, stored(source="nas")) == {}  # no calling AE at all


def test_source_matches_its_kind_or_the_whole_source() -> None:
    kind = config([{"name": "r", "match": {"source": "pacs"}, "to": ["pacs"]}])
    whole = config([{"name": "r", "match": {"source": "pacs:main"}, "to": ["pacs"]}])
    assert destinations(kind, stored(source="pacs:main")) == {"pacs": "r"}
    assert destinations(whole, stored(source="pacs:main")) == {"pacs": "r"}
    assert destinations(whole, stored(source="pacs:other")) == {}
    assert destinations(kind, stored(source="nas")) == {}


def test_sop_class_and_study_description_use_patterns() -> None:
    cfg = config(
        [
            {"name": "ct", "match": {"sop_class": CT}, "to": ["pacs"]},
            {"name": "chest", "match": {"study_description": "*thorax*"}, "to": ["ai"]},
        ]
    )
    assert destinations(cfg, stored()) == {"pacs": "ct", "ai": "chest"}
    assert destinations(cfg, stored(sop_class=MR, description="BRAIN")) == {}


def test_an_instance_goes_once_to_a_destination_several_rules_name() -> None:
    cfg = config(
        [
            {"name": "first", "match": {"modality": "CT"}, "to": ["pacs"]},
            {"name": "second", "to": ["pacs", "ai"]},  # no criteria: everything
        ]
    )
    assert destinations(cfg, stored()) == {"pacs": "first", "ai": "second"}
    assert [r.destination for r in routed(stored(), cfg)] == ["pacs", "ai"]


def test_conflicting_copies_are_not_forwarded() -> None:
    cfg = config([{"name": "all", "to": ["pacs"]}])
    assert routed(stored(disposition="conflict"), cfg) == []
    assert len(routed(stored(disposition="same_content_other_uid"), cfg)) == 1


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("destinations: []\n", "destinations"),
        (
            "destinations: [{name: a, ae_title: A, host: h, port: 1}]\n"
            "rules: [{name: r, to: [b]}]\n",
            "unknown destinations: ['b']",
        ),
        (
            "destinations: [{name: a, ae_title: A, host: h, port: 1},"
            " {name: a, ae_title: B, host: h, port: 2}]\n",
            "unique",
        ),
        ("destinations: [{name: a, ae_title: WAY_TOO_LONG_AE_TITLE, host: h, port: 1}]\n", "16"),
        ("destinations: [{name: a, ae_title: A, host: h, port: 1, colour: red}]\n", "colour"),
        ("destinations: [\n", "not valid YAML"),
    ],
)
def test_a_bad_file_stops_the_service_naming_the_problem(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match="ROUTER_RULES_FILE") as exc:
        load_rules(path)
    assert problem in str(exc.value)


class Queue:
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], object] = {}

    async def enqueue(self, rows: list[object]) -> int:
        new = 0
        for row in rows:
            key = (row.destination, row.sop_instance_uid)  # type: ignore[attr-defined]
            if key not in self.rows:
                self.rows[key] = row
                new += 1
        return new


async def test_a_redelivered_batch_queues_nothing_twice() -> None:
    cfg = config([{"name": "all", "to": ["pacs", "ai"]}])
    queue = Queue()
    batch = [stored(sop_uid="1.2.3.4"), stored(sop_uid="1.2.3.5", modality="MR")]
    assert await handle_stored_batch(batch, config=cfg, queue=queue) == [[], []]
    await handle_stored_batch(batch, config=cfg, queue=queue)
    assert sorted(queue.rows) == [
        ("ai", "1.2.3.4"),
        ("ai", "1.2.3.5"),
        ("pacs", "1.2.3.4"),
        ("pacs", "1.2.3.5"),
    ]


def test_the_router_metrics_live_beside_the_consumer_metrics() -> None:
    registry = CollectorRegistry()
    ConsumerMetrics.create("router", registry)
    RouterMetrics.create("router", registry)  # no name taken twice


def test_the_router_starts_only_with_a_rules_file_and_enough_connections(tmp_path: Path) -> None:
    from libs.tools.devstack import configured
    from services.router.config import RouterSettings

    assert not configured("router", {})
    assert configured("router", {"ROUTER_RULES_FILE": "/etc/dicomflow/routing/rules.yaml"})
    with pytest.raises(ValueError, match="ROUTER_RULES_FILE is not set"):
        RouterSettings().routing()
    with pytest.raises(ValueError, match="cannot read ROUTER_RULES_FILE"):
        RouterSettings(rules_file=tmp_path / "missing.yaml").routing()  # type: ignore[call-arg]
    rules = ROOT / "deploy/routing/rules.example.yaml"  # 2 destinations: 6 connections
    assert len(RouterSettings(rules_file=rules).routing().destinations) == 2  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="need at least 6"):
        RouterSettings(rules_file=rules, database_pool_size=5).routing()  # type: ignore[call-arg]
