"""PromQL of every panel, by group. `$job` is the service's scrape job (its compose name)."""

from __future__ import annotations

from dataclasses import dataclass

from libs.tools.monitoring.catalog import CONSUMERS, MONITORED, prefix

RATE = "$__rate_interval"


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    targets: list[Target]
    unit: str = "short"
    kind: str = "timeseries"  # or "stat"
    description: str = ""


def quantiles(metric: str, by: str = "", legend_prefix: str = "") -> list[Target]:
    group = f"le, {by}" if by else "le"
    return [
        Target(
            f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket[{RATE}])))",
            f"{legend_prefix}p{int(q * 100)}" + (f" {{{{{by}}}}}" if by else ""),
        )
        for q in (0.5, 0.95, 0.99)
    ]


def service_panels(service: str) -> list[Panel]:
    p = prefix(service)
    job = f'job="{service}"'
    panels = [Panel("Up", [Target(f"up{{{job}}}", "{{instance}}")], kind="stat")]
    for group in MONITORED[service]:
        panels += GROUPS[group](p, job)
    return panels


def _consumer(p: str, job: str) -> list[Panel]:
    return [
        Panel(
            "Messages handled by outcome",
            [
                Target(
                    f"sum by (topic, status) (rate({p}_messages_total[{RATE}]))",
                    "{{topic}} {{status}}",
                )
            ],
            unit="ops",
        ),
        Panel("Handler latency", quantiles(f"{p}_handler_seconds", "topic"), unit="s"),
        Panel(
            "Consumer lag per partition",
            [Target(f"sum by (topic, partition) ({p}_consumer_lag)", "{{topic}}/{{partition}}")],
        ),
        Panel(
            "Dead-lettered (last hour)",
            [Target(f"sum by (topic) (increase({p}_dlq_messages_total[1h]))", "{{topic}}")],
        ),
        Panel(
            "Retries",
            [
                Target(
                    f"sum by (topic, kind) (rate({p}_retries_total[{RATE}]))", "{{topic}} {{kind}}"
                )
            ],
            unit="ops",
        ),
    ]


def _producer(p: str, job: str) -> list[Panel]:
    return [
        Panel(
            "Events produced",
            [Target(f"sum by (topic) (rate({p}_events_produced_total[{RATE}]))", "{{topic}}")],
            unit="ops",
        )
    ]


def _http(p: str, job: str) -> list[Panel]:
    return [
        Panel(
            "Requests by status",
            [Target(f"sum by (status) (rate({p}_requests_total[{RATE}]))", "{{status}}")],
            unit="reqps",
        ),
        Panel(
            "Requests by route",
            [
                Target(
                    f"sum by (route, method) (rate({p}_requests_total[{RATE}]))",
                    "{{method}} {{route}}",
                )
            ],
            unit="reqps",
        ),
        Panel("Request latency", quantiles(f"{p}_request_seconds"), unit="s"),
        Panel(
            "Server errors (5xx share)",
            [
                Target(
                    f'(sum(rate({p}_requests_total{{status=~"5.."}}[{RATE}])) or vector(0)) '
                    f"/ clamp_min(sum(rate({p}_requests_total[{RATE}])), 1e-9)",
                    "5xx",
                )
            ],
            unit="percentunit",
        ),
    ]


def _storage(p: str, job: str) -> list[Panel]:
    return [
        Panel("Bytes stored", [Target(f"sum({p}_bytes_stored_total)", "total")], unit="bytes"),
        Panel(
            "Write throughput",
            [
                Target(f"sum(rate({p}_bytes_stored_total[{RATE}]))", "bytes/s"),
            ],
            unit="Bps",
        ),
        Panel("Objects stored", [Target(f"sum({p}_objects_stored_total)", "objects")]),
    ]


def _end_to_end(p: str, job: str) -> list[Panel]:
    return [
        Panel("Discovery to indexed", _indexed_latency(p), unit="s"),
        Panel(
            "Final outcomes",
            [
                Target(
                    f"sum by (outcome) (rate({p}_end_to_end_seconds_count[{RATE}]))",
                    "{{outcome}}",
                )
            ],
            unit="ops",
        ),
    ]


def _indexed_latency(p: str) -> list[Target]:
    return [
        Target(
            f"histogram_quantile({q}, sum by (le) "
            f'(rate({p}_end_to_end_seconds_bucket{{outcome="indexed"}}[{RATE}])))',
            f"p{int(q * 100)}",
        )
        for q in (0.5, 0.95, 0.99)
    ]


def _tasks(p: str, job: str) -> list[Panel]:
    return [
        Panel(
            "Import tasks by state",
            [Target(f"max by (status) ({p}_import_tasks)", "{{status}}")],
        )
    ]


def _disk(p: str, job: str) -> list[Panel]:
    return [
        Panel(
            "Disk free",
            [
                Target(
                    f"dicomflow_disk_free_bytes{{{job}}} / dicomflow_disk_size_bytes{{{job}}}",
                    "{{volume}} {{instance}}",
                )
            ],
            unit="percentunit",
        )
    ]


def _nas(p: str, job: str) -> list[Panel]:
    return [
        Panel("Scans", [Target(f"sum by (root) (rate({p}_scans_total[{RATE}]))", "{{root}}")]),
        Panel(
            "Files seen by the last scan", [Target(f"sum by (root) ({p}_files_seen)", "{{root}}")]
        ),
    ]


def _reconciler(p: str, job: str) -> list[Panel]:
    return [
        Panel(
            "Rounds", [Target(f"sum by (status) (rate({p}_rounds_total[{RATE}]))", "{{status}}")]
        ),
        Panel(
            "Files re-published", [Target(f"sum(increase({p}_reemitted_total[1h]))", "last hour")]
        ),
    ]


def _previews(p: str, job: str) -> list[Panel]:
    """jpg-converter: `dicomflow_jpg_converter_previews_total{status}`."""
    return [
        Panel(
            "Previews by outcome",
            [Target(f"sum by (status) (rate({p}_previews_total[{RATE}]))", "{{status}}")],
            unit="ops",
        )
    ]


def _publisher(p: str, job: str) -> list[Panel]:
    """index-publisher (deliveries to the central index) and backend-connector (requests to
    the patient-aware backend): libs/http/delivery.py."""
    return [
        Panel(
            "Central index reachable" if "index-publisher" in job else "Backend reachable",
            [Target(f"min({p}_receiver_up)", "up")],
            kind="stat",
        ),
        Panel(
            "Study revisions delivered, by outcome",
            [Target(f"sum by (outcome) (rate({p}_deliveries_total[{RATE}]))", "{{outcome}}")],
            unit="ops",
        ),
        Panel(
            "HTTP attempts, by answer",
            [Target(f"sum by (answer) (rate({p}_attempts_total[{RATE}]))", "{{answer}}")],
            unit="ops",
        ),
        Panel("Delivery latency", quantiles(f"{p}_request_seconds"), unit="s"),
    ]


def _archives(p: str, job: str) -> list[Panel]:
    """packager: archive builds and downloads (services/packager)."""
    return [
        Panel("Archive builds", [Target(f"sum(rate({p}_builds_total[{RATE}]))", "builds")]),
        Panel(
            "Archive downloads, by source",
            [Target(f"sum by (source) (rate({p}_downloads_total[{RATE}]))", "{{source}}")],
            unit="reqps",
            description="cache: a built archive; build: streamed while it was being built.",
        ),
    ]


def _orthanc(p: str, job: str) -> list[Panel]:
    """orthanc-watcher: the /changes cursor and instances taken in."""
    return [
        Panel(
            "Changes cursor",
            [Target(f"max({p}_cursor)", "sequence")],
            description="A flat line while Orthanc receives studies: the feed is not followed.",
        ),
        Panel(
            "Instances taken in, by path",
            [Target(f"sum by (via) (rate({p}_instances_total[{RATE}]))", "{{via}}")],
            unit="ops",
        ),
    ]


def _iso(p: str, job: str) -> list[Panel]:
    """iso-watcher: rounds over the inbox."""
    return [Panel("Inbox rounds", [Target(f"sum(rate({p}_rounds_total[{RATE}]))", "rounds")])]


def _dcm4chee(p: str, job: str) -> list[Panel]:
    """dcm4chee-watcher: rounds over the archive's database and what they found."""
    return [
        Panel(
            "Archive rounds, by outcome",
            [Target(f"sum by (outcome) (rate({p}_rounds_total[{RATE}]))", "{{outcome}}")],
        ),
        Panel(
            "Studies read, by mode",
            [Target(f"sum by (mode) (rate({p}_studies_total[{RATE}]))", "{{mode}}")],
            unit="ops",
        ),
        Panel(
            "Instances whose file is unreachable",
            [Target(f"sum(increase({p}_unreachable_total[1h]))", "last hour")],
        ),
        Panel(
            "Fetch rounds (C-MOVE), by outcome",
            [Target(f"sum by (outcome) (rate({p}_move_rounds_total[{RATE}]))", "{{outcome}}")],
        ),
        Panel(
            "Fetched instances, by outcome",
            [Target(f"sum by (outcome) (increase({p}_fetch_outcomes_total[1h]))", "{{outcome}}")],
        ),
    ]


def _receiver(p: str, job: str) -> list[Panel]:
    """dicom-receiver: associations and C-STORE outcomes per calling AE."""
    return [
        Panel("Open associations", [Target(f"sum({p}_active_associations)", "open")]),
        Panel(
            "Associations, by calling AE and outcome",
            [
                Target(
                    f"sum by (calling_ae, outcome) (rate({p}_associations_total[{RATE}]))",
                    "{{calling_ae}} {{outcome}}",
                )
            ],
        ),
        Panel(
            "C-STORE, by calling AE and status",
            [
                Target(
                    f"sum by (calling_ae, status) (rate({p}_instances_total[{RATE}]))",
                    "{{calling_ae}} {{status}}",
                )
            ],
            unit="ops",
            description="Any status but 0x0000 is a failure the sender will retry.",
        ),
        Panel(
            "Bytes received",
            [Target(f"sum by (calling_ae) (rate({p}_bytes_total[{RATE}]))", "{{calling_ae}}")],
            unit="Bps",
        ),
        Panel("C-STORE latency", quantiles(f"{p}_store_seconds"), unit="s"),
        Panel(
            "Staged files removed, by kind",
            [Target(f"sum by (kind) (rate({p}_staging_removed_total[{RATE}]))", "{{kind}}")],
            unit="ops",
            description="done: indexed or duplicate, after RECEIVER_KEEP_DONE_HOURS; kept: "
            "failed or conflict, after RECEIVER_KEEP_FAILED_DAYS; orphan: never acknowledged.",
        ),
    ]


def _pacs(p: str, job: str) -> list[Panel]:
    """pacs-watcher: polls of each upstream PACS and what they retrieved."""
    return [
        Panel(
            "Polls, by PACS and outcome",
            [
                Target(
                    f"sum by (pacs, outcome) (rate({p}_polls_total[{RATE}]))",
                    "{{pacs}} {{outcome}}",
                )
            ],
        ),
        Panel(
            "Instances retrieved, by PACS",
            [Target(f"sum by (pacs) (rate({p}_retrieved_instances_total[{RATE}]))", "{{pacs}}")],
            unit="ops",
        ),
    ]


def _routing(p: str, job: str) -> list[Panel]:
    """router: per-destination queues and what was forwarded."""
    return [
        Panel(
            "Queue, by destination and state",
            [Target(f"sum by (destination, state) ({p}_queue)", "{{destination}} {{state}}")],
            description="queued: waiting (a destination that is down piles up here); "
            "failed: given up with a reason (runbook: retry after fixing the cause).",
        ),
        Panel(
            "Instances sent, by destination",
            [Target(f"sum by (destination) (rate({p}_sent_total[{RATE}]))", "{{destination}}")],
            unit="ops",
        ),
        Panel(
            "Destinations up",
            [Target(f"min by (destination) ({p}_destination_up)", "{{destination}}")],
        ),
        Panel(
            "Failed and refused, by destination and reason",
            [
                Target(
                    f"sum by (destination, reason) (increase({p}_failed_total[1h]))",
                    "failed {{destination}} {{reason}}",
                ),
                Target(
                    f"sum by (destination, reason) (increase({p}_refused_total[1h]))",
                    "refused {{destination}} {{reason}}",
                ),
            ],
        ),
        Panel("C-STORE latency", quantiles(f"{p}_store_seconds"), unit="s"),
    ]


GROUPS = {
    "consumer": _consumer,
    "producer": _producer,
    "http": _http,
    "storage": _storage,
    "end_to_end": _end_to_end,
    "tasks": _tasks,
    "disk": _disk,
    "nas": _nas,
    "reconciler": _reconciler,
    "previews": _previews,
    "publisher": _publisher,
    "archives": _archives,
    "orthanc": _orthanc,
    "iso": _iso,
    "dcm4chee": _dcm4chee,
    "receiver": _receiver,
    "pacs": _pacs,
    "routing": _routing,
}


def overview_panels() -> list[Panel]:
    """Is the pipeline flowing, where does it pile up, what fails."""
    indexer, api, writer = prefix("indexer"), prefix("api"), prefix("storage-writer")

    def per_stage(fmt: str) -> list[Target]:
        return [Target(fmt.format(p=prefix(s)), s) for s in CONSUMERS]

    return [
        Panel(
            "Services up",
            [Target(f'sum(up{{job="{s}"}})', s) for s in MONITORED],
            kind="stat",
        ),
        Panel(
            "Throughput per stage (messages handled)",
            per_stage(f'sum(rate({{p}}_messages_total{{{{status="ok"}}}}[{RATE}]))'),
            unit="ops",
        ),
        Panel("Consumer lag per stage", per_stage("sum({p}_consumer_lag)")),
        Panel(
            "Dead-lettered per stage (last hour)",
            per_stage("sum(increase({p}_dlq_messages_total[1h]))"),
        ),
        Panel(
            "Errors per stage (retries + dead letters)",
            per_stage(
                f"sum(rate({{p}}_retries_total[{RATE}])) "
                f"+ sum(rate({{p}}_dlq_messages_total[{RATE}]))"
            ),
            unit="ops",
        ),
        Panel("End-to-end latency, discovery to indexed", _indexed_latency(indexer), unit="s"),
        Panel(
            "Storage growth",
            [Target(f"sum({writer}_bytes_stored_total)", "bytes stored")],
            unit="bytes",
        ),
        Panel(
            "Import tasks by state",
            [Target(f"max by (status) ({api}_import_tasks)", "{{status}}")],
        ),
        Panel(
            "API requests by status",
            [Target(f"sum by (status) (rate({api}_requests_total[{RATE}]))", "{{status}}")],
            unit="reqps",
        ),
    ]
