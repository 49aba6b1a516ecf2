"""Checks of the s3-gateway Helm chart; run by helm/check.sh inside its virtualenv.

1. `helm lint --strict` (Helm v4's own lint, through helm-python-sdk's embedded Helm library)
   with the default, embedded and production values.
2. `helm template` of several value sets (the same Go rendering code; the schema is enforced).
3. Every rendered manifest against the Kubernetes OpenAPI schemas shipped by
   kubernetes-validate (strict: unknown fields fail), for the oldest and newest Kubernetes
   versions the chart targets. ServiceMonitor (a CRD, not in those schemas) is checked against
   a small schema of the fields the chart writes, plus cross-references between objects.
4. The rendered gateway.toml: parsed with tomllib, every key and value type compared with
   gateway.example.toml (which lists every field), then parsed by the gateway binary itself when
   a build newer than gateway/src/config.rs exists (see `gateway_parses`).
5. docs/grafana-dashboard.json: valid JSON, schemaVersion >= 36, and every metric it queries is
   one the gateway registers (so are the metrics docs/operations.md and deploy-aws.md name).
6. Value sets the chart must refuse (schema or template guards) are refused.

Quiet on success; prints each failure and exits 1 otherwise.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

import helm_python as helm

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "s3-gateway"
EXAMPLE_TOML = ROOT / "gateway.example.toml"
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
# Oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest
# kubernetes-validate ships; both are bundled with the package, nothing is downloaded.
KUBE_VERSIONS = ["1.29.0", "1.37.0"]
RELEASE = "s3-gateway"
NAMESPACE = "storage"

failures: list[str] = []


def fail(msg: str) -> None:
    failures.append(msg)


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def production_values() -> dict:
    return helm.values_from_yaml((CHART / "values-production.yaml").read_text())


# name -> (values, expect_servicemonitor)
def scenarios() -> dict[str, dict]:
    prod = production_values()
    return {
        "default": {},
        "embedded": {"embedded": {"enabled": True}},
        "production": deep_merge(prod, {"serviceMonitor": {"enabled": True}}),
        "callback-address": {
            "callback": {
                "advertise": "address",
                "address": "gw-callback.internal.example.com:9002",
                "service": {"enabled": True, "loadBalancerSourceRanges": ["10.0.0.0/16"]},
            },
            "bindAddress": "::",
            "credentials": {"backend": {"existingSecret": "aws-keys"}, "lambda": {"existingSecret": "aws-keys"}},
            "serviceMonitor": {"enabled": True, "namespace": "monitoring", "labels": {"release": "prom"}},
        },
        "plain-proxy": {
            "replicas": 3,
            "config": {"tier": {"enabled": False}},
            "persistence": {"enabled": False},
            "service": {"type": "NodePort", "nodePort": 30900},
            "podDisruptionBudget": {"minAvailable": 2, "maxUnavailable": None},
            "preStopSleepSeconds": 0,
            "probes": {"startup": {"enabled": False}},
        },
        "aws-default-chain": deep_merge(prod, {"credentials": {"awsDefaultChain": True}}),
        "existing-configmap": {
            "existingConfigMap": "my-gateway-toml",
            "existingConfigMapKey": "config.toml",
            "credentials": {"generateClientKeys": True},
        },
    }


# Value sets that must not render: name -> (values, text expected in the error).
REFUSED = {
    "unknown config key": ({"config": {"tier": {"journal_size": "1GiB"}}}, "journal_size"),
    "credential in config": ({"config": {"auth": {"secret_key": "x"}}}, "secret_key"),
    "bad duration": ({"config": {"server": {"request_timeout": "fifteen"}}}, "request_timeout"),
    "bad write policy": ({"config": {"tier": {"write_policy": "sometimes"}}}, "write_policy"),
    "unknown top-level value": ({"replicaCount": 2}, "replicaCount"),
    "replicas with the tier": ({"replicas": 2}, "single writer"),
    "too few functions": ({"config": {"functions": {"count": 8}}}, "at least"),
    "no backend url": ({"config": {"backend": {"url": ""}}}, "backend.url"),
    "address without address": ({"callback": {"advertise": "address"}}, "callback.address"),
    "credential via extraEnv": ({"extraEnv": [{"name": "GATEWAY_SECRET_KEY", "value": "x"}]}, "extraEnv"),
}


def lint() -> None:
    for name, values in [("default", {}), ("embedded", {"embedded": {"enabled": True}}), ("production", production_values())]:
        for kv in (None, "v" + KUBE_VERSIONS[0]):
            report = helm.lint(str(CHART), values, strict=True, kube_version=kv)
            for m in report.get("messages", []):
                if m.get("severity", 0) >= 2:
                    fail(f"helm lint --strict ({name}, kube {kv or 'default'}): {m.get('path')}: {m.get('error')}")
            for e in report.get("errors", []):
                fail(f"helm lint --strict ({name}): {e}")


def render(chart: helm.Chart, values: dict) -> list[tuple[str, dict]]:
    manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            if not text.strip():
                fail(f"{path}: empty NOTES")
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append((path, doc))
    return docs


SERVICEMONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": {"type": "object"}},
        },
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchNames": {"type": "array", "items": {"type": "string"}}, "any": {"type": "boolean"}},
                },
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                            "relabelings": {"type": "array"},
                            "metricRelabelings": {"type": "array"},
                        },
                    },
                },
            },
        },
    },
}


def check_aws_keys(scenario: str, docs: list[tuple[str, dict]], chain: bool) -> None:
    """With credentials.awsDefaultChain the gateway gets no backend or Lambda keys (its config
    has them empty, which asks for the default chain); without it, production-like scenarios
    get them from Secrets."""
    env = set()
    toml_text = ""
    for _, d in docs:
        if d["kind"] == "StatefulSet":
            for c in d["spec"]["template"]["spec"]["containers"]:
                env |= {e["name"] for e in c.get("env", [])}
        if d["kind"] == "ConfigMap" and "gateway.toml" in d.get("data", {}):
            toml_text = d["data"]["gateway.toml"]
    keys = {"GATEWAY_BACKEND_ACCESS_KEY", "GATEWAY_BACKEND_SECRET_KEY", "GATEWAY_LAMBDA_ACCESS_KEY", "GATEWAY_LAMBDA_SECRET_KEY"}
    if chain:
        if env & keys:
            fail(f"{scenario}: key variables set with awsDefaultChain: {sorted(env & keys)}")
        cfg = tomllib.loads(toml_text)
        for section, fields in (("backend", ("access_key", "secret_key")), ("functions", ("lambda_access_key", "lambda_secret_key"))):
            for f in fields:
                if cfg.get(section, {}).get(f) != "":
                    fail(f"{scenario}: {section}.{f} must render empty with awsDefaultChain")
    elif scenario == "production" and not keys <= env:
        fail(f"{scenario}: backend/Lambda key variables missing: {sorted(keys - env)}")


def validate_k8s(scenario: str, docs: list[tuple[str, dict]]) -> None:
    for path, doc in docs:
        where = f"{scenario}: {path}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        if doc.get("apiVersion", "").startswith("monitoring.coreos.com/"):
            try:
                jsonschema.validate(doc, SERVICEMONITOR_SCHEMA)
            except jsonschema.ValidationError as e:
                fail(f"{where}: {'.'.join(map(str, e.path))}: {e.message}")
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                fail(f"{where} (Kubernetes {version}): {'.'.join(map(str, e.path))}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                fail(f"{where}: {e.message}")


def check_references(scenario: str, docs: list[tuple[str, dict]]) -> None:
    """Cross-object consistency the schemas cannot see."""
    by_kind: dict[str, list[dict]] = {}
    for _, d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    (sts,) = by_kind.get("StatefulSet", [None]) or [None]
    if sts is None:
        fail(f"{scenario}: no StatefulSet rendered")
        return
    pod = sts["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    spec = pod["spec"]
    if sts["spec"]["selector"]["matchLabels"].items() - pod_labels.items():
        fail(f"{scenario}: StatefulSet selector does not match its pod labels")
    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    headless = services.get(sts["spec"]["serviceName"])
    if not headless or headless["spec"].get("clusterIP") != "None":
        fail(f"{scenario}: StatefulSet serviceName {sts['spec']['serviceName']} is not a rendered headless Service")
    containers = spec["containers"] + spec.get("initContainers", [])
    gw = spec["containers"][0]
    port_names = {p["name"] for p in gw.get("ports", [])}
    for name, svc in services.items():
        if svc["spec"]["selector"].items() - pod_labels.items():
            fail(f"{scenario}: Service {name} selects no gateway pod")
        for p in svc["spec"]["ports"]:
            if isinstance(p.get("targetPort"), str) and p["targetPort"] not in port_names:
                fail(f"{scenario}: Service {name} targets port {p['targetPort']} the container does not name")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        if probe in gw and gw[probe]["httpGet"]["port"] not in port_names:
            fail(f"{scenario}: {probe} uses an unnamed port")
    volumes = {v["name"] for v in spec.get("volumes", [])} | {t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])}
    for c in containers:
        for m in c.get("volumeMounts", []):
            if m["name"] not in volumes:
                fail(f"{scenario}: {c['name']} mounts undeclared volume {m['name']}")
        sc = c.get("securityContext", {})
        if not (sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False
                and sc.get("capabilities", {}).get("drop") == ["ALL"]):
            fail(f"{scenario}: container {c['name']} is not restricted")
    psc = spec.get("securityContext", {})
    if not (psc.get("runAsNonRoot") and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault"):
        fail(f"{scenario}: pod securityContext is not restricted")
    cm_names = {c["metadata"]["name"] for c in by_kind.get("ConfigMap", [])}
    for v in spec.get("volumes", []):
        if "configMap" in v and v["configMap"]["name"] not in cm_names and v["configMap"]["name"] != "my-gateway-toml":
            fail(f"{scenario}: volume {v['name']} uses ConfigMap {v['configMap']['name']} that is not rendered")
    env = {e["name"]: e for e in gw.get("env", [])}
    for var in ("GATEWAY_ACCESS_KEY", "GATEWAY_SECRET_KEY"):
        if var not in env:
            fail(f"{scenario}: {var} is not set")
    for e in env.values():
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref and not (ref.get("name") and ref.get("key")):
            fail(f"{scenario}: {e['name']} has an incomplete secretKeyRef")
    for sm in by_kind.get("ServiceMonitor", []):
        sel = sm["spec"]["selector"]["matchLabels"]
        targets = [s for s in services.values() if not (sel.items() - s["metadata"]["labels"].items())]
        if len(targets) != 1:
            fail(f"{scenario}: ServiceMonitor selects {len(targets)} Services, expected the admin Service")
            continue
        names = {p["name"] for p in targets[0]["spec"]["ports"]}
        for ep in sm["spec"]["endpoints"]:
            if ep["port"] not in names:
                fail(f"{scenario}: ServiceMonitor port {ep['port']} is not a port of {targets[0]['metadata']['name']}")


# --- the gateway's TOML -----------------------------------------------------------------------

_COMMENTED = re.compile(r"^#\s*(\[\[?[a-z_.]+\]\]?|[a-z_]+\s*=.*)$")


def example_schema() -> dict[str, type]:
    """Every key path of gateway.example.toml with its value type, commented-out fields too
    (`# dir = ...`, `# [[auth.keys]]`)."""
    lines = []
    for line in EXAMPLE_TOML.read_text().splitlines():
        m = _COMMENTED.match(line.strip())
        lines.append(m.group(1) if m else line)
    try:
        doc = tomllib.loads("\n".join(lines))
    except tomllib.TOMLDecodeError:
        doc = tomllib.loads(EXAMPLE_TOML.read_text())
    out: dict[str, type] = {}

    def walk(prefix: str, v) -> None:
        if isinstance(v, dict):
            for k, sub in v.items():
                walk(f"{prefix}.{k}" if prefix else k, sub)
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for x in v:
                walk(prefix + "[]", x)
        else:
            out[prefix] = type(v)

    walk("", doc)
    return out


def check_toml_keys(scenario: str, text: str, allowed: dict[str, type]) -> None:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        fail(f"{scenario}: gateway.toml is not valid TOML: {e}")
        return

    def walk(prefix: str, v) -> None:
        if isinstance(v, dict):
            for k, sub in v.items():
                walk(f"{prefix}.{k}" if prefix else k, sub)
            return
        want = allowed.get(prefix)
        if want is None:
            fail(f"{scenario}: gateway.toml key {prefix} is not in gateway.example.toml")
        elif not (isinstance(v, want) or (want is float and type(v) is int)) or (want is int and type(v) is bool):
            fail(f"{scenario}: gateway.toml {prefix} = {v!r} is a {type(v).__name__}, gateway.example.toml has a {want.__name__}")

    walk("", doc)


def gateway_binary() -> Path | None:
    """A gateway build at least as new as the config schema (a stale one could reject or accept
    keys the source does not); GATEWAY_BIN overrides."""
    if os.environ.get("GATEWAY_BIN"):
        return Path(os.environ["GATEWAY_BIN"])
    schema_mtime = (ROOT / "gateway" / "src" / "config.rs").stat().st_mtime
    builds = [ROOT / "target" / p / "gateway" for p in ("debug", "release")]
    builds = [b for b in builds if b.is_file() and b.stat().st_mtime >= schema_mtime]
    return max(builds, key=lambda b: b.stat().st_mtime) if builds else None


def gateway_parses(scenario: str, text: str, binary: Path) -> None:
    """The gateway has no check-only flag. Empty client keys make its configuration step fail
    in `Config::validate`, which runs only after the file parsed (unknown keys, types, sizes,
    durations) and before anything starts: "invalid configuration: ..." means the file parsed,
    "invalid config file ..." that it did not."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "gateway.toml"
        cfg.write_text(text)
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        env.update(RUST_BACKTRACE="0", RUST_LIB_BACKTRACE="0")
        try:
            p = subprocess.run(
                [str(binary), "--config", str(cfg), "--access-key", "", "--secret-key", "",
                 "--data-dir", str(Path(tmp) / "data"), "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
                cwd=tmp, env=env, capture_output=True, text=True, timeout=30,
            )
        except subprocess.TimeoutExpired:
            fail(f"{scenario}: {binary} did not stop on empty client keys (it started?)")
            return
        out = p.stdout + p.stderr
        if p.returncode == 0 or "invalid config file" in out or "invalid configuration:" not in out:
            fail(f"{scenario}: the gateway does not accept the rendered gateway.toml:\n{out.strip()}")


# Keys of gateway.toml the chart sets itself (listeners, callback, data dir) or that come from
# the credentials Secrets; values.schema.json does not accept them under `config`.
CHART_MANAGED = {
    "data_dir", "server.listen", "server.admin_listen", "auth.access_key", "auth.secret_key",
    "auth.keys[].access_key", "auth.keys[].secret_key", "backend.access_key", "backend.secret_key",
    "functions.lambda_access_key", "functions.lambda_secret_key", "functions.secret",
    "functions.callback_listen", "functions.callback_advertise", "server.admin_token",
}


def check_schema_covers_config(allowed: dict[str, type]) -> None:
    """values.schema.json's `config` must offer every gateway field but the chart-managed ones,
    and nothing else: a field added to (or renamed in) the gateway shows up here."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    offered = set()

    def walk(prefix: str, node: dict) -> None:
        for key, sub in node.get("properties", {}).items():
            if "properties" in sub:
                walk(f"{prefix}.{key}", sub)
            else:
                offered.add(f"{prefix}.{key}")

    for section, sub in schema["properties"]["config"]["properties"].items():
        walk(section, sub)
    expected = set(allowed) - CHART_MANAGED
    for k in sorted(expected - offered):
        fail(f"values.schema.json: config.{k} (in gateway.example.toml) is missing; add it to the schema and values.yaml")
    for k in sorted(offered - expected):
        fail(f"values.schema.json: config.{k} is not a field of gateway.example.toml")


def check_configs(rendered: dict[str, list[tuple[str, dict]]]) -> None:
    allowed = example_schema()
    check_schema_covers_config(allowed)
    binary = gateway_binary()
    for scenario, docs in rendered.items():
        cms = [d for _, d in docs if d["kind"] == "ConfigMap" and "gateway.toml" in d.get("data", {})]
        if scenario == "existing-configmap":
            if cms:
                fail(f"{scenario}: a ConfigMap is rendered although existingConfigMap is set")
            continue
        if len(cms) != 1:
            fail(f"{scenario}: expected one gateway.toml ConfigMap, got {len(cms)}")
            continue
        text = cms[0]["data"]["gateway.toml"]
        # What the init container does for callback.advertise=podIP.
        text = text.replace("__POD_IP__", "10.1.2.3")
        check_toml_keys(scenario, text, allowed)
        if binary is not None:
            gateway_parses(scenario, text, binary)
        doc = tomllib.loads(text)
        funcs = doc.get("functions", {})
        if scenario == "embedded":
            if doc["backend"].get("url") or funcs.get("lambda_endpoint"):
                fail(f"{scenario}: embedded mode must leave backend.url and functions.lambda_endpoint empty")
        elif doc.get("tier", {}).get("enabled", True):
            if not funcs.get("callback_advertise") or funcs.get("callback_listen", "").startswith("127."):
                fail(f"{scenario}: the callback must listen on the pod network and be advertised")


# --- the Grafana dashboard --------------------------------------------------------------------

def registered_metrics() -> set[str]:
    """Metric families the gateway registers, its own and the tier crate's (prometheus-client
    adds `_total` to counters)."""
    names: set[str] = set()
    sources = [f for crate in ("gateway", "tier") for f in (ROOT / crate / "src").rglob("*.rs")]
    for f in sources:
        text = f.read_text()
        prefixes = dict(re.findall(r'let\s+(?:mut\s+)?(\w+)\s*=\s*\w+\s*\.sub_registry_with_prefix\(\s*"([a-z0-9_]+)"', text))
        for var, name in re.findall(r'\b(\w+)\.register\(\s*"([a-z0-9_]+)"', text):
            names.add(f"{prefixes[var]}_{name}" if var in prefixes else name)
    return names


def check_dashboard() -> None:
    try:
        dash = json.loads(DASHBOARD.read_text())
    except (OSError, ValueError) as e:
        fail(f"{DASHBOARD}: {e}")
        return
    if not isinstance(dash.get("schemaVersion"), int) or dash["schemaVersion"] < 36:
        fail(f"{DASHBOARD}: schemaVersion must be >= 36")
    known = registered_metrics()
    if not known:
        fail("found no registered metrics in gateway/src or tier/src")
        return
    panels = []
    stack = list(dash.get("panels", []))
    while stack:
        p = stack.pop()
        panels.append(p)
        stack.extend(p.get("panels", []))
    ids = [p.get("id") for p in panels]
    if len(ids) != len(set(ids)):
        fail(f"{DASHBOARD}: duplicate panel ids")
    for p in panels:
        for t in p.get("targets", []):
            for metric in re.findall(r"\b(gateway_[a-z0-9_]+)", t.get("expr", "")):
                base = re.sub(r"_(total|bucket|sum|count|created)$", "", metric)
                if metric not in known and base not in known:
                    fail(f"{DASHBOARD}: panel {p.get('title')!r} queries {metric}, which the gateway does not register")


def check_doc_metrics() -> None:
    """Metric names quoted in the operations and deployment docs exist."""
    known = registered_metrics()
    for doc in ("operations.md", "deploy-aws.md"):
        text = (ROOT / "docs" / doc).read_text()
        for metric in sorted(set(re.findall(r"\b(gateway_[a-z0-9_]*[a-z0-9])\b", text))):
            base = re.sub(r"_(total|bucket|sum|count|created)$", "", metric)
            if metric not in known and base not in known:
                fail(f"docs/{doc} mentions {metric}, which the gateway does not register")


def main() -> int:
    # The embedded Helm logs template `fail` calls during lint; keep them out of the output.
    quiet = logging.getLogger("s3-gateway-check.helm")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    helm.enable_logging(logging.CRITICAL, logger=quiet)

    lint()
    rendered: dict[str, list[tuple[str, dict]]] = {}
    with helm.Chart.load(str(CHART)) as chart:
        for name, values in scenarios().items():
            try:
                rendered[name] = render(chart, values)
            except helm.HelmError as e:
                fail(f"helm template ({name}): {e}")
        for name, (values, expected) in REFUSED.items():
            try:
                render(chart, values)
                fail(f"helm template accepted values it must refuse ({name}): {values}")
            except helm.HelmError as e:
                if expected not in str(e):
                    fail(f"helm template refused {name} for another reason: {e}")
    for name, docs in rendered.items():
        validate_k8s(name, docs)
        check_references(name, docs)
        kinds = {d["kind"] for _, d in docs}
        want_sm = name in ("production", "callback-address", "aws-default-chain")
        if ("ServiceMonitor" in kinds) != want_sm:
            fail(f"{name}: ServiceMonitor {'missing' if want_sm else 'rendered'}")
        if name == "embedded" and "Secret" not in kinds:
            fail("embedded: the client keys Secret is not generated")
        check_aws_keys(name, docs, chain=(name == "aws-default-chain"))
    check_configs(rendered)
    check_dashboard()
    check_doc_metrics()

    for f in failures:
        print(f"helm/check: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
