"""Monitoring: PodMonitors select the graph's real pods, dashboard and alerts use only metrics Dynamo exports.

Metric names and labels are checked against /metrics text scraped from real processes
(tests/fixtures/metrics: a Dynamo 1.6.1 frontend and mocker worker, etcd 3.4, and nats-server 2.9
/varz named the way the nats chart's exporter names it). Alert behaviour is checked by
`promtool test rules` on synthetic series; objects against the prometheus-operator CRDs.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import promql_parser
import pytest
import yaml

import schemas
from components import monitoring as mon
from components.graph import LABEL_COMPONENT, LABEL_COMPONENT_TYPE, LABEL_GRAPH
from conftest import objects_of, rendered
from recording import record

FIXTURES = Path(__file__).parent / "fixtures" / "metrics"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
# Labels Prometheus / prometheus-operator attach to every scraped series (not in /metrics text).
TARGET_LABELS = {"job", "instance", "namespace", "pod", "container", "endpoint"}
# $__rate_interval is Grafana's; a plain Prometheus needs a real range.
RATE_INTERVAL = "1m"


# ---------------------------------------------------------------- real exposition text

def exposition(target: str) -> dict[str, set[str]]:
    """metric name -> label names, from the scraped /metrics text of one target."""
    names: dict[str, set[str]] = {}
    for line in (FIXTURES / f"{target}.txt").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s", line)
        assert match, line
        labels = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', match.group(3) or ""))
        names.setdefault(match.group(1), set()).update(labels)
    return names


EXPORTED = {t: exposition(t) for t in ("frontend", "worker", "nats", "etcd")}


def test_fixtures_hold_what_the_lab_promises():
    # The fixtures are only useful if they were scraped after real traffic through real processes.
    front, worker = EXPORTED["frontend"], EXPORTED["worker"]
    for name in ("dynamo_frontend_time_to_first_token_seconds_bucket", "dynamo_frontend_inter_token_latency_seconds_bucket",
                 "dynamo_frontend_cached_tokens_sum", "dynamo_frontend_queued_requests"):
        assert name in front
    assert "status" in front["dynamo_frontend_requests_total"]
    assert "dynamo_endpoint" in worker["dynamo_component_requests_total"]
    assert "etcd_server_has_leader" in EXPORTED["etcd"] and "nats_varz_connections" in EXPORTED["nats"]


# ---------------------------------------------------------------- the component under Pulumi's mocks

def run_component(args: mon.MonitoringArgs) -> tuple[list[dict], mon.Monitoring]:
    """Build the component under mocks; return the Kubernetes objects it registers, and itself."""
    rec = record(lambda: mon.Monitoring("mon", args))
    return [r.inputs for r in rec.resources if r.type.startswith("kubernetes:")], rec.built


BASE: mon.MonitoringArgs = {"namespace": "llm", "graph_name": "vllm-agg", "prometheus_release": "kube-prometheus-stack",
                            "dashboard_namespace": "monitoring"}
NATS: mon.ScrapeTarget = {"namespace": "llm", "pod_labels": {"app.kubernetes.io/name": "nats",
                                                               "app.kubernetes.io/instance": "vllm-agg-nats",
                                                               "app.kubernetes.io/component": "nats"}}
ETCD: mon.ScrapeTarget = {"namespace": "coord", "pod_labels": {"app.kubernetes.io/name": "etcd",
                                                                 "app.kubernetes.io/instance": "vllm-agg-etcd"}}


@dataclass
class Case:
    id: str
    args: dict
    monitors: set[str]
    alerts_absent: set[str] = field(default_factory=set)


CASES = [
    Case("graph-only", dict(BASE), {"vllm-agg-frontend", "vllm-agg-worker"},
         {"DynamoNATSDown", "DynamoEtcdDown", "DynamoEtcdNoLeader"}),
    Case("nats-and-etcd", {**BASE, "nats": NATS, "etcd": ETCD},
         {"vllm-agg-frontend", "vllm-agg-worker", "vllm-agg-nats", "vllm-agg-etcd"}),
    Case("platform-monitors", {**BASE, "platform_monitors": True, "nats": NATS}, {"vllm-agg-nats"},
         {"DynamoEtcdDown"}),
]


@pytest.fixture(scope="module", params=CASES, ids=[c.id for c in CASES])
def case(request):
    objects, component = run_component(request.param.args)
    return request.param, objects, component


def kinds(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def queries(objects: list[dict]) -> list[str]:
    """Every PromQL expression: alert rules and dashboard panel targets."""
    out = [r["expr"] for o in kinds(objects, "PrometheusRule") for g in o["spec"]["groups"] for r in g["rules"]]
    for cm in kinds(objects, "ConfigMap"):
        for text in cm["data"].values():
            out += [t["expr"] for p in json.loads(text)["panels"] for t in p.get("targets", [])]
    return out


def target_of(selector: promql_parser.VectorSelector, monitors: dict[str, str], platform: bool) -> str:
    """Which scrape target (frontend/worker/nats/etcd) a vector selector reads, from its job matcher."""
    job = {m.name: m for m in selector.matchers.matchers}.get("job")
    assert job is not None, f"{selector.name}: no job matcher, so it would mix every graph's series"
    if job.op == promql_parser.MatchOp.Equal:
        assert job.value in monitors, f"{selector.name}: job {job.value} is no rendered PodMonitor"
        return monitors[job.value]
    assert platform and job.op == promql_parser.MatchOp.Re, f"{selector.name}: unexpected job matcher"
    return next(t for t, name in mon.PLATFORM_MONITOR_NAMES.items() if job.value.endswith("/" + name))


def check_queries(objects: list[dict], platform: bool = False) -> int:
    """Parse every query; each metric, matcher label and grouping label must exist on its target."""
    monitors = {mon.job_label(m): m["metadata"]["name"].rsplit("-", 1)[1] for m in kinds(objects, "PodMonitor")}
    checked = 0
    for expr in queries(objects):
        assert "@" not in expr, f"unfilled placeholder in {expr}"
        ast = promql_parser.parse(expr.replace("$__rate_interval", RATE_INTERVAL))

        def visit(node) -> None:
            nonlocal checked
            if isinstance(node, promql_parser.VectorSelector):
                target = target_of(node, monitors, platform)
                if node.name == "up":
                    return
                assert node.name in EXPORTED[target], f"{node.name} is not exported by the {target}"
                known = EXPORTED[target][node.name] | TARGET_LABELS
                for matcher in node.matchers.matchers:
                    assert matcher.name in known, f"{node.name} has no label {matcher.name}"
                checked += 1
            if isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
                below: list[set[str]] = []
                promql_parser.walk(node.expr, lambda n: below.append(
                    EXPORTED[target_of(n, monitors, platform)].get(n.name, set()) | TARGET_LABELS | {"le"})
                    if isinstance(n, promql_parser.VectorSelector) else None)
                for label in node.modifier.labels:
                    assert all(label in labels for labels in below), f"grouping by {label} in {expr}"

        promql_parser.walk(ast, visit)
    return checked


def rule_file(objects: list[dict], tmp_path: Path, annotations: bool = True) -> Path:
    groups = [g for o in kinds(objects, "PrometheusRule") for g in o["spec"]["groups"]]
    if not annotations:
        groups = [{**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]} for g in groups]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    return path


def promtool(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *argv], capture_output=True, text=True, cwd=cwd, timeout=60)


# ---------------------------------------------------------------- component tests

def test_renders_monitors_rule_and_dashboard(case):
    c, objects, component = case
    assert {m["metadata"]["name"] for m in kinds(objects, "PodMonitor")} == c.monitors
    assert len(kinds(objects, "PrometheusRule")) == 1 and len(kinds(objects, "ConfigMap")) == 1
    for obj in kinds(objects, "PodMonitor") + kinds(objects, "PrometheusRule"):
        assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert obj["metadata"]["namespace"] == "llm"
    assert not c.alerts_absent & set(component.alert_names)
    assert set(component.pod_monitors) == {f"llm/{n}" for n in c.monitors}


def test_monitors_keep_dynamo_labels_that_clash_with_target_labels(case):
    # A scraped label named like a target label (the frontend's `endpoint`) is renamed exported_<name>
    # unless the endpoint honours labels.
    _, objects, _ = case
    for monitor in kinds(objects, "PodMonitor"):
        target = monitor["metadata"]["name"].rsplit("-", 1)[1]
        clashes = set().union(*EXPORTED[target].values()) & TARGET_LABELS
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            assert endpoint.get("honorLabels", False) == bool(clashes), (target, clashes)


def test_objects_validate_against_the_crds(case):
    _, objects, _ = case
    for obj in objects:
        schemas.validate(obj)


def test_queries_parse_and_use_only_exported_metrics(case):
    c, objects, _ = case
    assert check_queries(objects, platform=c.args.get("platform_monitors", False)) > 20


def test_rules_pass_promtool_check(case, tmp_path):
    _, objects, _ = case
    result = promtool("check", "rules", str(rule_file(objects, tmp_path)), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_says_severity_summary_and_runbook(case):
    _, objects, _ = case
    for rule in kinds(objects, "PrometheusRule")[0]["spec"]["groups"][0]["rules"]:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["runbook"], rule["alert"]


def test_dashboard_config_map_is_picked_up_by_the_grafana_sidecar(case):
    c, objects, component = case
    cm = kinds(objects, "ConfigMap")[0]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "monitoring"
    assert component.dashboard_config_map == f"monitoring/{cm['metadata']['name']}"
    (board,) = [json.loads(v) for v in cm["data"].values()]
    assert board["uid"] == component.dashboard_uid and len(board["uid"]) <= mon.GRAFANA_UID_MAX
    rows = {p["title"] for p in board["panels"] if p["type"] == "row"}
    assert ("NATS" in rows) == ("nats" in c.args) and ("etcd" in rows) == ("etcd" in c.args)
    assert all("dynamoRequires" not in p for p in board["panels"])


def test_dashboard_covers_what_the_lab_promises():
    objects, _ = run_component(dict(BASE))
    text = "\n".join(queries(kinds(objects, "ConfigMap")))
    for metric in ("dynamo_frontend_requests_total", "dynamo_component_requests_total",  # total and per worker
                   "dynamo_frontend_time_to_first_token_seconds_bucket", "dynamo_frontend_inter_token_latency_seconds_bucket",
                   "dynamo_frontend_request_duration_seconds_bucket", "dynamo_frontend_inflight_requests",
                   "dynamo_frontend_queued_requests", "dynamo_frontend_cached_tokens_sum",
                   "dynamo_frontend_input_sequence_tokens_sum", "dynamo_frontend_worker_active_decode_blocks"):
        assert metric in text, metric
    assert 'status="error"' in text


def test_dashboard_placeholder_for_a_service_not_scraped_is_refused():
    with pytest.raises(ValueError, match="does not scrape nats"):
        mon.fill("up{@nats@}", mon.selectors(dict(BASE)))


def test_coordination_monitors_select_the_chart_pods_in_their_namespace():
    objects, _ = run_component({**BASE, "nats": NATS, "etcd": ETCD})
    by_name = {m["metadata"]["name"]: m["spec"] for m in kinds(objects, "PodMonitor")}
    assert by_name["vllm-agg-nats"]["selector"]["matchLabels"] == NATS["pod_labels"]
    assert by_name["vllm-agg-nats"]["podMetricsEndpoints"][0]["port"] == "prom-metrics"
    assert by_name["vllm-agg-etcd"]["namespaceSelector"] == {"matchNames": ["coord"]}
    assert by_name["vllm-agg-etcd"]["podMetricsEndpoints"][0]["port"] == "metrics"


def test_long_names_still_give_a_grafana_uid():
    uid = mon.dashboard_uid({**BASE, "graph_name": "a-very-long-graph-name-for-a-big-deployment"})
    assert len(uid) <= mon.GRAFANA_UID_MAX and re.fullmatch(r"[a-zA-Z0-9-]+", uid)
    assert uid != mon.dashboard_uid({**BASE, "graph_name": "a-very-long-graph-name-for-a-big-deployment-2"})


# ---------------------------------------------------------------- alert behaviour (promtool test rules)

F = 'job="llm/vllm-agg-frontend"'
W = 'job="llm/vllm-agg-worker"'
LABELS = {"severity": "critical", "dynamo_graph": "llm/vllm-agg"}


@dataclass
class AlertCase:
    id: str
    alert: str
    thresholds: dict
    series: list[tuple[str, str]]
    eval_time: str
    fires: list[dict]


ALERT_CASES = [
    AlertCase("errors-10pct-fire-at-5pct", "DynamoHighErrorRatio", {},
              [(f'dynamo_frontend_requests_total{{{F},status="success"}}', "0+9x20"),
               (f'dynamo_frontend_requests_total{{{F},status="error"}}', "0+1x20")], "15m", [LABELS]),
    AlertCase("errors-10pct-quiet-at-20pct", "DynamoHighErrorRatio", {"error_ratio_percent": 20},
              [(f'dynamo_frontend_requests_total{{{F},status="success"}}', "0+9x20"),
               (f'dynamo_frontend_requests_total{{{F},status="error"}}', "0+1x20")], "15m", []),
    AlertCase("ttft-3s-fires-at-2s-slo", "DynamoTTFTAboveSLO", {},
              [(f'dynamo_frontend_time_to_first_token_seconds_bucket{{{F},le="1"}}', "0x30"),
               (f'dynamo_frontend_time_to_first_token_seconds_bucket{{{F},le="5"}}', "0+10x30"),
               (f'dynamo_frontend_time_to_first_token_seconds_bucket{{{F},le="+Inf"}}', "0+10x30")],
              "25m", [{**LABELS, "severity": "warning"}]),
    AlertCase("ttft-3s-quiet-at-6s-slo", "DynamoTTFTAboveSLO", {"ttft_p90_ms": 6000},
              [(f'dynamo_frontend_time_to_first_token_seconds_bucket{{{F},le="1"}}', "0x30"),
               (f'dynamo_frontend_time_to_first_token_seconds_bucket{{{F},le="5"}}', "0+10x30"),
               (f'dynamo_frontend_time_to_first_token_seconds_bucket{{{F},le="+Inf"}}', "0+10x30")], "25m", []),
    AlertCase("model-not-ready", "DynamoModelNotServed", {},
              [(f'dynamo_frontend_model_ready{{{F},model="tiny"}}', "0x20")], "15m", [{**LABELS, "model": "tiny"}]),
    # All workers stopped gracefully: the frontend drops the model's series instead of reporting 0.
    AlertCase("model-gone", "DynamoModelNotServed", {},
              [(f'dynamo_frontend_model_ready{{{F},model="tiny"}}', "1x5")], "25m",
              [{**LABELS, "job": "llm/vllm-agg-frontend"}]),
    AlertCase("model-ready", "DynamoModelNotServed", {},
              [(f'dynamo_frontend_model_ready{{{F},model="tiny"}}', "1x20")], "15m", []),
    AlertCase("engines-queueing", "DynamoRequestsQueueing", {"queued_requests": 5},
              [(f'vllm:num_requests_waiting{{{W},pod="w-0"}}', "4x20"), (f'vllm:num_requests_waiting{{{W},pod="w-1"}}', "3x20"),
               (f'dynamo_frontend_queued_requests{{{F}}}', "0x20")], "10m", [{**LABELS, "severity": "warning"}]),
    AlertCase("worker-down", "DynamoWorkerDown", {},
              [(f'up{{{W},pod="w-0"}}', "1x20"), (f'up{{{W},pod="w-1"}}', "0x20")], "10m",
              [{**LABELS, "severity": "warning", "job": "llm/vllm-agg-worker", "pod": "w-1"}]),
    # 7 hours at 80% of prompt tokens from cache, then 30+ minutes at 10%.
    AlertCase("kv-cache-collapse", "DynamoKVCacheHitRateCollapse", {},
              [(f"dynamo_frontend_cached_tokens_sum{{{F}}}", "0+80x420 33680+10x80"),
               (f"dynamo_frontend_input_sequence_tokens_sum{{{F}}}", "0+100x500")], "8h",
              [{**LABELS, "severity": "warning"}]),
    AlertCase("kv-cache-steady", "DynamoKVCacheHitRateCollapse", {},
              [(f"dynamo_frontend_cached_tokens_sum{{{F}}}", "0+80x500"),
               (f"dynamo_frontend_input_sequence_tokens_sum{{{F}}}", "0+100x500")], "8h", []),
]


@pytest.mark.parametrize("c", ALERT_CASES, ids=[c.id for c in ALERT_CASES])
def test_alert_fires_when_it_should(c: AlertCase, tmp_path):
    objects, _ = run_component({**BASE, "thresholds": c.thresholds})
    rules = rule_file(objects, tmp_path, annotations=False)  # annotations are checked by promtool check
    test = {
        "rule_files": [rules.name],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in c.series],
            "alert_rule_test": [{"eval_time": c.eval_time, "alertname": c.alert,
                                 "exp_alerts": [{"exp_labels": labels} for labels in c.fires]}],
        }],
    }
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(test))
    result = promtool("test", "rules", "test.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- the real stacks

def operator_pod_labels(graph: dict) -> dict[str, dict[str, str]]:
    """Component name -> the labels the Dynamo operator sets on its pods (NOTES.md), from the rendered graph."""
    name = graph["metadata"]["name"]
    spec = graph["spec"]
    if "components" in spec:  # v1beta1
        comps = {c["name"]: c["type"] for c in spec["components"]}
    else:  # v1alpha1
        comps = {n: s["componentType"] for n, s in spec["services"].items()}
    return {comp: {LABEL_GRAPH: name, LABEL_COMPONENT: comp, LABEL_COMPONENT_TYPE: ctype} for comp, ctype in comps.items()}


STACKS = [("dev", ()), ("multinode", ()), ("dev", ("dynamo.version=1.0.0",)),
          ("dev", ("nats.enabled=true", "etcd.enabled=true", "discovery=etcd"))]


@pytest.fixture(scope="module", params=STACKS, ids=[" ".join((s,) + sets) for s, sets in STACKS])
def stack(request):
    return rendered(request.param[0], *request.param[1])


def test_stack_monitors_select_exactly_the_pods_they_must(stack):
    (graph,) = objects_of(stack, "DynamoGraphDeployment")
    pods = operator_pod_labels(graph)
    monitors = {m["metadata"]["name"]: m for m in objects_of(stack, "PodMonitor")}
    name = graph["metadata"]["name"]
    expected = {"frontend": ("http", {"frontend"}), "worker": ("system", {"worker"})}
    for target, (port, types) in expected.items():
        monitor = monitors[f"{name}-{target}"]
        selector = monitor["spec"]["selector"]["matchLabels"]
        selected = {c for c, labels in pods.items() if selector.items() <= labels.items()}
        assert {pods[c][LABEL_COMPONENT_TYPE] for c in selected} == types and selected, target
        assert monitor["spec"]["namespaceSelector"]["matchNames"] == [graph["metadata"]["namespace"]]
        assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == port
        assert monitor["metadata"]["labels"]["release"] == stack.config.monitoring.prometheus_release


def test_stack_coordination_monitors_follow_the_stack(stack):
    names = {m["metadata"]["name"].rsplit("-", 1)[1] for m in objects_of(stack, "PodMonitor")}
    assert ("nats" in names) == stack.config.nats.enabled
    assert ("etcd" in names) == stack.config.etcd.enabled


def test_stack_objects_validate_and_queries_are_real(stack, tmp_path):
    objects = [o for o in stack.objects if o["kind"] in ("PodMonitor", "PrometheusRule")
               or (o["kind"] == "ConfigMap" and "grafana_dashboard" in o["metadata"].get("labels", {}))]
    assert len(kinds(objects, "PrometheusRule")) == 1 and len(kinds(objects, "ConfigMap")) == 1
    for obj in objects:
        schemas.validate(obj)
    assert check_queries(objects) > 20
    result = promtool("check", "rules", str(rule_file(objects, tmp_path)), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_stack_thresholds_come_from_config():
    base = rendered("dev")
    tight = rendered("dev", "monitoring.alerts.ttftP90Ms=350")
    expr = {r["alert"]: r["expr"] for o in objects_of(tight, "PrometheusRule") for r in o["spec"]["groups"][0]["rules"]}
    default = {r["alert"]: r["expr"] for o in objects_of(base, "PrometheusRule") for r in o["spec"]["groups"][0]["rules"]}
    assert expr["DynamoTTFTAboveSLO"].endswith("> 0.35") and default["DynamoTTFTAboveSLO"].endswith("> 2")
    assert dataclasses.asdict(tight.config.monitoring.alerts)["ttft_p90_ms"] == 350


def test_monitoring_can_be_turned_off():
    off = rendered("dev", "monitoring.enabled=false")
    assert not objects_of(off, "PodMonitor") and not objects_of(off, "PrometheusRule")


def test_stack_coordination_monitors_scrape_the_chart_pods_and_their_exporters():
    # Pod labels as the charts set them (nats chart nats.selectorLabels; Bitnami etcd common labels),
    # derived from the rendered HelmRelease, not from our own code.
    r = rendered("dev", "nats.enabled=true", "etcd.enabled=true", "discovery=etcd")
    releases = {o["metadata"]["name"]: o for o in objects_of(r, "HelmRelease")}
    monitors = {m["metadata"]["name"]: m["spec"] for m in objects_of(r, "PodMonitor")}
    nats = next(o for o in releases.values() if o["metadata"]["name"].endswith("-nats"))
    etcd = next(o for o in releases.values() if o["metadata"]["name"].endswith("-etcd"))
    pods = {
        "nats": {"app.kubernetes.io/name": "nats", "app.kubernetes.io/instance": nats["spec"]["releaseName"],
                 "app.kubernetes.io/component": "nats"},
        "nats-box": {"app.kubernetes.io/name": "nats", "app.kubernetes.io/instance": nats["spec"]["releaseName"],
                     "app.kubernetes.io/component": "nats-box"},
        "etcd": {"app.kubernetes.io/name": "etcd", "app.kubernetes.io/instance": etcd["spec"]["releaseName"]},
    }
    for target in ("nats", "etcd"):
        selector = monitors[f"vllm-agg-{target}"]["selector"]["matchLabels"]
        assert {p for p, labels in pods.items() if selector.items() <= labels.items()} == {target}
    # The ports the monitors scrape exist only when the charts run their exporters.
    assert nats["spec"]["values"]["promExporter"]["enabled"] is True
    assert monitors["vllm-agg-nats"]["podMetricsEndpoints"][0]["port"] == "prom-metrics"
    assert etcd["spec"]["values"]["metrics"]["enabled"] is True and etcd["spec"]["values"]["metrics"]["useSeparateEndpoint"]
    assert monitors["vllm-agg-etcd"]["podMetricsEndpoints"][0]["port"] == "metrics"


def test_stack_outputs_say_how_to_open_the_dashboard_and_which_alerts_exist():
    r = rendered("dev")
    (cm,) = [o for o in objects_of(r, "ConfigMap") if o["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    (board,) = [json.loads(v) for v in cm["data"].values()]
    assert r.outputs["dashboard"]["uid"] == board["uid"] and r.outputs["dashboard"]["title"] == board["title"]
    assert r.outputs["dashboard"]["configMap"] == f"{cm['metadata']['namespace']}/{cm['metadata']['name']}"
    (rule,) = objects_of(r, "PrometheusRule")
    assert r.outputs["alerts"] == [x["alert"] for g in rule["spec"]["groups"] for x in g["rules"]]
