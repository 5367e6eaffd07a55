"""The Helm chart: lint and render with default values and with every option on, validated by
the real API server, installed, upgraded and uninstalled on the test control plane; its
monitoring (burn-rate rules, dashboard) checked against the operator's real series; its Argo CD
health check run on Bakeline objects.
"""

from __future__ import annotations

import importlib
import json
import re
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bakeline.metrics.collectors import REGISTRY
from controlplane import TOOLS, ControlPlane, build_binary
from support.kube import apply, get, wait_for

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "bakeline"
KUBE_VERSION = TOOLS["kube-apiserver"].version()  # our helm build assumes 1.20 otherwise
MONITORING_APIS = [
    "--api-versions",
    "monitoring.coreos.com/v1/ServiceMonitor",
    "--api-versions",
    "monitoring.coreos.com/v1/PrometheusRule",
]
EVERYTHING_ON = [
    "--set",
    "metrics.serviceMonitor.enabled=true,metrics.prometheusRule.enabled=true,"
    "metrics.dashboard.enabled=true,operator.verbose=true,image.digest=sha256:" + "ab" * 32,
    "--set",
    "extraEnv[0].name=BAKELINE_EXTRA,operator.extraArgs[0]=--verbose",
    "--set-string",
    "extraEnv[0].value=1",
    "--set",
    "podAnnotations.team=ml,podLabels.tier=ops,priorityClassName=system-cluster-critical,"
    "rbac.aggregateToDefaultRoles=true",
    "--set",
    "imagePullSecrets[0].name=registry,agentImage=registry.example/bakeline-agents:exp",
]
MODES = {
    "default": [],
    "namespaces": ["--set", "watch.namespaces={team-a,team-b}"],
    "all-namespaces": ["--set", "watch.allNamespaces=true"],
    "everything-on": [*EVERYTHING_ON, *MONITORING_APIS, "--set", "watch.allNamespaces=true"],
}


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(build_binary("helm")), *args], capture_output=True, text=True, check=False
    )


def render(*args: str, namespace: str = "bakeline-system") -> list[dict[str, Any]]:
    result = helm(
        "template", "rel", str(CHART), "-n", namespace, "--kube-version", KUBE_VERSION, *args
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def kind(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == name]
    assert len(found) == 1, f"{len(found)} {name} rendered"
    return found[0]


# ---------------------------------------------------------------------------- lint and render


@pytest.mark.parametrize("mode", sorted(MODES))
def test_helm_lint_strict_passes(mode: str) -> None:
    args = [a for a in MODES[mode] if not a.startswith("monitoring") and a != "--api-versions"]
    result = helm("lint", str(CHART), "--strict", "--kube-version", KUBE_VERSION, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


def test_default_render_is_a_restricted_operator_of_two_replicas_and_a_leader() -> None:
    docs = render()
    assert sorted(doc["kind"] for doc in docs) == [
        "Deployment",
        "NetworkPolicy",  # delivery pods: no ingress
        "NetworkPolicy",  # fetch pods: no ingress, no egress (no API server address given)
        "NetworkPolicy",  # stage pods: no ingress, no egress (no API server address given)
        "PodDisruptionBudget",  # one operator pod stays through a drain
        "Role",  # the operator's
        "Role",  # the operator's leader election Lease
        "Role",  # the stage pods': create ConfigMaps
        "RoleBinding",
        "RoleBinding",
        "RoleBinding",
        "Service",
        "ServiceAccount",
        "ServiceAccount",
        "ValidatingAdmissionPolicy",  # what the stage pods' token may create
        "ValidatingAdmissionPolicyBinding",
    ]
    deployment = kind(docs, "Deployment")
    spec = deployment["spec"]
    # Only the Lease's holder reconciles, so new pods may start beside old ones.
    assert spec["replicas"] == 2
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["bakeline", "operator"]
    assert container["args"] == [
        "--namespace=bakeline-system",
        "--image=bakeline:0.1.0",
        "--stage-service-account=bakeline-stage",
        "--metrics-port=8080",
        "--health-port=8081",
        "--leader-elect",
        "--leader-elect-resource-namespace=bakeline-system",
        "--leader-elect-resource-name=rel-bakeline",
        "--leader-elect-lease-duration=15",
        "--leader-elect-renew-deadline=10",
        "--leader-elect-retry-period=2",
        "--export-max-bytes=67108864",
    ]
    # The leader election identity: the pod's name.
    assert {
        "name": "POD_NAME",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
    } in container["env"]
    budget = kind(docs, "PodDisruptionBudget")
    assert budget["spec"] == {
        "minAvailable": 1,
        "selector": deployment["spec"]["selector"],
    }
    assert container["image"] == "bakeline:0.1.0"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http-health"}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}} in pod["volumes"]
    service = kind(docs, "Service")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == "http-metrics"


def test_one_replica_without_leader_election_is_recreated_and_has_no_budget() -> None:
    docs = render("--set", "operator.leaderElection.enabled=false,operator.replicas=1")
    deployment = kind(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert not [doc for doc in docs if doc["kind"] == "PodDisruptionBudget"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not [a for a in args if a.startswith("--leader-elect")]
    # With leader election, one replica is fine too, but a budget would block every drain.
    single = render("--set", "operator.replicas=1")
    assert not [doc for doc in single if doc["kind"] == "PodDisruptionBudget"]
    assert kind(single, "Deployment")["spec"]["strategy"]["type"] == "RollingUpdate"
    # Lease settings reach the flags.
    tuned = render(
        "--set",
        "operator.replicas=3,operator.leaderElection.leaseDuration=30,"
        "operator.leaderElection.renewDeadline=20,operator.leaderElection.retryPeriod=4",
    )
    args = kind(tuned, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert kind(tuned, "Deployment")["spec"]["replicas"] == 3
    assert {
        "--leader-elect-lease-duration=30",
        "--leader-elect-renew-deadline=20",
        "--leader-elect-retry-period=4",
    } <= set(args)


def test_every_option_renders_into_the_objects() -> None:
    docs = render(*MODES["everything-on"])
    kinds = sorted(doc["kind"] for doc in docs)
    assert kinds == [
        "ClusterRole",  # the operator's
        "ClusterRole",  # aggregated into edit
        "ClusterRole",  # aggregated into view
        "ClusterRole",  # the stage pods', bound per namespace by the user
        "ClusterRoleBinding",
        "ConfigMap",
        "Deployment",
        "PodDisruptionBudget",
        "PrometheusRule",
        "Role",  # the leader election Lease's, in the release namespace
        "RoleBinding",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
        "ValidatingAdmissionPolicy",  # cluster-wide: every namespace's stage ServiceAccount
        "ValidatingAdmissionPolicyBinding",
    ]
    pod = kind(docs, "Deployment")["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["image"] == "bakeline@sha256:" + "ab" * 32
    assert "--image=registry.example/bakeline-agents:exp" in container["args"]
    assert "--all-namespaces" in container["args"] and container["args"][-1] == "--verbose"
    assert {"name": "BAKELINE_EXTRA", "value": "1"} in container["env"]
    assert pod["metadata"]["annotations"] == {"team": "ml"}
    assert pod["metadata"]["labels"]["tier"] == "ops"
    assert pod["spec"]["priorityClassName"] == "system-cluster-critical"
    assert pod["spec"]["imagePullSecrets"] == [{"name": "registry"}]
    monitor = kind(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "http-metrics"
    service_labels = kind(docs, "Service")["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service_labels.items()
    dashboard = kind(docs, "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    json.loads(dashboard["data"]["bakeline.json"])


def test_monitoring_objects_need_their_api() -> None:
    # Asked for, but the cluster does not serve monitoring.coreos.com: nothing that would fail.
    docs = render(*EVERYTHING_ON)
    assert not [doc for doc in docs if doc["kind"] in ("ServiceMonitor", "PrometheusRule")]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["--set", "image.pullPolicy=Sometimes"], "pullPolicy"),
        (["--set", "watch.namespace=typo"], "additional properties 'namespace'"),
        (["--set", "watch.namespaces={Not_A_Namespace}"], "/watch/namespaces/0"),
        (["--set", "operator.metricsPort=0"], "/operator/metricsPort"),
        (["--set", "metrics.prometheusRule.slos.stageAvailability.target=1"], "target"),
        (["--set", "image.digest=latest"], "/image/digest"),
        (["--set", "extraEnv[0].name=N,extraEnv[0].value=1"], "/extraEnv/0/value"),
        (
            ["--set", "watch.allNamespaces=true", "--set", "watch.namespaces={a}"],
            "exclude each other",
        ),
        (
            ["--set", "stagePods.networkPolicy.apiServer.cidrs={kubernetes.default}"],
            "/stagePods/networkPolicy/apiServer/cidrs/0",
        ),
        (["--set", "operator.leaderElection.enabled=false"], "needs operator.leaderElection"),
        (["--set", "operator.replicas=0"], "/operator/replicas"),
        (["--set", "operator.leaderElection.lease=5"], "additional properties 'lease'"),
        (
            ["--set", "operator.leaderElection.renewDeadline=15"],
            "renewDeadline must be less than leaseDuration",
        ),
        (
            ["--set", "operator.leaderElection.retryPeriod=9"],
            "renewDeadline must exceed 1.2 x retryPeriod",
        ),
    ],
)
def test_bad_values_are_refused(values: list[str], message: str) -> None:
    result = helm("template", "rel", str(CHART), "--kube-version", KUBE_VERSION, *values)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_kube_version_below_1_30_is_refused() -> None:
    result = helm("template", "rel", str(CHART), "--kube-version", "1.29.9")
    assert result.returncode != 0
    assert "kubeVersion" in result.stderr


# ---------------------------------------------------------------------------- monitoring content


def exported_series() -> set[str]:
    """Every series name the operator's /metrics can expose."""
    names: set[str] = set()
    for metric in REGISTRY.collect():
        names.add(metric.name)
        suffixes = {
            "counter": ["_total"],
            "histogram": ["_bucket", "_count", "_sum"],
            "gauge": [""],
        }[metric.type]
        names |= {metric.name + suffix for suffix in suffixes}
    return names


_PROMQL_WORDS = {
    "sum",
    "by",
    "rate",
    "or",
    "and",
    "absent",
    "up",
    "vector",
    "histogram_quantile",
    "max",
    "min",
    "count",
    "le",
    "job",
    "namespace",
    "phase",
    "agent",
    "outcome",
    "kind",
    "lane",
    "policy",
    "objective",
    "window",
    "e",
}


def series_in(expr: str) -> set[str]:
    """Metric names an expression reads: identifiers that are not PromQL words or labels."""
    expr = re.sub(r'"[^"]*"', "", expr)  # label values
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    tokens = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    return {token for token in tokens if token not in _PROMQL_WORDS and not token.startswith("$")}


def test_burn_rate_alerts_cover_every_window_pair_of_every_slo() -> None:
    docs = render(*MODES["everything-on"])
    groups = kind(docs, "PrometheusRule")["spec"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    records = {rule["record"]: rule["expr"] for rule in rules if "record" in rule}
    alerts = [rule for rule in rules if "alert" in rule]
    values = yaml.safe_load((CHART / "values.yaml").read_text())["metrics"]["prometheusRule"]
    pairs = [(w["long"], w["short"], float(w["factor"])) for w in values["burnRateWindows"]]
    assert pairs == [("1h", "5m", 14.4), ("6h", "30m", 6.0), ("3d", "6h", 1.0)]
    slos = {
        "stage-availability": values["slos"]["stageAvailability"]["target"],
        "reconcile-availability": values["slos"]["reconcileAvailability"]["target"],
    }
    for slo, target in slos.items():
        for long, short, factor in pairs:
            matching = [
                a
                for a in alerts
                if a["labels"].get("slo") == slo
                and (a["labels"]["long_window"], a["labels"]["short_window"]) == (long, short)
            ]
            assert len(matching) == 1, (slo, long, short)
            expr = matching[0]["expr"]
            thresholds = [float(t) for t in re.findall(r">\s*([0-9.e-]+)", expr)]
            assert thresholds == [pytest.approx(factor * (1 - target))] * 2, expr
            used = series_in(expr)
            assert len(used) == 2 and all(name in records for name in used), used
            assert any(name.endswith(f"rate{short}") for name in used)
            assert any(name.endswith(f"rate{long}") for name in used)
    # Every series a rule or alert reads is one the operator exports or a rule records.
    known = exported_series() | set(records)
    for rule in rules:
        unknown = series_in(rule["expr"]) - known
        assert not unknown, f"{rule.get('record') or rule.get('alert')}: {unknown}"
    assert {
        "BakelineOperatorDown",
        "BakelineNoLeader",
        "BakelineErrorBudgetExhausted",
        "BakelineLaneFrozen",
    } <= {a["alert"] for a in alerts}


def test_dashboard_reads_only_series_that_exist() -> None:
    dashboard = json.loads((CHART / "files" / "dashboard.json").read_text())
    docs = render(*MODES["everything-on"])
    groups = kind(docs, "PrometheusRule")["spec"]["groups"]
    records = {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}
    known = exported_series() | records
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(exprs) >= 10
    read: set[str] = set()
    for expr in exprs:
        names = series_in(expr.replace("$__rate_interval", "5m"))
        assert names and not names - known, (expr, names - known)
        read |= names
    # The dashboard shows what operators look at first.
    for series in ("bakeline_jobs", "bakeline_lane_queued_jobs", "bakeline_slo_burn_rate"):
        assert series in read


# ---------------------------------------------------------------------------- Argo CD health


def lua_health() -> Any:
    # Lua 5.1: what Argo CD's gopher-lua speaks. lupa ships no type stubs, hence import_module.
    lua51 = importlib.import_module("lupa.lua51")
    runtime = lua51.LuaRuntime(unpack_returned_tuples=True)
    script = (CHART / "argocd" / "health.lua").read_text()
    check = runtime.eval("function(obj) " + script + " end")

    def health(obj: dict[str, Any]) -> tuple[str, str]:
        result = check(runtime.table_from(obj, recursive=True))
        return str(result["status"]), str(result["message"])

    return health


def _cond(kind: str, status: str, message: str = "", generation: int = 1) -> dict[str, Any]:
    return {
        "type": kind,
        "status": status,
        "reason": kind,
        "message": message,
        "lastTransitionTime": "2025-01-01T00:00:00Z",
        "observedGeneration": generation,
    }


def _obj(kind: str, status: dict[str, Any] | None, generation: int = 1) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "bakeline.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": "x", "generation": generation},
    }
    if status is not None:
        obj["status"] = status
    return obj


HEALTH_CASES = [
    (_obj("BakingJob", None), "Progressing"),
    (
        _obj("BakingJob", {"phase": "Succeeded", "observedGeneration": 1}, generation=2),
        "Progressing",
    ),
    (
        _obj(
            "BakingJob",
            {
                "phase": "Succeeded",
                "progress": "9/9",
                "observedGeneration": 1,
                "conditions": [_cond("Succeeded", "True", "artifact package-1")],
            },
        ),
        "Healthy",
    ),
    (
        _obj(
            "BakingJob",
            {
                "phase": "Failed",
                "observedGeneration": 1,
                "conditions": [_cond("Failed", "True", "quantize: gate failed")],
            },
        ),
        "Degraded",
    ),
    (_obj("BakingJob", {"phase": "Suspended", "observedGeneration": 1}), "Suspended"),
    (
        _obj("BakingJob", {"phase": "RollingBack", "progress": "6/9", "observedGeneration": 1}),
        "Progressing",
    ),
    (_obj("BakingJob", {"phase": "Queued", "observedGeneration": 1}), "Progressing"),
    (
        _obj("Workflow", {"observedGeneration": 1, "conditions": [_cond("Ready", "True")]}),
        "Healthy",
    ),
    (
        _obj(
            "Workflow",
            {
                "observedGeneration": 1,
                "conditions": [
                    _cond("Ready", "False"),
                    _cond("Invalid", "True", "cycle: a -> b -> a"),
                ],
            },
        ),
        "Degraded",
    ),
    (_obj("Lane", {"observedGeneration": 1, "conditions": [_cond("Ready", "True")]}), "Healthy"),
    (
        _obj("Lane", {"observedGeneration": 1, "conditions": [_cond("Ready", "False", "Hold")]}),
        "Suspended",
    ),
    (
        _obj(
            "Lane",
            {
                "observedGeneration": 1,
                "conditions": [_cond("Ready", "True"), _cond("Frozen", "True", "slo: burn 14.4x")],
            },
        ),
        "Degraded",
    ),
    (
        _obj(
            "SLOPolicy",
            {"observedGeneration": 1, "state": "Healthy", "conditions": [_cond("Ready", "True")]},
        ),
        "Healthy",
    ),
    (
        _obj(
            "SLOPolicy",
            {
                "observedGeneration": 1,
                "state": "Burning",
                "conditions": [_cond("Ready", "True"), _cond("Burning", "True")],
            },
        ),
        "Degraded",
    ),
    (
        _obj(
            "SLOPolicy",
            {
                "observedGeneration": 1,
                "state": "Healthy",
                "conditions": [_cond("Ready", "False", "bad selector")],
            },
        ),
        "Degraded",
    ),
]


@pytest.mark.parametrize(("obj", "expected"), HEALTH_CASES)
def test_argocd_health_check(obj: dict[str, Any], expected: str) -> None:
    status, message = lua_health()(obj)
    assert status == expected, message
    assert message


def test_argocd_cm_carries_the_health_check_verbatim() -> None:
    config = yaml.safe_load((CHART / "argocd" / "argocd-cm.yaml").read_text())
    script = (CHART / "argocd" / "health.lua").read_text()
    kinds = {"BakingJob", "Workflow", "Lane", "SLOPolicy"}
    keys = {f"resource.customizations.health.bakeline.io_{k}" for k in kinds}
    assert set(config["data"]) == keys
    assert all(value == script for value in config["data"].values())


# ---------------------------------------------------------------------------- on the API server

MONITORING_CRDS = [
    {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "scope": "Namespaced",
            "names": {"kind": kind_name, "plural": plural, "singular": plural[:-1]},
            # A stand-in for the Prometheus Operator's CRDs: same API, no schema.
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }
    for kind_name, plural in (
        ("ServiceMonitor", "servicemonitors"),
        ("PrometheusRule", "prometheusrules"),
    )
]


@pytest.fixture(scope="module")
def cluster_with_apis(cluster: ControlPlane) -> ControlPlane:
    cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds"))
    apply(cluster, MONITORING_CRDS, server_side=True)
    cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", timeout=60)
    return cluster


@pytest.fixture
def release_namespace(cluster_with_apis: ControlPlane) -> Iterator[str]:
    name = f"chart-{secrets.token_hex(3)}"
    cluster_with_apis.kubectl("create", "namespace", name)
    yield name


@pytest.mark.cluster
@pytest.mark.parametrize("mode", sorted(MODES))
def test_rendered_objects_pass_server_side_validation(
    cluster_with_apis: ControlPlane, release_namespace: str, mode: str
) -> None:
    cluster = cluster_with_apis
    for extra in ("team-a", "team-b"):
        if get(cluster, "namespace", extra) is None:
            cluster.kubectl("create", "namespace", extra)
    docs = render(*MODES[mode], namespace=release_namespace)
    result = cluster.kubectl(
        "apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(docs), check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("(server dry run)") == len(docs)


@pytest.mark.cluster
def test_operator_pod_is_admitted_under_restricted_pod_security(
    cluster_with_apis: ControlPlane, release_namespace: str
) -> None:
    cluster = cluster_with_apis
    cluster.kubectl(
        "label", "namespace", release_namespace, "pod-security.kubernetes.io/enforce=restricted"
    )
    template = kind(render(namespace=release_namespace), "Deployment")["spec"]["template"]
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {**template["metadata"], "name": "op"},
        "spec": template["spec"],
    }
    ok = cluster.kubectl(
        "apply",
        "--dry-run=server",
        "-n",
        release_namespace,
        "-f",
        "-",
        input=json.dumps(pod),
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    # The control: the same pod without its security contexts is refused there.
    pod["spec"] = {**pod["spec"], "securityContext": {}}
    pod["spec"]["containers"] = [{**c, "securityContext": {}} for c in pod["spec"]["containers"]]
    refused = cluster.kubectl(
        "apply",
        "--dry-run=server",
        "-n",
        release_namespace,
        "-f",
        "-",
        input=json.dumps(pod),
        check=False,
    )
    assert refused.returncode != 0 and "violates PodSecurity" in refused.stderr


@pytest.mark.cluster
def test_helm_install_upgrade_uninstall(
    cluster_with_apis: ControlPlane, release_namespace: str
) -> None:
    cluster, ns = cluster_with_apis, release_namespace
    # This plane's API server advertises a loopback address, which it does not publish as the
    # `kubernetes` Service's endpoints: the stage pods' NetworkPolicy is told it.
    api = ["--set", "stagePods.networkPolicy.apiServer.cidrs={127.0.0.1/32}"]
    values = [*EVERYTHING_ON, *api, "--set", f"watch.namespaces={{{ns}}}"]
    installed = cluster.helm("install", "bl", str(CHART), "-n", ns, "--wait=false", *values)
    assert "STATUS: deployed" in installed.stdout
    # NOTES.txt tells where to look next, and warns about nothing: the monitoring API exists,
    # the API server's address is known.
    assert "deployment/bl-bakeline" in installed.stdout and "WARNING" not in installed.stdout
    assert "no egress but the API server (127.0.0.1/32" in installed.stdout
    manifest = [
        doc
        for doc in yaml.safe_load_all(cluster.helm("get", "manifest", "bl", "-n", ns).stdout)
        if doc
    ]
    assert {doc["kind"] for doc in manifest} == {
        "ClusterRole",  # aggregated into admin/edit/view
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "PrometheusRule",
        "ConfigMap",
        "NetworkPolicy",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    }
    for doc in manifest:
        live = get(cluster, doc["kind"], doc["metadata"]["name"], doc["metadata"].get("namespace"))
        assert live is not None, f"{doc['kind']}/{doc['metadata']['name']} was not created"
        assert live["metadata"]["labels"]["app.kubernetes.io/instance"] == "bl"
    # The CRDs were there already (crds/ of the repository): Helm leaves them alone.
    crd = get(cluster, "crd", "bakingjobs.bakeline.io")
    assert "meta.helm.sh/release-name" not in (crd["metadata"].get("annotations") or {})
    # Upgrade: switch to all namespaces; the Role goes, a ClusterRole comes.
    cluster.helm(
        "upgrade",
        "bl",
        str(CHART),
        "-n",
        ns,
        "--reuse-values",
        "--set",
        "watch.allNamespaces=true",
        "--set-json",
        "watch.namespaces=[]",  # --set's {} would be [""]
    )
    assert get(cluster, "role", "bl-bakeline", ns) is None
    assert get(cluster, "clusterrole", f"{ns}-bl-bakeline") is not None
    # The Lease's Role stays in the release namespace in either mode.
    assert get(cluster, "role", "bl-bakeline-leader-election", ns) is not None
    deployment = get(cluster, "deployment", "bl-bakeline", ns)
    assert "--all-namespaces" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    # Uninstall removes every object of the release and keeps the CRDs (and so every job).
    cluster.helm("uninstall", "bl", "-n", ns, "--wait")
    wait_for(
        lambda: get(cluster, "deployment", "bl-bakeline", ns) is None,
        30,
        what="the Deployment to go",
    )
    for role in ("", "-edit", "-view"):
        assert get(cluster, "clusterrole", f"{ns}-bl-bakeline{role}") is None
    assert get(cluster, "role", "bl-bakeline-leader-election", ns) is None
    assert get(cluster, "poddisruptionbudget", "bl-bakeline", ns) is None
    policy = f"{ns}-bl-bakeline-stage-store"
    assert get(cluster, "validatingadmissionpolicy", policy) is None
    assert get(cluster, "validatingadmissionpolicybinding", policy) is None
    assert get(cluster, "crd", "bakingjobs.bakeline.io") is not None


def _leaves(values: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from _leaves(value, f"{path}.")
        else:
            yield path


def test_chart_readme_documents_every_value() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    documented: set[str] = set()
    for row in (CHART / "README.md").read_text().splitlines():
        if not row.startswith("| `"):
            continue
        keys = re.findall(r"`([^`]+)`", row.split("|")[1])
        parent = keys[0].rsplit(".", 1)[0]
        documented |= {parent + key if key.startswith(".") else key for key in keys}
    missing = [
        leaf
        for leaf in _leaves(values)
        if not any(leaf == key or leaf.startswith(key + ".") for key in documented)
    ]
    assert not missing, f"charts/bakeline/README.md does not document: {missing}"
