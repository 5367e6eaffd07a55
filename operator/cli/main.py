"""The `bakeline` command."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import bakeline
from bakeline.contract import EXIT_INVALID_INPUT  # stdlib only: `bakeline stage` starts fast

# The rest is imported where used: `bakeline stage` starts in every stage pod.

# Lets tests and agent developers swap the agents (e.g. a checkout's `python -m ...`).
_AGENT_COMMAND_ENV = "BAKELINE_AGENT_COMMAND"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bakeline", description="Bake trained PyTorch models for deployment."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("version", help="print the version")
    run = commands.add_parser(
        "run",
        help="bake one BakingJob on this machine, without a cluster",
        description="Run a BakingJob's workflow stage by stage on this machine. Checkpoints, "
        "the cache and the run's state live in --workdir: run the same command again to "
        "resume an interrupted run, or to re-run a finished one from the cache.",
        epilog=f"Agents run as `bakeline-agent`; set {_AGENT_COMMAND_ENV} to use another "
        "command. Exit codes: 0 baked, 1 failed, 2 invalid input, 3 quality gate failed, "
        "130 interrupted.",
    )
    run.add_argument("file", type=Path, help="YAML with one BakingJob (and its Workflow, Lanes)")
    run.add_argument(
        "--workdir", type=Path, required=True, help="directory for checkpoints, state and report"
    )
    run.add_argument(
        "--from",
        dest="from_stage",
        metavar="STAGE",
        help="run this stage and every stage after it again, bypassing the cache for them",
    )
    run.add_argument(
        "--no-cache", action="store_true", help="run every stage, even when a result is cached"
    )
    run.add_argument(
        "--output",
        metavar="URI",
        help="deliver the package here instead of the job's spec.output: a folder (relative "
        "to the current directory), file:///DIR, s3://BUCKET/PREFIX or oci://REGISTRY/REPO[:TAG]",
    )
    digest = commands.add_parser(
        "digest",
        help="print the sha256 a job's model source needs (a file's, or a folder's)",
        description="Print the sha256 of each PATH as spec.model.source.url.sha256 takes it: "
        "a file's bytes; for a folder (a Hugging Face model directory) the sha256 of "
        "`sha256sum` lines ('<sha256>  <relative path>') over its files in byte order of path, "
        "names starting with '.' left out.",
    )
    digest.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    _add_cluster_commands(commands)
    return parser


def _digest(paths: Sequence[Path]) -> int:
    from bakeline.checkpoints.manifest import sha256_path

    for path in paths:
        if not path.exists():
            print(f"bakeline digest: {path} does not exist", file=sys.stderr)
            return EXIT_INVALID_INPUT
        print(f"{sha256_path(path)}  {path}")
    return 0


def _add_cluster_commands(commands: Any) -> None:
    operator = commands.add_parser(
        "operator",
        help="run the operator against the cluster in KUBECONFIG or in-cluster credentials",
        description="Reconcile Lanes, Workflows, BakingJobs and SLOPolicies; stop with SIGTERM. "
        "With --leader-elect, run as many replicas as you like: only the holder of a Lease "
        "reconciles, the others stand by and take over when it goes.",
    )
    scope = operator.add_mutually_exclusive_group(required=True)
    scope.add_argument(
        "--namespace", "-n", action="append", default=[], help="a namespace to watch (repeat)"
    )
    scope.add_argument("--all-namespaces", action="store_true", help="watch every namespace")
    operator.add_argument(
        "--image",
        default=os.environ.get("BAKELINE_AGENT_IMAGE", f"bakeline:{bakeline.__version__}"),
        help="image of the stage pods (a lane's stageDefaults.image overrides it)",
    )
    operator.add_argument(
        "--stage-service-account",
        default="bakeline-stage",
        help="ServiceAccount of stage pods; on ConfigMap lanes they store checkpoints with it "
        "(it needs create on configmaps; the chart makes it). Empty: the namespace default",
    )
    operator.add_argument("--metrics-port", type=int, default=8080, help="0 turns /metrics off")
    operator.add_argument("--health-port", type=int, default=8081, help="0 turns /healthz off")
    operator.add_argument(
        "--slo-interval", type=float, default=30.0, help="seconds between SLOPolicy evaluations"
    )
    operator.add_argument(
        "--max-running-jobs",
        type=int,
        default=None,
        metavar="N",
        help="at most N running jobs per namespace, all lanes together; when short, lanes with "
        "a higher spec.priority are served first (default: each lane's own limit only)",
    )
    operator.add_argument(
        "--export-max-bytes",
        type=int,
        default=64 * 1024 * 1024,  # OperatorConfig.export_max_bytes; main.py imports lightly
        metavar="BYTES",
        help="copy a Succeeded Volume-lane job's package of up to BYTES into ConfigMaps, so "
        "`bakeline fetch` works with the namespace's view role (0: never; default 64 MiB)",
    )
    operator.add_argument("--verbose", action="store_true", help="log every handler run")
    _add_leader_election(operator)
    rerun = commands.add_parser(
        "rerun",
        help="run a BakingJob again from a stage (in the cluster)",
        description="Annotate the job so the operator runs STAGE and every stage after it "
        "again, bypassing their cache; earlier stages keep their checkpoints.",
    )
    rerun.add_argument("job", help="the BakingJob's name")
    rerun.add_argument("--from", dest="from_stage", required=True, metavar="STAGE")
    rerun.add_argument("--namespace", "-n", default=None, help="default: the context's")
    fetch = commands.add_parser(
        "fetch",
        help="copy a finished BakingJob's package out of the cluster",
        description="Copy the package of a Succeeded BakingJob into a local folder, every "
        "file checked against the sha256 its checkpoint manifest records. Needs only what "
        "the namespace's view role grants.",
    )
    fetch.add_argument("job", help="the BakingJob's name")
    fetch.add_argument("--namespace", "-n", default=None, help="default: the context's")
    fetch.add_argument(
        "--to", type=Path, default=None, help="a folder that does not exist yet (default: ./JOB)"
    )
    fetch.add_argument(
        "--stage-service-account",
        default="bakeline-stage",
        help="ServiceAccount of the pod that copies a Volume lane's package out",
    )
    deliver = commands.add_parser(
        "deliver",
        help="(in delivery pods) send a package to an s3://, oci:// or folder output, once",
        description="Send a baked package (a checkpoint folder) where URI says; exit 0 "
        "delivered, 2 refused by the target (credentials, no such bucket), 1 worth trying "
        "again. Credentials come from the AWS variables or a Docker config.",
    )
    from bakeline.delivery.command import add_arguments

    add_arguments(deliver)
    stage = commands.add_parser(
        "stage",
        help="(in stage pods) run an agent and check its checkpoint; restore or store one",
        description="The commands of stage pods' containers. `-- AGENT...`: runs the agent and "
        "checks its checkpoint (Volume lanes), or hands its outcome to the store container "
        "(ConfigMap lanes). `restore`: restores the input checkpoint from the ConfigMap store; "
        "`store`: stores the agent's output once it has finished (both with the pod's token, "
        "which the agent's container never holds).",
    )
    stage.add_argument(
        "agent_command", nargs=argparse.REMAINDER, help="-- bakeline-agent ... | restore | store"
    )


def _add_leader_election(operator: argparse.ArgumentParser) -> None:
    """The flags kube-controller-manager names them by; defaults are client-go's
    (bakeline.kube.leader, not imported here: main.py imports lightly)."""
    election = operator.add_argument_group("leader election (a Lease)")
    election.add_argument(
        "--leader-elect",
        action="store_true",
        help="reconcile only while holding the Lease; exit (status 1) on losing it. Off: this "
        "process reconciles at once, and must be the only operator of its namespaces",
    )
    election.add_argument(
        "--leader-elect-resource-name",
        default="bakeline-operator",
        metavar="NAME",
        help="the Lease's name (default: bakeline-operator)",
    )
    election.add_argument(
        "--leader-elect-resource-namespace",
        default=None,
        metavar="NS",
        help="the Lease's namespace (default: $POD_NAMESPACE, else the one --namespace)",
    )
    election.add_argument(
        "--leader-elect-lease-duration",
        type=int,
        default=15,
        metavar="SECONDS",
        help="how long standbys wait after the leader's last renewal they saw (default 15)",
    )
    election.add_argument(
        "--leader-elect-renew-deadline",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long the leader tries to renew before it gives up and exits; shorter than "
        "the lease duration (default 10)",
    )
    election.add_argument(
        "--leader-elect-retry-period",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="between renewals, and between a standby's looks at the Lease (default 2)",
    )


def _cluster_command(args: argparse.Namespace) -> int:
    from bakeline.cli.cluster import rerun_job, run_operator_command

    if args.command == "operator":
        return run_operator_command(args)
    if args.command == "fetch":
        from bakeline.cli.fetch import fetch_command

        return fetch_command(args.job, args.namespace, args.to, args.stage_service_account)
    return rerun_job(args.job, args.from_stage, args.namespace)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(f"bakeline {bakeline.__version__}")
        return 0
    if args.command == "digest":
        return _digest(args.paths)
    if args.command in ("operator", "rerun", "fetch"):
        return _cluster_command(args)
    if args.command == "deliver":
        from bakeline.delivery.command import run as deliver_package

        return deliver_package(args)
    if args.command == "stage":
        from bakeline.stagepod.wrapper import run_stage

        given = list(args.agent_command)
        agent = given[1:] if given[:1] == ["--"] else given
        if not agent:
            print("bakeline stage: give the agent command after --", file=sys.stderr)
            return EXIT_INVALID_INPUT
        return run_stage(agent)
    from bakeline.cli.manifests import InputError, load_job_file, with_output
    from bakeline.cli.run import RunOptions, run_job

    command = tuple(shlex.split(os.environ.get(_AGENT_COMMAND_ENV, "bakeline-agent")))
    options = RunOptions(
        workdir=args.workdir.resolve(),
        from_stage=args.from_stage,
        use_cache=not args.no_cache,
        agent_command=command,
    )
    try:
        job_file = load_job_file(args.file)
        if args.output:
            job_file = with_output(job_file, args.output)
        return run_job(job_file, options, sys.stderr, sys.stdout)
    except InputError as exc:
        print(f"bakeline run: {exc}", file=sys.stderr)
        return EXIT_INVALID_INPUT


if __name__ == "__main__":
    sys.exit(main())
