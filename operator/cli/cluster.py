"""The cluster-facing commands: `bakeline operator` and `bakeline rerun`, and the credentials
they and `bakeline fetch` use."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from bakeline.api.common import GROUP, VERSION
from bakeline.cli.operator import election_config, run_operator
from bakeline.handlers.config import OperatorConfig
from bakeline.runtime.pods import ANNOTATION_RERUN


def run_operator_command(args: argparse.Namespace) -> int:
    run_operator(
        namespaces=args.namespace,
        all_namespaces=args.all_namespaces,
        operator_config=OperatorConfig(
            image=args.image,
            slo_interval_s=args.slo_interval,
            max_running_jobs=args.max_running_jobs,
            export_max_bytes=args.export_max_bytes,
            service_account=args.stage_service_account or None,
        ),
        metrics_port=args.metrics_port or None,
        health_port=args.health_port or None,
        verbose=args.verbose,
        election=election_config(args),
    )
    return 0


def load_credentials(namespace: str | None) -> str:
    """Load KUBECONFIG (else in-cluster credentials); the namespace to use: the one given,
    else the context's, else `default`."""
    try:
        config.load_kube_config()
        _, context = config.list_kube_config_contexts()
        return namespace or context.get("context", {}).get("namespace") or "default"
    except config.ConfigException:
        config.load_incluster_config()
        return namespace or "default"


def rerun_job(job: str, stage: str, namespace: str | None) -> int:
    """Ask the operator to re-run `job` from `stage`: an annotation it acts on once."""
    namespace = load_credentials(namespace)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    body = {"metadata": {"annotations": {ANNOTATION_RERUN: f"{stage}@{stamp}"}}}
    try:
        client.CustomObjectsApi().patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "bakingjobs", job, body
        )
    except ApiException as exc:
        reason = "no such BakingJob" if exc.status == 404 else exc.reason
        print(f"bakeline rerun: {namespace}/{job}: {reason}", file=sys.stderr)
        return 1
    print(f"bakingjob {namespace}/{job}: rerun from {stage} requested")
    return 0
