"""The chart's install on the real API server, with the operator running as the chart's
ServiceAccount (a token from `kubectl create token`, never the admin):

- its RBAC suffices: a BakingJob bakes end to end, in a namespace that enforces the restricted
  Pod Security Standard, and the probes and metrics the Deployment points at answer;
- the test can fail: without `create` on pods the job never gets a pod and the operator logs
  403, and giving the verb back un-sticks it;
- cluster-wide mode (ClusterRole) on a control plane of its own, CRDs installed by Helm;
- GitOps: `kubectl apply --server-side -f crds/ -f examples/` twice changes nothing, and after
  the operator has reconciled every example there is still no diff (it writes status only);
- a ConfigMap lane's stage pods, split so that the agent's container holds no token (issue 23),
  bake a job under the chart's stage Role, admission policy and NetworkPolicies, and the token
  their store containers hold is refused every write outside the job's store.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from bakeline.runtime import pods as manifests
from controlplane import ControlPlane, binary_path, free_port, running
from support.kube import apply, get, wait_for
from support.node_harness import NodeHarness, scripted_agent_env

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "bakeline"
RELEASE = "bl"
SERVICE_ACCOUNT = f"{RELEASE}-bakeline"
LANE = {
    "apiVersion": "bakeline.io/v1alpha1",
    "kind": "Lane",
    "metadata": {"name": "standard"},
    "spec": {"maxConcurrentJobs": 2},
}
# kopf's "scanning": it lists namespaces (namespaced mode) and watches CRDs, cluster-scoped
# reads the chart deliberately does not grant. Refused, kopf retries ~55 s, then falls back to
# the listed namespaces and the CRDs it found at start-up. The operator should set
# settings.scanning.disabled (kopf's switch for exactly this) and these lines go away.
# A 403 or Forbidden in a log line; not a timestamp's milliseconds (",403").
REFUSED = re.compile(r"(?<![\d,.:])403(?!\d)|[Ff]orbidden")
KOPF_SCANNING = re.compile(
    r"Not enough permissions to (list namespaces|watch)"
    r"|GET \S+/api/v1/namespaces(\?\S*)? -> APIForbiddenError"
    r"|GET \S+/apis/apiextensions\.k8s\.io/v1/customresourcedefinitions(\?\S*)? -> APIForbidden"
)


def job(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "bakeline.io/v1alpha1",
        "kind": "BakingJob",
        "metadata": {"name": name},
        "spec": {"model": {"source": {"builtin": "digits-cnn"}}, "laneRef": "standard"},
    }


def phase_of(cluster: ControlPlane, name: str, namespace: str) -> str | None:
    obj = get(cluster, "bakingjob", name, namespace)
    return ((obj or {}).get("status") or {}).get("phase")


def wait_finished(
    cluster: ControlPlane, name: str, namespace: str, operator: ChartOperator, timeout: float
) -> str:
    """The job's final phase; on a timeout the failure shows the operator's log."""
    try:
        wait_for(
            lambda: phase_of(cluster, name, namespace) in ("Succeeded", "Failed"),
            timeout,
            what=f"job {namespace}/{name} to finish",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\noperator log:\n{operator.log()[-4000:]}") from None
    return str(phase_of(cluster, name, namespace))


def lua_health(obj: dict[str, Any]) -> str:
    """The chart's Argo CD health check on a live object (Lua 5.1, as Argo CD runs it)."""
    runtime = importlib.import_module("lupa.lua51").LuaRuntime(unpack_returned_tuples=True)
    script = (CHART / "argocd" / "health.lua").read_text()
    result = runtime.eval("function(obj) " + script + " end")(
        runtime.table_from(obj, recursive=True)
    )
    return str(result["status"])


class ChartOperator:
    """The chart installed in one namespace, and `bakeline operator` run the way its
    Deployment runs it, as its ServiceAccount."""

    def __init__(self, cluster: ControlPlane, namespace: str, workdir: Path) -> None:
        self.cluster, self.namespace, self.workdir = cluster, namespace, workdir
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "operator.log"
        self.metrics_port, self.health_port = free_port(), free_port()

    def install(self, *values: str) -> None:
        self.cluster.helm("install", RELEASE, str(CHART), "-n", self.namespace, *values)

    def upgrade(self, *values: str) -> None:
        self.cluster.helm(
            "upgrade", RELEASE, str(CHART), "-n", self.namespace, "--reuse-values", *values
        )

    def manifest(self) -> list[dict[str, Any]]:
        text = self.cluster.helm("get", "manifest", RELEASE, "-n", self.namespace).stdout
        return [doc for doc in yaml.safe_load_all(text) if doc]

    def kubeconfig(self) -> Path:
        """A kubeconfig holding a token of the chart's ServiceAccount: the operator's identity."""
        token = self.cluster.kubectl(
            "create", "token", SERVICE_ACCOUNT, "-n", self.namespace, "--duration=2h"
        ).stdout.strip()
        user = f"system:serviceaccount:{self.namespace}:{SERVICE_ACCOUNT}"
        return self.cluster.write_kubeconfig_for_token(
            self.workdir / "operator.kubeconfig", token, user
        )

    def argv(self) -> list[str]:
        """The Deployment's command and args, on free local ports."""
        deployment = next(doc for doc in self.manifest() if doc["kind"] == "Deployment")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        args = [a for a in container["args"] if not a.startswith(("--metrics-", "--health-"))]
        ports = [f"--metrics-port={self.metrics_port}", f"--health-port={self.health_port}"]
        return [*container["command"], *args, *ports]

    def start(self) -> None:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig())}
        with self.log_path.open("ab") as sink:
            self.process = subprocess.Popen(
                self.argv(),
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.workdir,  # never the repo root: operator/ would shadow `operator`
            )

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""

    def denials(self) -> list[str]:
        """Log lines about refused API calls, kopf's documented fallbacks left out."""
        return [
            line
            for line in self.log().splitlines()
            if REFUSED.search(line) and not KOPF_SCANNING.search(line)
        ]

    def rss_mib(self) -> float:
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")


@pytest.fixture
def chart_operator(
    cluster: ControlPlane, namespace: str, crds: None, tmp_path: Path
) -> Iterator[ChartOperator]:
    """The chart installed into the test's namespace, watching only it (a Role there)."""
    operator = ChartOperator(cluster, namespace, tmp_path)
    operator.install("--set", f"watch.namespaces={{{namespace}}}")
    yield operator
    operator.stop()


def can_i(cluster: ControlPlane, kubeconfig: Path, *args: str) -> bool:
    del cluster  # the kubeconfig names the server
    result = subprocess.run(
        [str(binary_path("kubectl")), "--kubeconfig", str(kubeconfig), "auth", "can-i", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() == "yes"


# ---------------------------------------------------------------------------- the tests


def test_chart_service_account_bakes_a_job_under_restricted_pod_security(
    cluster: ControlPlane,
    namespace: str,
    chart_operator: ChartOperator,
    scripted_agent: Callable[[dict[str, Any]], Path],
) -> None:
    cluster.kubectl(
        "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted"
    )
    # The control: this namespace really refuses a pod that is not locked down.
    plain = cluster.kubectl(
        "run", "plain", "-n", namespace, "--image=busybox", "--dry-run=server", check=False
    )
    assert plain.returncode != 0 and "violates PodSecurity" in plain.stderr, plain.stderr
    # The identity is the ServiceAccount, with no more than the Role gives it.
    kubeconfig = chart_operator.kubeconfig()
    assert can_i(cluster, kubeconfig, "create", "pods", "-n", namespace)
    assert not can_i(cluster, kubeconfig, "get", "secrets", "-n", namespace)
    assert not can_i(cluster, kubeconfig, "create", "pods", "-n", "default")
    assert not can_i(cluster, kubeconfig, "patch", "bakingjobs.bakeline.io", "-n", namespace)

    scripted_agent({})
    chart_operator.start()
    apply(cluster, [LANE, job("bake")], namespace)
    wait_finished(cluster, "bake", namespace, chart_operator, 180)
    obj = get(cluster, "bakingjob", "bake", namespace)
    assert obj["status"]["phase"] == "Succeeded", json.dumps(obj["status"])[-3000:]
    assert obj["status"]["progress"] == "9/9"
    pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)
    assert len(pods["items"]) == 9  # each admitted under `restricted`
    events = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)
    assert any(e["source"].get("component") == "bakeline-operator" for e in events["items"])
    assert chart_operator.denials() == [], chart_operator.denials()
    # What the chart's probes and Service point at answers.
    health = f"http://127.0.0.1:{chart_operator.health_port}/healthz"
    with urllib.request.urlopen(health, timeout=5) as response:
        assert response.status == 200
    metrics = f"http://127.0.0.1:{chart_operator.metrics_port}/metrics"
    with urllib.request.urlopen(metrics, timeout=5) as response:
        assert b"bakeline_stage_duration_seconds_count" in response.read()
    # The chart's resources hold what the operator uses (values.yaml: limit 512Mi).
    assert chart_operator.rss_mib() < 400, chart_operator.rss_mib()
    print(f"operator RSS after one job: {chart_operator.rss_mib():.0f} MiB")
    # Argo CD would call the finished job and its lane Healthy.
    assert lua_health(obj) == "Healthy"
    assert lua_health(get(cluster, "lane", "standard", namespace)) == "Healthy"


def test_without_create_on_pods_the_job_never_gets_a_pod(
    cluster: ControlPlane,
    namespace: str,
    chart_operator: ChartOperator,
    scripted_agent: Callable[[dict[str, Any]], Path],
) -> None:
    role = get(cluster, "role", SERVICE_ACCOUNT, namespace)
    original = json.loads(json.dumps(role))
    for rule in role["rules"]:
        if rule["resources"] == ["pods"]:
            rule["verbs"] = [verb for verb in rule["verbs"] if verb != "create"]
    assert role["rules"] != original["rules"]
    for stale in ("resourceVersion", "managedFields", "uid", "creationTimestamp"):
        role["metadata"].pop(stale, None)
    cluster.kubectl("replace", "-f", "-", input=json.dumps(role))

    scripted_agent({})
    chart_operator.start()
    apply(cluster, [LANE, job("stuck")], namespace)
    # The refusal is the job's condition, naming the cause, with a time it tries again (it backs
    # off, it does not loop); no pod, and no stage spent on it.
    status = wait_for(
        lambda: (
            s
            if (s := (get(cluster, "bj", "stuck", namespace) or {}).get("status") or {}).get(
                "stagePodsRetryAt"
            )
            else None
        ),
        150,  # kopf's scanning retries delay the start by ~55 s (see KOPF_SCANNING)
        what="the job's StagePodsBlocked condition",
    )
    blocked = next(c for c in status["conditions"] if c["type"] == "StagePodsBlocked")
    assert blocked["status"] == "True" and "forbidden" in blocked["message"], blocked
    pods = cluster.kubectl("get", "pods", "-n", namespace, "-o", "name").stdout.split()
    assert pods == []
    assert phase_of(cluster, "stuck", namespace) not in ("Succeeded", "Failed")
    # Given back the verb, the same operator process gets the job going at its next try: the
    # verb was the cause.
    original["metadata"] = role["metadata"]
    cluster.kubectl("replace", "-f", "-", input=json.dumps(original))
    status = (get(cluster, "bj", "stuck", namespace) or {}).get("status") or status
    retry_at = datetime.fromisoformat(
        str(status.get("stagePodsRetryAt") or datetime.now(UTC).isoformat()).replace("Z", "+00:00")
    )
    wait_for(
        lambda: cluster.kubectl("get", "pods", "-n", namespace, "-o", "name").stdout.strip(),
        max(0.0, (retry_at - datetime.now(UTC)).total_seconds()) + 60,
        what="the first pod once create is granted again",
    )


def test_cluster_wide_install_on_a_fresh_control_plane(tmp_path: Path) -> None:
    # A control plane of its own: an operator watching every namespace of the shared one
    # would also pick up other tests' jobs.
    with (
        running(tmp_path / "plane", log=print) as plane,
        NodeHarness(plane.api_client(), tmp_path / "node") as node,
    ):
        for name in ("bakeline-system", "team-a", "team-b"):
            plane.kubectl("create", "namespace", name)
        operator = ChartOperator(plane, "bakeline-system", tmp_path)
        # No CRDs yet: Helm installs them from the chart's crds/ folder before the rest.
        operator.install("--set", "watch.allNamespaces=true")
        for crd in ("bakingjobs", "workflows", "lanes", "slopolicies"):
            assert get(plane, "crd", f"{crd}.bakeline.io") is not None
        kinds = {doc["kind"] for doc in operator.manifest()}
        assert {"ClusterRole", "ClusterRoleBinding"} <= kinds
        # Namespaced only the leader election Lease's Role, in the release's namespace: the
        # operator below leads (as the chart's ServiceAccount) before it reconciles anything.
        roles = [d["metadata"] for d in operator.manifest() if d["kind"] == "Role"]
        assert [(r["name"], r["namespace"]) for r in roles] == [
            (f"{RELEASE}-bakeline-leader-election", "bakeline-system")
        ]
        assert "--all-namespaces" in operator.argv()
        env = scripted_agent_env(tmp_path / "bin", tmp_path / "script.json")
        node.namespace_env.update({"team-a": env, "team-b": env})
        # Cluster-wide, the chart cannot know the namespaces: the README's step for each one
        # that runs ConfigMap lanes binds the stage ClusterRole to a stage ServiceAccount.
        [stage_role] = [
            d["metadata"]["name"]
            for d in operator.manifest()
            if d["kind"] == "ClusterRole" and d["metadata"]["name"].endswith("-stage")
        ]
        for team in ("team-a", "team-b"):
            plane.kubectl("create", "serviceaccount", "bakeline-stage", "-n", team)
            plane.kubectl(
                "create",
                "rolebinding",
                "bakeline-stage",
                "-n",
                team,
                f"--clusterrole={stage_role}",
                f"--serviceaccount={team}:bakeline-stage",
            )
        try:
            operator.start()
            for team in ("team-a", "team-b"):
                apply(plane, [LANE, job(f"bake-{team}")], team)
            for team in ("team-a", "team-b"):
                assert wait_finished(plane, f"bake-{team}", team, operator, 180) == "Succeeded"
            assert operator.denials() == [], operator.denials()
        finally:
            operator.stop()


def _objects(cluster: ControlPlane, namespace: str) -> list[dict[str, Any]]:
    manifests = ["-f", str(REPO / "crds"), "-f", str(REPO / "examples"), "-n", namespace]
    out = cluster.kubectl("get", *manifests, "-o", "json", "--show-managed-fields").stdout
    return list(json.loads(out)["items"])


def _versions(cluster: ControlPlane, namespace: str) -> dict[tuple[str, str], str]:
    objects = _objects(cluster, namespace)
    return {(o["kind"], o["metadata"]["name"]): o["metadata"]["resourceVersion"] for o in objects}


SEMANTIC_DIFF = """
import difflib, pathlib, sys, yaml
# kubectl diff's LIVE and MERGED trees, compared as data: kubectl prints maps in different key
# orders on the two sides (1h, 3d, 30m against 1h, 30m, 3d), which `diff -u` reports.
live, merged = (pathlib.Path(arg) for arg in sys.argv[1:3])
changed = 0
for name in sorted({p.name for p in live.iterdir()} | {p.name for p in merged.iterdir()}):
    a, b = (yaml.safe_load((d / name).read_text()) if (d / name).exists() else None
            for d in (live, merged))
    if a != b:
        changed = 1
        sys.stdout.writelines(difflib.unified_diff(
            yaml.safe_dump(a).splitlines(True), yaml.safe_dump(b).splitlines(True), name, name))
sys.exit(changed)
"""


def _diff(
    cluster: ControlPlane, namespace: str, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> subprocess.CompletedProcess[str]:
    """`kubectl diff --server-side` (exit 0: nothing to change) with a semantic comparison."""
    script = workdir / "semantic_diff.py"
    script.write_text(f"#!{sys.executable}\n{SEMANTIC_DIFF}")
    script.chmod(0o755)
    monkeypatch.setenv("KUBECTL_EXTERNAL_DIFF", str(script))  # kubectl drops non-flag args
    return cluster.kubectl(
        "diff",
        "--server-side",
        "-f",
        str(REPO / "crds"),
        "-f",
        str(REPO / "examples"),
        "-n",
        namespace,
        check=False,
    )


def test_gitops_apply_twice_changes_nothing_and_the_operator_writes_status_only(
    cluster: ControlPlane,
    namespace: str,
    chart_operator: ChartOperator,
    scripted_agent: Callable[[dict[str, Any]], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manifests = ["-f", str(REPO / "crds"), "-f", str(REPO / "examples"), "-n", namespace]
    cluster.kubectl("apply", "--server-side", *manifests)
    first = _versions(cluster, namespace)
    kinds = {kind for kind, _ in first}
    assert {"CustomResourceDefinition", "Lane", "Workflow", "BakingJob", "SLOPolicy"} == kinds
    again = cluster.kubectl("apply", "--server-side", *manifests).stdout
    assert "serverside-applied" in again
    second = _versions(cluster, namespace)
    assert second == first, "the second apply wrote something"
    diff = _diff(cluster, namespace, tmp_path, monkeypatch)
    assert diff.returncode == 0, diff.stdout[-3000:] + diff.stderr[-2000:]

    # The operator (as the chart's ServiceAccount) reconciles all four kinds.
    scripted_agent({})
    chart_operator.start()
    jobs = [o["metadata"]["name"] for o in _objects(cluster, namespace) if o["kind"] == "BakingJob"]
    for name in jobs:
        wait_finished(cluster, name, namespace, chart_operator, 300)

    def reconciled() -> bool:
        kinds = ("Lane", "Workflow", "SLOPolicy")
        objects = [o for o in _objects(cluster, namespace) if o["kind"] in kinds]
        return all((o.get("status") or {}).get("observedGeneration") for o in objects)

    wait_for(reconciled, 60, what="every Lane, Workflow and SLOPolicy to have a status")
    # Stopped, so that no status write falls between kubectl diff's two reads.
    chart_operator.stop()
    assert chart_operator.denials() == [], chart_operator.denials()
    diff = _diff(cluster, namespace, tmp_path, monkeypatch)
    assert diff.returncode == 0, "the operator changed what GitOps owns:\n" + diff.stdout[-4000:]
    for obj in _objects(cluster, namespace):
        meta = obj["metadata"]
        if obj["kind"] == "CustomResourceDefinition":
            continue
        assert meta["generation"] == 1, f"{obj['kind']}/{meta['name']}: spec was written"
        writers = {
            (entry["manager"], entry.get("subresource", "")) for entry in meta["managedFields"]
        }
        assert ("kubectl", "") in writers
        others = {writer for writer in writers if writer[0] != "kubectl"}
        assert others, f"{obj['kind']}/{meta['name']}: the operator wrote no status"
        assert all(sub == "status" for _, sub in others), f"{obj['kind']}: {writers}"
    # The control: drift in a spec (here, an apply of a changed Lane) is what the diff reports.
    lanes = list(yaml.safe_load_all((REPO / "examples" / "lanes.yaml").read_text()))
    express = next(lane for lane in lanes if lane["metadata"]["name"] == "express")
    express["spec"]["maxConcurrentJobs"] += 1
    apply(cluster, express, namespace, server_side=True)
    drift = _diff(cluster, namespace, tmp_path, monkeypatch)
    assert drift.returncode == 1 and "maxConcurrentJobs" in drift.stdout, drift.stdout


# What kube-apiserver publishes for the `kubernetes` Service where it advertises a routable
# address (this plane's is loopback, which it does not publish).
API_SERVER_SLICE = {
    "apiVersion": "discovery.k8s.io/v1",
    "kind": "EndpointSlice",
    "metadata": {
        "name": "kubernetes",
        "namespace": "default",
        "labels": {"kubernetes.io/service-name": "kubernetes"},
    },
    "addressType": "IPv4",
    "endpoints": [{"addresses": ["10.96.7.7"], "conditions": {"ready": True}}],
    "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
}


def _kubectl_as(
    cluster: ControlPlane, token: str, *args: str, body: dict[str, Any] | None = None
) -> subprocess.CompletedProcess[str]:
    """kubectl with `token` as the only credential."""
    server = ["--server", cluster.server, "--certificate-authority", str(cluster.ca_file)]
    return subprocess.run(
        [
            str(binary_path("kubectl")),
            "--kubeconfig",
            "/dev/null",
            *server,
            "--token",
            token,
            *args,
        ],
        input=json.dumps(body) if body is not None else None,
        capture_output=True,
        text=True,
        check=False,
    )


def test_configmap_lane_bakes_with_the_token_kept_from_the_agents_container(
    cluster: ControlPlane,
    namespace: str,
    chart_operator: ChartOperator,
    scripted_agent: Callable[[dict[str, Any]], Path],
    node: NodeHarness,
) -> None:
    cluster.kubectl(
        "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted"
    )
    manifest = chart_operator.manifest()
    kinds = {doc["kind"] for doc in manifest}
    assert {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"} <= kinds
    policies = {d["metadata"]["name"]: d for d in manifest if d["kind"] == "NetworkPolicy"}
    # Every stage pod: no ingress, no egress. This plane's API server advertises a loopback
    # address, which it does not publish as the `kubernetes` Service's endpoints: the chart
    # found none, so ConfigMap lanes got no egress rule either.
    assert set(policies) == {f"{SERVICE_ACCOUNT}-{name}" for name in ("stage", "delivery", "fetch")}
    assert policies[f"{SERVICE_ACCOUNT}-stage"]["spec"]["egress"] == []
    assert policies[f"{SERVICE_ACCOUNT}-fetch"]["spec"]["egress"] == []
    # Published, `helm upgrade` finds them: the API server alone, for ConfigMap lanes' pods.
    cluster.kubectl("apply", "-f", "-", input=json.dumps(API_SERVER_SLICE))
    try:
        chart_operator.upgrade()
    finally:  # the plane is shared: other tests' installs must not find it
        cluster.kubectl("delete", "endpointslice", "kubernetes", "-n", "default")
    policies = {
        d["metadata"]["name"]: d for d in chart_operator.manifest() if d["kind"] == "NetworkPolicy"
    }
    assert policies[f"{SERVICE_ACCOUNT}-stage-store"]["spec"]["egress"] == [
        {
            "to": [{"ipBlock": {"cidr": "10.96.7.7/32"}}],
            "ports": [{"protocol": "TCP", "port": 6443}],
        }
    ]
    # Given, the values win (what `helm template` and GitOps need).
    address = urllib.parse.urlsplit(cluster.server)
    chart_operator.upgrade(
        "--set",
        f"stagePods.networkPolicy.apiServer.cidrs={{{address.hostname}/32}}",
        "--set",
        f"stagePods.networkPolicy.apiServer.ports={{{address.port}}}",
    )
    policies = {
        d["metadata"]["name"]: d for d in chart_operator.manifest() if d["kind"] == "NetworkPolicy"
    }
    assert policies[f"{SERVICE_ACCOUNT}-stage-store"]["spec"]["egress"] == [
        {
            "to": [{"ipBlock": {"cidr": f"{address.hostname}/32"}}],
            "ports": [{"protocol": "TCP", "port": address.port}],
        }
    ]
    store_policy = policies[f"{SERVICE_ACCOUNT}-stage-store"]["spec"]["podSelector"]
    assert store_policy["matchLabels"][manifests.LABEL_STORAGE] == "ConfigMap"

    # A transient failure too: the store container of a failed attempt stores nothing.
    scripted_agent({"graph": [1, 0]})
    chart_operator.start()
    lane: dict[str, Any] = json.loads(json.dumps(LANE))
    lane["spec"]["storage"] = {"type": "ConfigMap"}  # the default, said outright
    apply(cluster, [lane, job("split")], namespace)
    assert wait_finished(cluster, "split", namespace, chart_operator, 240) == "Succeeded"
    assert chart_operator.denials() == [], chart_operator.denials()
    obj = get(cluster, "bakingjob", "split", namespace)
    assert {s["name"]: s["attempt"] for s in obj["status"]["stages"]}["graph"] == 2
    records = json.loads(
        cluster.kubectl(
            "get",
            "configmaps",
            "-n",
            namespace,
            "-l",
            "bakeline.io/component=checkpoint",
            "-o",
            "json",
        ).stdout
    )["items"]
    # The newest 3 of 9 (spec.checkpoints.retain's default): the operator may delete the rest.
    assert len(records) == 3 and all(r["data"]["storage"] == "ConfigMap" for r in records)

    pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)
    assert len(pods["items"]) == 10  # nine stages, one retried; each admitted under `restricted`
    token_file = None
    for pod in pods["items"]:
        name, spec = pod["metadata"]["name"], pod["spec"]
        containers = {c["name"]: c for c in [*spec.get("initContainers", []), *spec["containers"]]}
        expected = {"agent", "store"} | ({"restore"} if "initContainers" in spec else set())
        assert set(containers) == expected, name
        assert spec["automountServiceAccountToken"] is False
        agent_mounts = {m["mountPath"] for m in containers["agent"]["volumeMounts"]}
        assert manifests.SERVICE_ACCOUNT_MOUNT not in agent_mounts, name
        # What the agent's process was given: no token, no store, no path to either.
        agent_env = node.container_env(namespace, name, "agent")
        assert agent_env is not None
        assert not [k for k in agent_env if k.startswith(("BAKELINE_STORE", "BAKELINE_SERVICE"))]
        assert not [v for v in agent_env.values() if "api-token" in v]
        store_env = node.container_env(namespace, name, "store")
        assert store_env is not None
        token_file = Path(store_env["BAKELINE_SERVICE_ACCOUNT_DIR"]) / "token"
        assert token_file.is_file()
        statuses = {c["name"]: c["state"] for c in pod["status"]["containerStatuses"]}
        agent_code = statuses["agent"]["terminated"]["exitCode"]
        store_state = statuses["store"]["terminated"]
        # The store exits as the agent did; its message names the stored checkpoint.
        assert store_state["exitCode"] == agent_code, (name, store_state)
        if agent_code == 0:
            assert json.loads(store_state["message"])["store"]["id"]
        for init in pod["status"].get("initContainerStatuses") or []:
            assert init["state"]["terminated"]["exitCode"] == 0
        if name == "split-quantize-1":  # what a stage pod the operator created holds
            for container in containers.values():
                mounts = [m["mountPath"] for m in container["volumeMounts"]]
                env = [e["name"] for e in container["env"] if e["name"].startswith("BAKELINE_S")]
                print(f"{name} {container['name']}: {container['command']} mounts {mounts} {env}")

    # A store container's token, used for anything but its job's store, is refused.
    assert token_file is not None
    token = token_file.read_text().strip()
    refused: dict[str, dict[str, Any]] = {
        "a ConfigMap of its choosing": {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "evil"},
            "data": {"k": "v"},
        },
        "a checkpoint record": {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": manifests.checkpoint_record_name("split", "graph-9"),
                "labels": {"bakeline.io/component": "checkpoint", "bakeline.io/job": "split"},
                "ownerReferences": [manifests.owner_reference(obj)],
            },
            "data": {"checkpoint": "graph-9"},
            "immutable": True,
        },
    }
    for what, body in refused.items():
        answer = _kubectl_as(cluster, token, "create", "-n", namespace, "-f", "-", body=body)
        assert answer.returncode != 0, what
        # RBAC lets it create ConfigMaps: the chart's admission policy is what refuses these.
        assert "ValidatingAdmissionPolicy" in answer.stderr, answer.stderr
        print(f"the stage token, creating {what}: {answer.stderr.strip()}")
    record = records[0]["metadata"]["name"]
    delete = _kubectl_as(cluster, token, "delete", "configmap", "-n", namespace, record)
    assert delete.returncode != 0 and "forbidden" in delete.stderr, delete.stderr
    # The control: the same token reads, as a restore does.
    assert _kubectl_as(cluster, token, "get", "configmap", "-n", namespace, record).returncode == 0
