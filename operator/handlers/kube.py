"""The API calls the operator makes, in one place: the verbs here are the verbs its RBAC needs.

Creation is idempotent (409 means an earlier pass, maybe before a restart, already did it), and
a missing object reads as None, so reconcilers can be re-run at any point.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from bakeline.api.common import GROUP, VERSION
from bakeline.handlers.clock import now_timestamp
from bakeline.metrics.collectors import API_REQUESTS
from bakeline.runtime.pods import LABEL_COMPONENT, LABEL_JOB, label_value

log = logging.getLogger("bakeline.kube")

PLURALS = {
    "BakingJob": "bakingjobs",
    "Workflow": "workflows",
    "Lane": "lanes",
    "SLOPolicy": "slopolicies",
}
COMPONENT = "bakeline-operator"
LEDGER = "bakeline-slo-ledger"


class Kube:
    """A thin, typed-enough wrapper over the kubernetes client for the operator's calls."""

    def __init__(self, api_client: Any) -> None:
        self.api_client = api_client
        _count_requests(api_client)
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    # ---- Bakeline objects
    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
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
        listing: Any = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURALS[kind]
        )
        return [dict(item) for item in listing.get("items", [])]

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
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURALS[kind], name, body
        )

    def list_lanes(self, namespace: str, label_selector: str | None) -> list[dict[str, Any]]:
        listing: Any = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, "lanes", label_selector=label_selector or ""
        )
        return [dict(item) for item in listing.get("items", [])]

    # ---- the SLO ledger: one ConfigMap per namespace, one key per finished job
    def record_outcome(self, namespace: str, key: str, entry: dict[str, Any]) -> None:
        """Store a finished job's outcome records; writing the same key again is harmless."""
        body: Any = {"data": {key: json.dumps(entry, sort_keys=True)}}
        try:
            self.core.patch_namespaced_config_map(LEDGER, namespace, body)
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
            self.core.patch_namespaced_config_map(LEDGER, namespace, body)

    def ledger(self, namespace: str) -> dict[str, dict[str, Any]]:
        try:
            cm: Any = self.core.read_namespaced_config_map(LEDGER, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return {}
            raise
        return {key: json.loads(value) for key, value in (cm.data or {}).items()}

    def prune_ledger(self, namespace: str, keys: list[str]) -> None:
        """Drop entries older than every window (a JSON merge patch deletes with null)."""
        if keys:
            body: Any = {"data": dict.fromkeys(keys)}
            self.core.patch_namespaced_config_map(LEDGER, namespace, body)

    # ---- pods, claims and checkpoint records
    def job_pods(self, namespace: str, job: str) -> dict[str, Any]:
        pods: Any = self.core.list_namespaced_pod(
            namespace, label_selector=f"{LABEL_JOB}={label_value(job)}"
        )
        return {pod.metadata.name: pod for pod in pods.items}

    def create_pod(self, body: dict[str, Any]) -> bool:
        """Create the pod; False if it already existed (an earlier pass created it)."""
        return self._create(self.core.create_namespaced_pod, body)

    def ensure_claim(self, body: dict[str, Any]) -> None:
        self._create(self.core.create_namespaced_persistent_volume_claim, body)

    def job_records(self, namespace: str, job: str) -> list[Any]:
        selector = f"{LABEL_JOB}={label_value(job)},{LABEL_COMPONENT}=checkpoint"
        return list(self.core.list_namespaced_config_map(namespace, label_selector=selector).items)

    def create_record(self, body: dict[str, Any]) -> None:
        self._create(self.core.create_namespaced_config_map, body)

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
            self.core.create_namespaced_event(meta["namespace"], body)
        except ApiException as exc:
            log.warning("could not post event %s on %s: %s", reason, meta["name"], exc.reason)

    @staticmethod
    def _create(method: Any, body: dict[str, Any]) -> bool:
        try:
            method(body["metadata"]["namespace"], body)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True


def _count_requests(api_client: Any) -> None:
    """Count every request at the client (bakeline_api_requests_total), once per client."""
    if getattr(api_client, "_bakeline_counted", False):
        return
    send = api_client.call_api

    def counted(resource_path: str, method: str, *args: Any, **kwargs: Any) -> Any:
        API_REQUESTS.labels(method).inc()
        return send(resource_path, method, *args, **kwargs)

    api_client.call_api = counted
    api_client._bakeline_counted = True
