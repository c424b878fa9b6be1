"""What each service exports, as panel groups: the one list the dashboards are generated from.

Adding a service = one entry in `MONITORED` (plus its compose block, which gives Prometheus
its target). The groups name metric families defined in `libs/runtime/metrics.py`,
`libs/http/middleware.py` and the services' bootstraps.
"""

from __future__ import annotations

from libs.runtime.metrics import metric_prefix

# Panel groups, see `panels.py`: consumer (messages, handler latency, lag, DLQ, retries),
# producer (events produced), http (API requests), storage (objects/bytes written),
# end_to_end (discovery -> outcome), tasks (import tasks by state), disk (free space),
# nas (scans), reconciler (rounds), previews (jpg-converter), publisher (index-publisher),
# archives (packager), orthanc (orthanc-watcher), iso (iso-watcher), dcm4chee
# (dcm4chee-watcher), receiver (dicom-receiver), pacs (pacs-watcher), routing
# (router).
MONITORED: dict[str, tuple[str, ...]] = {
    "nas-watcher": ("consumer", "producer", "nas"),
    "extractor": ("consumer", "producer"),
    "dedup": ("consumer", "producer"),
    "storage-writer": ("consumer", "producer", "storage", "disk"),
    "indexer": ("consumer", "producer", "end_to_end"),
    "reconciler": ("reconciler",),
    "api": ("http", "tasks"),
    "jpg-converter": ("consumer", "producer", "previews"),
    "index-publisher": ("consumer", "publisher"),
    "packager": ("http", "archives"),
    "orthanc-watcher": ("orthanc",),
    "iso-watcher": ("iso",),
    "dcm4chee-watcher": ("dcm4chee",),
    "dicom-receiver": ("receiver",),
    "pacs-watcher": ("pacs",),
    "router": ("consumer", "routing"),
    "backend-connector": ("consumer", "publisher"),
}

# The stages of the pipeline in the order a file passes them (overview rows).
CONSUMERS = [name for name, groups in MONITORED.items() if "consumer" in groups]


def prefix(service: str) -> str:
    return metric_prefix(service)
