"""The API calls the operator makes, in one place: the verbs here are the verbs its RBAC needs.

Creation is idempotent (409 means an earlier pass, maybe before a restart, already did it), and
a missing object reads as None, so reconcilers can be re-run at any point.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from bakeline.api.common import GROUP, VERSION
from bakeline.kube.batching import GroupCommit, Throttle
from bakeline.kube.clock import now_timestamp
from bakeline.kube.informer import Informer
from bakeline.metrics.collectors import API_REQUESTS
from bakeline.runtime.pods import LABEL_COMPONENT, LABEL_JOB, label_value

# A ConfigMap data key: at most 253 characters of [-._a-zA-Z0-9].
MAX_DATA_KEY = 253

log = logging.getLogger("bakeline.kube")

PLURALS = {
    "BakingJob": "bakingjobs",
    "Workflow": "workflows",
    "Lane": "lanes",
    "SLOPolicy": "slopolicies",
}
COMPONENT = "bakeline-operator"
LEDGER = "bakeline-slo-ledger"
CIRCUITS = "bakeline-circuits"
CIRCUITS_KIND = "Circuits"  # the informer's name for it (kept from our own reads and writes)
DURATIONS = "bakeline-stage-durations"
DURATIONS_KIND = "Durations"  # the informer's name for it, as for the circuits


POD = "Pod"
RECORD = "Record"  # a checkpoint record: ConfigMap labelled bakeline.io/component=checkpoint
RECORD_SELECTOR = f"{LABEL_COMPONENT}=checkpoint"


class Kube:
    """A thin, typed-enough wrapper over the kubernetes client for the operator's calls.

    With an `Informer` (the operator's), reads of the watched kinds are served from what the
    watches delivered; without one (the CLI, tests), every read goes to the API server. Objects
    come back as plain dicts in the API's own camelCase form either way.
    """

    def __init__(self, api_client: Any, informer: Informer | None = None) -> None:
        self.api_client = api_client
        _count_requests(api_client)
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.coordination = client.CoordinationV1Api(api_client)
        self.informer = informer
        self._ledger_writes = GroupCommit(self._write_ledger)
        self.ledger_folds = Throttle()  # folds of each namespace's ledger by its writers

    # ---- Bakeline objects
    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        if self.informer is not None:
            self._prime_custom(kind, namespace)
            return self.informer.get(kind, namespace, name)
        return self.read(kind, namespace, name)

    def read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object as the API server has it now (no cache)."""
        try:
            obj: Any = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURALS[kind], name
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(obj)

    def list_objects(self, kind: str, namespace: str) -> list[dict[str, Any]]:
        if self.informer is not None:
            self._prime_custom(kind, namespace)
            return self.informer.select(kind, namespace)
        return list(self._list_custom(kind, namespace)[0])

    def _list_custom(self, kind: str, namespace: str) -> tuple[list[dict[str, Any]], int]:
        listing: Any = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURALS[kind]
        )
        return [dict(item) for item in listing.get("items", [])], _list_version(listing)

    def _prime_custom(self, kind: str, namespace: str) -> None:
        assert self.informer is not None
        self.informer.prime(kind, namespace, lambda: self._list_custom(kind, namespace))

    def patch_status(
        self,
        kind: str,
        namespace: str,
        name: str,
        status: dict[str, Any],
        resource_version: str | None = None,
    ) -> None:
        """Merge-patch the status subresource; the operator never writes spec.

        With `resource_version` the patch applies only to that version (409 otherwise): for
        status that two writers share, such as a Lane's frozenBy.
        """
        body: dict[str, Any] = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        patched: Any = self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURALS[kind], name, body
        )
        if self.informer is not None and isinstance(patched, dict):
            self.informer.store(kind, patched)

    def list_lanes(self, namespace: str, label_selector: str | None) -> list[dict[str, Any]]:
        listing: Any = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, "lanes", label_selector=label_selector or ""
        )
        return [dict(item) for item in listing.get("items", [])]

    # ---- the SLO ledger: one ConfigMap per namespace (kube/ledger.py says what it holds)
    def record_outcome(self, namespace: str, key: str, entry: dict[str, Any]) -> None:
        """Store a finished job's outcome records; writing the same key again is harmless.
        Returns once written, merged with other jobs' outcomes written meanwhile."""
        self._ledger_writes.add(namespace, {key: json.dumps(entry, sort_keys=True)})

    def _write_ledger(self, namespace: str, data: dict[str, Any]) -> None:
        body: Any = {"data": data}
        try:
            _discard(self.core.patch_namespaced_config_map, LEDGER, namespace, body)
        except ApiException as exc:
            if exc.status != 404:
                raise
            self._create(
                self.core.create_namespaced_config_map,
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {
                        "name": LEDGER,
                        "namespace": namespace,
                        "labels": {LABEL_COMPONENT: "slo-ledger"},
                    },
                    "data": {},
                },
            )
            _discard(self.core.patch_namespaced_config_map, LEDGER, namespace, body)

    def read_ledger(self, namespace: str) -> tuple[dict[str, str], str | None]:
        """The ledger's data by key, and the resourceVersion it was read at."""
        try:
            cm = _json(self.core.read_namespaced_config_map, LEDGER, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return {}, None
            raise
        return dict(cm.get("data") or {}), (cm.get("metadata") or {}).get("resourceVersion")

    def patch_ledger(
        self, namespace: str, data: dict[str, str | None], resource_version: str | None
    ) -> None:
        """Write and delete (None) ledger keys, only if the ledger is still at
        `resource_version` (409 otherwise)."""
        if not data:
            return
        body: Any = {"data": data}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        _discard(self.core.patch_namespaced_config_map, LEDGER, namespace, body)

    # ---- the circuit breakers: one ConfigMap per namespace, one key per (lane, agent)
    def circuits(self, namespace: str) -> dict[str, dict[str, Any]]:
        """The namespace's circuit entries by key; the operator is their only writer, so after
        one read its own writes keep the copy in memory current."""
        cached = self.informer.get(CIRCUITS_KIND, namespace, CIRCUITS) if self.informer else None
        if cached is None:
            try:
                cached = _json(self.core.read_namespaced_config_map, CIRCUITS, namespace)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                cached = {"metadata": {"name": CIRCUITS, "namespace": namespace}, "data": {}}
            if self.informer is not None:
                self.informer.store(CIRCUITS_KIND, cached)
        return {key: json.loads(value) for key, value in (cached.get("data") or {}).items()}

    def save_circuits(self, namespace: str, changes: dict[str, dict[str, Any] | None]) -> None:
        """Write changed entries (None deletes one)."""
        if not changes:
            return
        data = {
            k: (json.dumps(v, sort_keys=True) if v is not None else None)
            for k, v in changes.items()
        }
        body: Any = {"data": data}
        try:
            saved = _json(self.core.patch_namespaced_config_map, CIRCUITS, namespace, body)
        except ApiException as exc:
            if exc.status != 404:
                raise
            self._create(
                self.core.create_namespaced_config_map,
                _own_configmap(CIRCUITS, namespace, "circuits"),
            )
            saved = _json(self.core.patch_namespaced_config_map, CIRCUITS, namespace, body)
        if self.informer is not None:
            self.informer.store(CIRCUITS_KIND, saved)

    # ---- finished jobs' stage durations: one ConfigMap per namespace (kube/durations.py)
    def durations(self, namespace: str) -> dict[str, str]:
        """The namespace's duration history by key; the operator is its only writer, so after
        one read its own writes keep the copy in memory current."""
        cached = self.informer.get(DURATIONS_KIND, namespace, DURATIONS) if self.informer else None
        if cached is None:
            try:
                cached = _json(self.core.read_namespaced_config_map, DURATIONS, namespace)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                cached = {"metadata": {"name": DURATIONS, "namespace": namespace}, "data": {}}
            if self.informer is not None:
                self.informer.store(DURATIONS_KIND, cached)
        return dict(cached.get("data") or {})

    def save_durations(self, namespace: str, data: dict[str, str | None]) -> None:
        """Write history entries (None deletes one)."""
        if not data:
            return
        body: Any = {"data": data}
        # The names stay literal at each call: the chart's RBAC is derived from them.
        try:
            saved = _json(self.core.patch_namespaced_config_map, DURATIONS, namespace, body)
        except ApiException as exc:
            if exc.status != 404:
                raise
            self._create(
                self.core.create_namespaced_config_map,
                _own_configmap(DURATIONS, namespace, "durations"),
            )
            saved = _json(self.core.patch_namespaced_config_map, DURATIONS, namespace, body)
        if self.informer is not None:
            self.informer.store(DURATIONS_KIND, saved)

    # ---- pods, claims and checkpoint records
    def job_pods(self, namespace: str, job: str, fresh: bool = False) -> dict[str, Any]:
        """The job's pods by name. `fresh`: from the API server now, whatever is cached."""
        labels = {LABEL_JOB: label_value(job)}
        if self.informer is None:
            pods = self._list_pods(namespace, f"{LABEL_JOB}={labels[LABEL_JOB]}")[0]
        elif fresh:
            listed, at = self._list_pods(namespace, f"{LABEL_JOB}={labels[LABEL_JOB]}")
            self.informer.resync(POD, namespace, listed, at, labels)
            pods = self.informer.select(POD, namespace, labels)
        else:
            self.informer.prime(POD, namespace, lambda: self._list_pods(namespace, LABEL_JOB))
            pods = self.informer.select(POD, namespace, labels)
        return {pod["metadata"]["name"]: pod for pod in pods}

    def _list_pods(self, namespace: str, selector: str) -> tuple[list[dict[str, Any]], int]:
        listing = _json(self.core.list_namespaced_pod, namespace, label_selector=selector)
        return list(listing.get("items") or []), _list_version(listing)

    def create_pod(self, body: dict[str, Any]) -> bool:
        """Create the pod; False if it already existed (an earlier pass created it)."""
        return self._create(self.core.create_namespaced_pod, body, POD)

    def delete_pod(self, namespace: str, name: str, grace_seconds: int | None = None) -> bool:
        """Delete a stage pod (its deadline passed, or its job is draining); False if gone."""
        try:
            _json(
                self.core.delete_namespaced_pod,
                name,
                namespace,
                grace_period_seconds=grace_seconds,
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def ensure_claim(self, body: dict[str, Any]) -> None:
        self._create(self.core.create_namespaced_persistent_volume_claim, body)

    def job_records(self, namespace: str, job: str) -> list[dict[str, Any]]:
        """The job's checkpoint records (immutable ConfigMaps)."""
        if self.informer is not None:
            self.informer.prime(
                RECORD, namespace, lambda: self._list_records(namespace, RECORD_SELECTOR)
            )
            return self.informer.select(RECORD, namespace, {LABEL_JOB: label_value(job)})
        selector = f"{LABEL_JOB}={label_value(job)},{RECORD_SELECTOR}"
        return self._list_records(namespace, selector)[0]

    def _list_records(self, namespace: str, selector: str) -> tuple[list[dict[str, Any]], int]:
        listing = _json(self.core.list_namespaced_config_map, namespace, label_selector=selector)
        return list(listing.get("items") or []), _list_version(listing)

    def create_record(self, body: dict[str, Any]) -> None:
        self._create(self.core.create_namespaced_config_map, body, RECORD)

    # ---- retention (spec.checkpoints.retain): records and the ConfigMap store's objects
    def list_configmaps(
        self, namespace: str, labels: str | None = None, fields: str | None = None
    ) -> list[dict[str, Any]]:
        """ConfigMaps by label and field selector, from the API server."""
        listing = _json(
            self.core.list_namespaced_config_map,
            namespace,
            label_selector=labels,
            field_selector=fields,
        )
        return list(listing.get("items") or [])

    def delete_configmap(self, namespace: str, name: str) -> None:
        """Delete a checkpoint record or store object; one already gone is no error."""
        try:
            _discard(self.core.delete_namespaced_config_map, name, namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise

    # ---- the leader election Lease (kube/leader.py). Its name is a flag, so the chart's Role
    # pins get and update to the name it passes; create cannot be pinned (RBAC's rule).
    def read_lease(
        self, namespace: str, name: str, timeout: float | None = None
    ) -> dict[str, Any] | None:
        try:
            return _json(
                self.coordination.read_namespaced_lease, name, namespace, _request_timeout=timeout
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def create_lease(
        self, body: dict[str, Any], timeout: float | None = None
    ) -> dict[str, Any] | None:
        """The created Lease; None on 409: another candidate created it first."""
        try:
            return _json(
                self.coordination.create_namespaced_lease,
                body["metadata"]["namespace"],
                body,
                _request_timeout=timeout,
            )
        except ApiException as exc:
            if exc.status == 409:
                return None
            raise

    def replace_lease(
        self, namespace: str, name: str, body: dict[str, Any], timeout: float | None = None
    ) -> dict[str, Any] | None:
        """The Lease as written; None on 409: it changed since `body`'s resourceVersion was
        read (optimistic concurrency: of two candidates writing the same version, one loses)."""
        try:
            return _json(
                self.coordination.replace_namespaced_lease,
                name,
                namespace,
                body,
                _request_timeout=timeout,
            )
        except ApiException as exc:
            if exc.status == 409:
                return None
            raise

    # ---- events
    def post_event(self, obj: dict[str, Any], event_type: str, reason: str, message: str) -> None:
        """A core/v1 Event on `obj`, shown by `kubectl describe`; failures are only logged."""
        meta = obj["metadata"]
        now = now_timestamp()
        body: Any = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": obj["apiVersion"],
                "kind": obj["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            "type": event_type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": COMPONENT,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            _json(self.core.create_namespaced_event, meta["namespace"], body)
        except ApiException as exc:
            log.warning("could not post event %s on %s: %s", reason, meta["name"], exc.reason)

    def _create(self, method: Any, body: dict[str, Any], kind: str | None = None) -> bool:
        try:
            created = _json(method, body["metadata"]["namespace"], body)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        if kind is not None and self.informer is not None:
            self.informer.store(kind, created)
        return True


def _own_configmap(name: str, namespace: str, component: str) -> dict[str, Any]:
    """An empty ConfigMap of the operator's own, labelled with what it holds."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": {LABEL_COMPONENT: component}},
        "data": {},
    }


def _json(method: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """A core API call's response body as the API's JSON: building the client's models and
    flattening them again cost seconds of CPU per LIST of a few hundred pods."""
    response = method(*args, _preload_content=False, **kwargs)
    body: dict[str, Any] = json.loads(response.data)
    return body


def _discard(method: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """A core API call whose answer is not needed: the ledger's PATCH answers with the whole
    ledger (up to 1 MiB), which is read off the connection in chunks and never parsed."""
    response = method(*args, _preload_content=False, **kwargs)
    response.drain_conn()
    response.release_conn()


def _list_version(listing: Mapping[str, Any]) -> int:
    """A LIST's resourceVersion as a number (0 when absent or opaque)."""
    version = (listing.get("metadata") or {}).get("resourceVersion")
    try:
        return int(version or 0)
    except ValueError:
        return 0


def merge_patched(target: Any, patch: Any) -> Any:
    """`target` after a JSON merge patch (RFC 7396): null deletes, maps merge, the rest replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patched(result.get(key), value)
    return result


def status_changes(new: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
    """Whether merge-patching `new` over `old` changes anything. A plain `!=` takes a null
    (which the patch deletes, so the stored status never holds it) for a change on every pass,
    and the object is patched, and an Event posted, forever."""
    return bool(merge_patched(old, new) != old)


def request_resource(url: str) -> str:
    """`https://host/apis/g/v/namespaces/ns/bakingjobs/job-1/status?x=y` -> `bakingjobs/status`:
    what a request was about, with names left out so the label stays bounded."""
    path = url.split("://", 1)[-1].partition("/")[2].partition("?")[0]
    parts = [p for p in path.split("/") if p]
    if "namespaces" in parts and len(parts) > parts.index("namespaces") + 2:
        parts = parts[parts.index("namespaces") + 2 :]  # plural[/name[/subresource]]
    else:
        parts = parts[2:] if parts[:1] == ["api"] else parts[3:]
    return "/".join(parts[:1] + parts[2:3])


def _count_requests(api_client: Any) -> None:
    """Count every request at the client (bakeline_api_requests_total), once per client."""
    if getattr(api_client, "_bakeline_counted", False):
        return
    send = api_client.call_api

    # kubernetes >= 32 calls call_api(method, url, ...), the url complete with names.
    def counted(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        API_REQUESTS.labels(method, request_resource(url)).inc()
        return send(method, url, *args, **kwargs)

    api_client.call_api = counted
    api_client._bakeline_counted = True
