"""The committed Prometheus and Grafana files: current with their generator, valid for
promtool, covering every service, and readable by the metric-name check."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from libs.tools.devstack import SERVICES
from libs.tools.monitoring.catalog import MONITORED
from libs.tools.monitoring.generate import DASHBOARDS, ROOT, SCRAPE_CONFIG, rendered
from libs.tools.monitoring.panels import GROUPS, RATE
from libs.tools.monitoring.promql import selected_metrics, unknown_metrics

RULES = SCRAPE_CONFIG.parent / "alerts.yml"
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: install Debian's `prometheus` package"
    return path


def test_generated_files_are_current() -> None:
    stale = [
        str(path.relative_to(ROOT))
        for path, text in rendered().items()
        if not path.exists() or path.read_text(encoding="utf-8") != text
    ]
    assert not stale, f"run `make monitoring`: {stale}"
    on_disk = {p.name for p in DASHBOARDS.glob("*.json")}
    assert on_disk == {p.name for p in rendered() if p.parent == DASHBOARDS}


def test_every_service_has_a_dashboard_and_a_scrape_job() -> None:
    assert set(SERVICES) == set(MONITORED), "add the service to libs/tools/monitoring/catalog.py"
    config = yaml.safe_load(SCRAPE_CONFIG.read_text(encoding="utf-8"))
    assert {j["job_name"] for j in config["scrape_configs"]} == set(SERVICES)


def test_alert_rules_pass_promtool() -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_scrape_config_passes_promtool() -> None:
    result = subprocess.run(
        [promtool(), "check", "config", "--syntax-only", str(SCRAPE_CONFIG)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboards_use_the_provisioned_datasource() -> None:
    datasources = yaml.safe_load(
        (PROVISIONING / "datasources" / "prometheus.yml").read_text(encoding="utf-8")
    )
    uid = datasources["datasources"][0]["uid"]
    for path in DASHBOARDS.glob("*.json"):
        board = json.loads(path.read_text(encoding="utf-8"))
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] == uid, (path.name, panel["title"])
            assert panel["targets"], (path.name, panel["title"])


@pytest.mark.parametrize(
    ("expr", "names", "patterns"),
    [
        (
            'histogram_quantile(0.95, sum by (le, topic) (rate(a_seconds_bucket{x="y"}[5m])))',
            {"a_seconds_bucket"},
            set(),
        ),
        ('sum by (job) ({__name__=~"dicomflow_.+_lag"}) > 0', set(), {"dicomflow_.+_lag"}),
        ("a / clamp_min(b, 1e-9) > 0.5 and on (job) c offset 5m", {"a", "b", "c"}, set()),
        ('(sum(rate(a{s=~"5.."}[$__rate_interval])) or vector(0))', {"a"}, set()),
    ],
)
def test_promql_metric_names(expr: str, names: set[str], patterns: set[str]) -> None:
    sel = selected_metrics(expr)
    assert (set(sel.names), set(sel.patterns)) == (names, patterns)


def test_unknown_metrics_are_named() -> None:
    exported = {"dicomflow_extractor_consumer_lag", "up"}
    assert unknown_metrics('{__name__=~"dicomflow_.+_consumer_lag"} or up', exported) == []
    assert unknown_metrics("dicomflow_typo_total + up", exported) == ["dicomflow_typo_total"]
    assert unknown_metrics('{__name__=~"nothing_.+"}', exported) == ["{__name__=~'nothing_.+'}"]


def test_alerts_fire_on_trouble_and_stay_quiet_otherwise() -> None:
    """deploy/prometheus/alerts_test.yml: synthetic series for every alert."""
    result = subprocess.run(
        [promtool(), "test", "rules", str(RULES.with_name("alerts_test.yml"))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_and_documented() -> None:
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"][0]["rules"]
    tests = RULES.with_name("alerts_test.yml").read_text(encoding="utf-8")
    runbook = (ROOT / "docs" / "runbook.md").read_text(encoding="utf-8")
    for rule in rules:
        assert f"alertname: {rule['alert']}" in tests, rule["alert"]
        assert f"### {rule['alert']}\n" in runbook, rule["alert"]
        assert rule["annotations"]["runbook"] == f"docs/runbook.md#{rule['alert'].lower()}"


def test_every_panel_group_parses(tmp_path: Path) -> None:
    """Groups of services not deployed yet are not in a dashboard: promtool parses them."""
    rules = [
        {"record": f"check:{name}:{n}", "expr": t.expr.replace(RATE, "1m")}
        for name, group in GROUPS.items()
        for n, panel in enumerate(group("dicomflow_x", 'job="x"'))
        for t in panel.targets
    ]
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    result = subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
