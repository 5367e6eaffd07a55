"""Stage pods that never ran their agent: which causes count, the backoff, the condition."""

from __future__ import annotations

import json
from typing import Any

from kubernetes.client.exceptions import ApiException

from bakeline.kube import blocked_pods
from bakeline.kube.clock import epoch

META = {"name": "j", "namespace": "ns", "generation": 1}


def _refused(status: int, message: str) -> ApiException:
    exc = ApiException(status=status, reason="Forbidden")
    exc.body = json.dumps({"message": message})
    return exc


def test_the_clusters_refusals_are_named_and_others_raised() -> None:
    quota = _refused(403, 'pods "j-import-1" is forbidden: exceeded quota: pods')
    assert blocked_pods.refusal(quota, "j-import-1") == (
        'pod j-import-1 refused: pods "j-import-1" is forbidden: exceeded quota: pods'
    )
    assert (
        blocked_pods.refusal(_refused(422, "denied by policy"), "p")
        == "pod p refused: denied by policy"
    )
    assert blocked_pods.refusal(_refused(500, "etcd away"), "p") is None
    assert blocked_pods.refusal(_refused(409, "exists"), "p") is None


def _failed_pod(message: str, reason: str = "CreateContainerConfigError") -> dict[str, Any]:
    terminated = {"exitCode": 128, "reason": reason, "message": message}
    return {
        "metadata": {"name": "j-import-1"},
        "status": {
            "phase": "Failed",
            "containerStatuses": [{"name": "agent", "state": {"terminated": terminated}}],
        },
    }


def test_a_missing_service_account_is_the_installations_and_a_missing_model_the_jobs() -> None:
    cause = blocked_pods.not_started(_failed_pod('serviceaccount "bakeline-stage" not found'))
    assert cause is not None and 'serviceaccount "bakeline-stage" not found' in cause
    assert blocked_pods.not_started(_failed_pod('configmaps "absent" not found')) is None
    assert blocked_pods.not_started(_failed_pod("exit 1", reason="Error")) is None


def test_the_backoff_grows_with_how_long_the_pods_have_been_blocked() -> None:
    assert blocked_pods.retry_delay(None, 100.0) == blocked_pods.RETRY_FIRST_S
    assert blocked_pods.retry_delay(100.0, 160.0) == 60.0
    assert blocked_pods.retry_delay(0.0, 10_000.0) == blocked_pods.RETRY_MAX_S


def test_block_then_unblock() -> None:
    status: dict[str, Any] = {}
    now = 1_800_000_000.0
    delay = blocked_pods.block(status, "pod p refused: quota", now, META)
    assert delay == blocked_pods.RETRY_FIRST_S
    [held] = status["conditions"]
    assert (held["type"], held["status"], held["reason"]) == (
        "StagePodsBlocked",
        "True",
        "PodNotStarted",
    )
    assert "quota" in held["message"] and "not counted against the agent" in held["message"]
    assert epoch(status[blocked_pods.RETRY_AT]) == now + delay
    assert blocked_pods.wait_seconds(status, now) == delay
    assert blocked_pods.wait_seconds(status, now + delay) is None
    blocked_pods.unblock(status, META)
    assert status["conditions"][0]["status"] == "False"
    assert status[blocked_pods.RETRY_AT] is None
