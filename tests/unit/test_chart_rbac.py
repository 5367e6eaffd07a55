"""The chart's RBAC, over `helm template` output: least privilege, derived from the code.

The operator's API calls all live in operator/kube/client.py and its watches in
operator/handlers/app.py. This test reads both (their syntax tree, not a list kept by hand)
and demands that the rendered rules grant exactly that: a new call without a rule fails here,
and so does a rule nothing uses. The leader election Lease's name is a flag: its calls are
pinned to the name the chart's Deployment passes. Also here: the chart's CRDs are
byte-for-byte crds/.
"""

from __future__ import annotations

import ast
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bakeline.checkpoints import configmap
from bakeline.kube import client as kube
from bakeline.runtime.pods import (
    LABEL_JOB,
    LABEL_MANAGED_BY,
    MANAGER,
    build_delivery_pod,
    build_fetch_pod,
    build_stage_pod,
    checkpoint_store_prefix,
    owner_reference,
)
from controlplane import TOOLS, build_binary

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "bakeline"
KUBE_VERSION = TOOLS["kube-apiserver"].version()  # our helm build assumes 1.20 otherwise

STAGE_ACCOUNT = "bakeline-stage"  # the chart's default stagePods.serviceAccount.name
Grant = tuple[str, str, str, tuple[str, ...]]  # apiGroup, resource, verb, resourceNames

MODES: dict[str, list[str]] = {
    "default": [],
    "namespaces": ["--set", "watch.namespaces={team-a,team-b}"],
    "all-namespaces": ["--set", "watch.allNamespaces=true"],
    "everything-on": [
        "--set",
        "watch.allNamespaces=true,metrics.serviceMonitor.enabled=true,"
        "metrics.prometheusRule.enabled=true,metrics.dashboard.enabled=true,"
        "rbac.aggregateToDefaultRoles=true",
        "--api-versions",
        "monitoring.coreos.com/v1/ServiceMonitor",
        "--api-versions",
        "monitoring.coreos.com/v1/PrometheusRule",
    ],
}


def render(*args: str, namespace: str = "bakeline-system") -> list[dict[str, Any]]:
    helm = str(build_binary("helm"))
    result = subprocess.run(
        [
            helm,
            "template",
            "rel",
            str(CHART),
            "-n",
            namespace,
            "--kube-version",
            KUBE_VERSION,
            *args,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def operator_roles(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The (Cluster)Roles bound to the operator's ServiceAccount."""
    bound = {
        (binding["roleRef"]["kind"], binding["roleRef"]["name"])
        for binding in docs
        if binding["kind"] in ("RoleBinding", "ClusterRoleBinding")
        and any(
            s["kind"] == "ServiceAccount" and s["name"] != STAGE_ACCOUNT
            for s in binding["subjects"]
        )
    }
    return [doc for doc in docs if (doc["kind"], doc["metadata"]["name"]) in bound]


def grants(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], Grant]]:
    for doc in docs:
        if doc["kind"] in ("Role", "ClusterRole"):
            for rule in doc.get("rules") or []:
                for group in rule.get("apiGroups") or []:
                    for resource in rule.get("resources") or []:
                        for verb in rule["verbs"]:
                            names = tuple(rule.get("resourceNames") or ())
                            yield doc, (group, resource, verb, names)


# ---------------------------------------------------------------------------- what the code needs

_CORE = re.compile(r"^(read|list|create|patch|replace|delete)_namespaced_(\w+?)(_status)?$")
_CUSTOM = re.compile(r"^(get|list|create|patch|replace|delete)_namespaced_custom_object(_status)?$")
_COORDINATION = re.compile(r"^(read|create|replace)_namespaced_lease$")
_VERBS = {"read": "get", "get": "get", "replace": "update"}
# The Lease kube/leader.py is told to use (--leader-elect-resource-name): calls that name an
# object name this one, which the rendered Deployment fills in.
THE_LEASE = "<--leader-elect-resource-name>"
# kopf handlers and what kopf itself does on their resource: watching handlers only read the
# stream; the others also write kopf's annotations or finalizers on the object.
_KOPF_READ = {"event", "index"}
_KOPF_WRITE = {"create", "update", "delete", "resume", "field", "timer", "daemon"}


def _core_plural(snake: str) -> str:
    # CoreV1Api spells kinds in snake case: config_map -> configmaps.
    return snake.replace("_", "") + "s"


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _restriction(node: ast.expr | None) -> tuple[str, ...]:
    """The resourceNames an object-name argument pins the call to ((): any name)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return (node.value,)
    if isinstance(node, ast.Name) and isinstance(getattr(kube, node.id, None), str):
        return (str(getattr(kube, node.id)),)
    return ()


def _custom_plurals(node: ast.expr | None) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    return sorted(kube.PLURALS.values())  # PLURALS[kind]: any of the four


def calls_in_kube_py() -> set[Grant]:
    """Every (group, resource, verb, names) the operator's API wrapper can exercise."""
    source = Path(kube.__file__).read_text()
    tree = ast.parse(source)
    parents = _parents(tree)
    needed: set[Grant] = set()
    for node in ast.walk(tree):
        if not (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "self"
            and node.value.attr in ("core", "custom", "coordination")
        ):
            continue
        call = parents.get(node)
        if isinstance(call, ast.Call) and call.func is node:
            args = call.args
        elif (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Name)
            and call.func.id in ("_json", "_discard")
            and call.args[:1] == [node]
        ):
            args = call.args[1:]  # _json(self.core.method, *args): the method's own arguments
        else:
            args = []
        if node.value.attr == "coordination":
            match = _COORDINATION.match(node.attr)
            assert match, f"kube.py calls CoordinationV1Api.{node.attr}: teach this test its verb"
            action = match.group(1)
            lease: tuple[str, ...] = (THE_LEASE,) if action in ("read", "replace") else ()
            needed.add(("coordination.k8s.io", "leases", _VERBS.get(action, action), lease))
        elif node.value.attr == "core":
            match = _CORE.match(node.attr)
            assert match, f"kube.py calls CoreV1Api.{node.attr}: teach this test its verb"
            action, snake, status = match.groups()
            resource = _core_plural(snake) + ("/status" if status else "")
            # read/patch/replace/delete name the object first; create and list name none.
            pinned = (
                _restriction(args[0]) if action in ("read", "patch", "replace", "delete") else ()
            )
            if action in ("read", "patch", "replace", "delete") and not args:
                pinned = ()  # passed as a callable: any object
            needed.add(("", resource, _VERBS.get(action, action), pinned))
        else:
            match = _CUSTOM.match(node.attr)
            assert match, f"kube.py calls CustomObjectsApi.{node.attr}: teach this test its verb"
            action, status = match.groups()
            for plural in _custom_plurals(args[3] if len(args) > 3 else None):
                resource = plural + ("/status" if status else "")
                needed.add(("bakeline.io", resource, _VERBS.get(action, action), ()))
    return needed


def kopf_watches() -> set[Grant]:
    """What kopf needs for the handlers registered in app.py, in --standalone mode."""
    from bakeline.handlers import app

    tree = ast.parse(Path(app.__file__).read_text())
    needed: set[Grant] = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        dotted = ast.unparse(node.func)
        handler = dotted.removeprefix("kopf.on.").removeprefix("kopf.")
        if handler not in _KOPF_READ | _KOPF_WRITE or not dotted.startswith("kopf."):
            continue
        group, _, plural = (ast.literal_eval(arg) for arg in node.args[:3])
        verbs = {"list", "watch"} | ({"patch"} if handler in _KOPF_WRITE else set())
        needed |= {(group, plural, verb, ()) for verb in verbs}
    # kopf posts its own Events (warnings from handlers) next to ours.
    needed.add(("", "events", "create", ()))
    return needed


def admission_needs() -> set[Grant]:
    """OwnerReferencesPermissionEnforcement: an owner reference with blockOwnerDeletion needs
    update on the owner's finalizers subresource (OpenShift and hardened clusters)."""
    job = {"metadata": {"name": "j", "uid": "u"}}
    if owner_reference(job).get("blockOwnerDeletion"):
        return {("bakeline.io", "bakingjobs/finalizers", "update", ())}
    return set()


def test_the_derivation_sees_the_calls_we_know_of() -> None:
    # Guards the parser: if it went blind, the equality below would compare near-empty sets.
    needed = calls_in_kube_py()
    assert ("", "pods", "create", ()) in needed
    assert ("bakeline.io", "bakingjobs/status", "patch", ()) in needed
    assert ("", "configmaps", "patch", (kube.LEDGER,)) in needed
    assert ("coordination.k8s.io", "leases", "update", (THE_LEASE,)) in needed
    assert ("coordination.k8s.io", "leases", "create", ()) in needed
    watches = kopf_watches()
    assert ("", "pods", "watch", ()) in watches
    assert ("bakeline.io", "bakingjobs", "list", ()) in watches


# ---------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("mode", sorted(MODES))
def test_rbac_has_no_wildcards_no_secrets_no_escalation(mode: str) -> None:
    docs = render(*MODES[mode])
    roles = [doc for doc in docs if doc["kind"] in ("Role", "ClusterRole")]
    assert roles, "no Role or ClusterRole rendered"
    for doc in roles:
        for rule in doc["rules"]:
            assert "nonResourceURLs" not in rule, rule
            for key in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert all("*" not in value for value in rule.get(key) or []), rule
    for _, (group, resource, verb, _names) in grants(docs):
        assert resource.split("/")[0] not in ("secrets", "serviceaccounts"), resource
        assert verb not in ("escalate", "bind", "impersonate", "deletecollection"), verb
        assert group not in ("rbac.authorization.k8s.io", "admissionregistration.k8s.io")
    for doc in docs:
        if doc["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            assert doc["roleRef"]["name"] in {role["metadata"]["name"] for role in roles}


@pytest.mark.parametrize("mode", ["default", "all-namespaces", "everything-on"])
def test_rbac_grants_exactly_what_the_operator_and_kopf_use(mode: str) -> None:
    docs = render(*MODES[mode])
    granted = {grant for _, grant in grants(operator_roles(docs))}
    lease = _flag(docs, "--leader-elect-resource-name")
    needed = {
        (group, resource, verb, (lease,) if names == (THE_LEASE,) else names)
        for group, resource, verb, names in calls_in_kube_py()
    }
    needed |= kopf_watches() | admission_needs()
    missing, unused = needed - granted, granted - needed
    assert not missing, f"the operator calls these, the chart does not grant them: {missing}"
    assert not unused, f"the chart grants these, nothing in the operator uses them: {unused}"


def _flag(docs: list[dict[str, Any]], flag: str) -> str:
    deployment = next(doc for doc in docs if doc["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    [value] = [a.split("=", 1)[1] for a in args if a.startswith(flag + "=")]
    return str(value)


def _leader_election(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["metadata"]["name"].endswith("-leader-election")]


@pytest.mark.parametrize("mode", sorted(MODES))
def test_the_lease_is_the_operators_alone_in_the_release_namespace(mode: str) -> None:
    docs = render(*MODES[mode], namespace="ops")
    assert _flag(docs, "--leader-elect-resource-namespace") == "ops"
    assert _flag(docs, "--leader-elect-resource-name") == "rel-bakeline"
    role, binding = sorted(_leader_election(docs), key=lambda d: str(d["kind"]))
    assert (role["kind"], binding["kind"]) == ("Role", "RoleBinding")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "ops"
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["rel-bakeline"],
            "verbs": ["get", "update"],
        },
    ]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "rel-bakeline", "namespace": "ops"}
    ]
    # Leases nowhere else: not in the watched namespaces' Roles, not cluster-wide.
    others = [doc for doc in operator_roles(docs) if doc is not role]
    assert not [g for _, g in grants(others) if g[1] == "leases"]
    # Off: no Lease, no Role for it, no flags.
    off = render(
        *MODES[mode],
        "--set",
        "operator.leaderElection.enabled=false,operator.replicas=1",
        namespace="ops",
    )
    assert _leader_election(off) == []
    deployment = next(doc for doc in off if doc["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not [a for a in args if a.startswith("--leader-elect")]


def test_namespaced_mode_is_a_role_per_namespace_and_nothing_cluster_scoped() -> None:
    docs = render(*MODES["namespaces"], namespace="ops")
    kinds = [doc["kind"] for doc in docs]
    assert "ClusterRole" not in kinds and "ClusterRoleBinding" not in kinds
    # Cluster-scoped only the stage token's admission policy, which can be left out.
    cluster_scoped = {
        kind
        for kind in kinds
        if "namespace" not in next(doc for doc in docs if doc["kind"] == kind)["metadata"]
    }
    assert cluster_scoped == {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
    off = render(*MODES["namespaces"], "--set", "stagePods.admissionPolicy.enabled=false")
    assert all("namespace" in doc["metadata"] for doc in off)
    watching = [doc for doc in docs if doc not in _leader_election(docs)]
    roles = {doc["metadata"]["namespace"] for doc in watching if doc["kind"] == "Role"}
    bindings = [
        doc
        for doc in watching
        if doc["kind"] == "RoleBinding" and not doc["metadata"]["name"].endswith("-stage")
    ]
    assert roles == {"team-a", "team-b"} == {b["metadata"]["namespace"] for b in bindings}
    for binding in bindings:
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "rel-bakeline", "namespace": "ops"}
        ]
    deployment = next(doc for doc in docs if doc["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert [a for a in args if a.startswith("--namespace")] == [
        "--namespace=team-a",
        "--namespace=team-b",
    ]
    assert "--all-namespaces" not in args
    # Without a list, the release's own namespace.
    default = render(namespace="ops")
    assert {d["metadata"]["namespace"] for d in default if d["kind"] == "Role"} == {"ops"}
    assert len([d for d in default if d["kind"] == "Role"]) == 3  # watching, stage, the Lease


def test_all_namespaces_mode_is_one_cluster_role() -> None:
    docs = render(*MODES["all-namespaces"], namespace="ops")
    kinds = [doc["kind"] for doc in docs]
    # The operator's, bound here; the stage pods', for the user to bind per namespace.
    assert kinds.count("ClusterRole") == 2 and kinds.count("ClusterRoleBinding") == 1
    # Namespaced only the Lease's, in the release's namespace.
    assert kinds.count("Role") == 1 and kinds.count("RoleBinding") == 1
    assert {d["metadata"]["namespace"] for d in _leader_election(docs)} == {"ops"}
    binding = next(doc for doc in docs if doc["kind"] == "ClusterRoleBinding")
    assert binding["metadata"]["name"] == "ops-rel-bakeline"  # cluster-unique per release
    assert binding["subjects"][0]["namespace"] == "ops"
    deployment = next(doc for doc in docs if doc["kind"] == "Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--all-namespaces" in args
    assert not any(a.startswith("--namespace") for a in args)


def test_the_operators_capacity_is_passed_only_when_set() -> None:
    def args(*extra: str) -> list[str]:
        docs = render(*extra)
        deployment = next(doc for doc in docs if doc["kind"] == "Deployment")
        return list(deployment["spec"]["template"]["spec"]["containers"][0]["args"])

    assert not any(a.startswith("--max-running-jobs") for a in args())
    assert "--max-running-jobs=4" in args("--set", "operator.maxRunningJobs=4")
    # Always passed, so the chart's default is the one that holds (not the binary's).
    assert "--export-max-bytes=67108864" in args()
    assert "--export-max-bytes=0" in args("--set", "operator.exportMaxBytes=0")


@pytest.mark.parametrize("mode", ["default", "namespaces"])
def test_stage_pods_may_create_and_read_configmaps_in_their_namespace_only(mode: str) -> None:
    docs = render(*MODES[mode], namespace="ops")
    stage = [d for d in docs if d["metadata"]["name"].endswith("-stage")]
    namespaces = {d["metadata"]["namespace"] for d in stage}
    assert namespaces == ({"team-a", "team-b"} if mode == "namespaces" else {"ops"})
    for doc in stage:
        if doc["kind"] == "Role":
            assert doc["rules"] == [
                {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "get"]}
            ]
        elif doc["kind"] == "RoleBinding":
            assert doc["subjects"] == [
                {
                    "kind": "ServiceAccount",
                    "name": STAGE_ACCOUNT,
                    "namespace": doc["metadata"]["namespace"],
                }
            ]
    accounts = [
        d for d in docs if d["kind"] == "ServiceAccount" and d["metadata"]["name"] == STAGE_ACCOUNT
    ]
    assert {a["metadata"]["namespace"] for a in accounts} == namespaces
    assert all(a["automountServiceAccountToken"] is False for a in accounts)


def test_rbac_create_false_renders_no_rbac() -> None:
    docs = render("--set", "rbac.create=false,rbac.aggregateToDefaultRoles=true")
    assert not [d for d in docs if d["kind"].endswith(("Role", "RoleBinding"))]


def test_aggregated_roles_are_for_people_and_read_only_for_viewers() -> None:
    docs = render("--set", "rbac.aggregateToDefaultRoles=true", namespace="ops")
    aggregated = {
        doc["metadata"]["name"]: doc
        for doc in docs
        if doc["kind"] == "ClusterRole" and doc not in operator_roles(docs)
    }
    assert set(aggregated) == {"ops-rel-bakeline-edit", "ops-rel-bakeline-view"}
    edit, view = aggregated["ops-rel-bakeline-edit"], aggregated["ops-rel-bakeline-view"]
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert {verb for _, (_, _, verb, _) in grants([view])} == {"get", "list", "watch"}
    resources = {resource for _, (_, resource, _, _) in grants([edit, view])}
    assert resources == set(kube.PLURALS.values())  # no status, no pods: only Bakeline's kinds
    # Off by default: a namespaced install has nothing cluster-scoped.
    assert not [doc for doc in render() if doc["kind"].startswith("Cluster")]


def test_chart_crds_are_the_generated_crds() -> None:
    generated = {path.name: path.read_bytes() for path in (REPO / "crds").glob("*.yaml")}
    copied = {path.name: path.read_bytes() for path in (CHART / "crds").glob("*.yaml")}
    assert generated, "crds/ is empty"
    assert sorted(copied) == sorted(generated)
    stale = [name for name in generated if copied[name] != generated[name]]
    assert not stale, (
        f"charts/bakeline/crds is stale: cp crds/*.yaml charts/bakeline/crds/ ({stale})"
    )


# ---------------------------------------------------------------------------- stage pods' fences


def _stage_pod(storage: str) -> dict[str, Any]:
    """A stage pod as the operator builds it, for the policies' selectors to be checked on."""
    job = {"metadata": {"name": "digits", "namespace": "ops", "uid": "u"}}
    return build_stage_pod(
        job,
        stage="quantize",
        agent="ModelOptimizer",
        attempt=1,
        params={},
        job_document={},
        input_checkpoint="graph-1",
        image="i",
        storage=storage,
        input_store_id="graph-0123456789abcdef",
    )


def _delivery_pod() -> dict[str, Any]:
    job = {"metadata": {"name": "digits", "namespace": "ops", "uid": "u"}}
    return build_delivery_pod(
        job,
        attempt=1,
        checkpoint="package-1",
        record={},
        output={"uri": "s3://models/digits"},
        image="i",
    )


def _fetch_pod() -> dict[str, Any]:
    job = {"metadata": {"name": "digits", "namespace": "ops", "uid": "u"}}
    return build_fetch_pod(job, checkpoint="package-1", image="i", service_account="s")


def _selects(policy: dict[str, Any], pod: dict[str, Any]) -> bool:
    wanted = policy["spec"]["podSelector"]["matchLabels"].items()
    return bool(wanted <= pod["metadata"]["labels"].items())


def test_stage_pods_get_no_ingress_and_no_egress_but_the_api_server_for_configmap_lanes() -> None:
    given = "stagePods.networkPolicy.apiServer.cidrs={10.0.0.10/32,fd00::1/128}"
    docs = render("--set", given, "--set", "watch.namespaces={team-a,team-b}", namespace="ops")
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in policies} == {
        (ns, f"rel-bakeline-{name}")
        for ns in ("team-a", "team-b")
        for name in ("stage", "stage-store", "delivery", "fetch")
    }
    configmap, volume = _stage_pod("ConfigMap"), _stage_pod("Volume")
    delivery, fetch = _delivery_pod(), _fetch_pod()
    api_server = [
        {
            "to": [{"ipBlock": {"cidr": "10.0.0.10/32"}}, {"ipBlock": {"cidr": "fd00::1/128"}}],
            "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 6443}],
        }
    ]
    for policy in policies:
        spec = policy["spec"]
        others = [configmap, volume, delivery, fetch]
        if policy["metadata"]["name"].endswith("-delivery"):
            # Nothing connects to it; its egress (the user's bucket or registry) stays open.
            assert spec["policyTypes"] == ["Ingress"] and spec["ingress"] == []
            assert [_selects(policy, pod) for pod in others] == [False, False, True, False]
        elif policy["metadata"]["name"].endswith("-fetch"):
            # The export of a Volume lane's package: the API server alone.
            assert spec["policyTypes"] == ["Ingress", "Egress"] and spec["ingress"] == []
            assert spec["egress"] == api_server
            assert [_selects(policy, pod) for pod in others] == [False, False, False, True]
        elif policy["metadata"]["name"].endswith("-stage"):
            # Every stage pod: both directions on, nothing allowed.
            assert spec["policyTypes"] == ["Ingress", "Egress"]
            assert spec["ingress"] == [] and spec["egress"] == []
            assert _selects(policy, configmap) and _selects(policy, volume)
        else:
            # ConfigMap lanes' pods alone: the API server's addresses and ports, nothing else.
            assert spec["policyTypes"] == ["Egress"] and "ingress" not in spec
            assert spec["egress"] == [
                {
                    "to": [
                        {"ipBlock": {"cidr": "10.0.0.10/32"}},
                        {"ipBlock": {"cidr": "fd00::1/128"}},
                    ],
                    "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 6443}],
                }
            ]
            assert _selects(policy, configmap) and not _selects(policy, volume)
    # Not told the API server (`helm template` cannot look it up): no egress at all.
    plain = [d for d in render(namespace="ops") if d["kind"] == "NetworkPolicy"]
    assert [p["metadata"]["name"] for p in plain] == [
        "rel-bakeline-stage",
        "rel-bakeline-delivery",
        "rel-bakeline-fetch",
    ]
    assert plain[2]["spec"]["egress"] == []  # the fetch pod: nowhere to go
    # Off, and cluster-wide with the namespaces named.
    off = render("--set", "stagePods.networkPolicy.enabled=false")
    assert not [d for d in off if d["kind"] == "NetworkPolicy"]
    wide = render(*MODES["all-namespaces"], "--set", "stagePods.networkPolicy.namespaces={ml}")
    assert {d["metadata"]["namespace"] for d in wide if d["kind"] == "NetworkPolicy"} == {"ml"}


def _admission(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    [policy] = [d for d in docs if d["kind"] == "ValidatingAdmissionPolicy"]
    [binding] = [d for d in docs if d["kind"] == "ValidatingAdmissionPolicyBinding"]
    return policy, binding


def test_stage_token_writes_are_fenced_by_an_admission_policy_on_the_stores_own_labels() -> None:
    docs = render(*MODES["namespaces"], namespace="ops")
    policy, binding = _admission(docs)
    assert (
        policy["metadata"]["name"]
        == binding["spec"]["policyName"]
        == "ops-rel-bakeline-stage-store"
    )
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert policy["spec"]["failurePolicy"] == "Fail"
    [rule] = policy["spec"]["matchConstraints"]["resourceRules"]
    assert (rule["resources"], sorted(rule["operations"])) == (["configmaps"], ["CREATE", "UPDATE"])
    [condition] = policy["spec"]["matchConditions"]
    assert f"':{STAGE_ACCOUNT}'" in condition["expression"]
    [selector] = binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"]
    assert selector["key"] == "kubernetes.io/metadata.name"
    assert sorted(selector["values"]) == ["team-a", "team-b"]
    # What it demands is what the store writes: its labels and components, the job's owner
    # reference, the pod's name in the token. A renamed label fails here, not in a cluster.
    text = yaml.safe_dump(policy["spec"])
    for needed in (
        configmap.LABEL_STORE,
        configmap.LABEL_COMPONENT,
        LABEL_JOB,
        configmap.COMPONENT_INDEX,
        configmap.COMPONENT_DATA,
        configmap.COMPONENT_BLOB,
        configmap.COMPONENT_CACHE,
        LABEL_MANAGED_BY,
        MANAGER,
        owner_reference({"metadata": {"name": "j", "uid": "u"}})["apiVersion"],
        "authentication.kubernetes.io/pod-name",
        "immutable",
    ):
        assert needed in text, needed
    assert checkpoint_store_prefix("digits") == "digits-store"  # what expectedStore computes
    # Cluster-wide: every namespace; and off when asked (it takes a cluster admin to install).
    _, wide = _admission(render(*MODES["all-namespaces"]))
    assert "matchResources" not in wide["spec"]
    off = render("--set", "stagePods.admissionPolicy.enabled=false")
    assert not [d for d in off if d["kind"].startswith("ValidatingAdmissionPolicy")]
