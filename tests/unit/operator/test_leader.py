"""Leader election (bakeline.kube.leader): the decisions on a fake clock, and candidates taking
turns on an in-memory Lease that answers 409 as the API server does."""

from __future__ import annotations

import argparse
import asyncio
import copy
import os
import threading
import time
from typing import Any

import pytest

from bakeline.cli.operator import election_config
from bakeline.kube.leader import (
    Action,
    ElectionConfig,
    LeaderElector,
    LeaseRecord,
    Observation,
    decide,
    expired,
    lease_body,
    lost,
    micro_time,
    observe,
)
from bakeline.metrics.collectors import LEADER


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.advance(seconds)
        await asyncio.sleep(0)


class FakeLeases:
    """One namespace's Leases with the API server's optimistic concurrency: a write must carry
    the resourceVersion it read, else 409 (here: None, as Kube answers it)."""

    def __init__(self) -> None:
        self.leases: dict[str, dict[str, Any]] = {}
        self.version = 0
        self.failing = False  # the API server unreachable
        self.writes: list[str] = []  # holder of each accepted write
        self.calls: list[str] = []  # every request, by verb

    def _check(self) -> None:
        if self.failing:
            raise ConnectionError("API server unreachable")

    def read_lease(self, namespace: str, name: str, timeout: float | None = None) -> Any:
        self.calls.append("get")
        self._check()
        lease = self.leases.get(name)
        return copy.deepcopy(lease) if lease else None

    def create_lease(self, body: dict[str, Any], timeout: float | None = None) -> Any:
        self.calls.append("create")
        self._check()
        name = body["metadata"]["name"]
        if name in self.leases:
            return None
        return self._store(name, body)

    def replace_lease(
        self, namespace: str, name: str, body: dict[str, Any], timeout: float | None = None
    ) -> Any:
        self.calls.append("update")
        self._check()
        current = self.leases.get(name)
        if (
            current is None
            or body["metadata"].get("resourceVersion") != (current["metadata"]["resourceVersion"])
        ):
            return None
        return self._store(name, body)

    def _store(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = str(self.version)
        self.leases[name] = stored
        self.writes.append(stored["spec"]["holderIdentity"])
        return copy.deepcopy(stored)

    def holder(self, name: str = "lease") -> str:
        return str(self.leases[name]["spec"]["holderIdentity"])


def settings(identity: str, **overrides: Any) -> ElectionConfig:
    values: dict[str, Any] = {
        "namespace": "ops",
        "name": "lease",
        "identity": identity,
        "lease_duration_s": 15,
        "renew_deadline_s": 10.0,
        "retry_period_s": 2.0,
    }
    return ElectionConfig(**{**values, **overrides})


def elector(
    leases: FakeLeases, clock: FakeClock, identity: str, watchdog: bool = False
) -> LeaderElector:
    return LeaderElector(
        leases,  # type: ignore[arg-type]  # Kube's four lease calls, in memory
        settings(identity),
        clock=clock,
        wall=lambda: 1.7e9 + clock.now,
        sleep=clock.sleep,
        watchdog=watchdog,
    )


def record(holder: str, duration: int = 15, renewed: str = "t1") -> LeaseRecord:
    return LeaseRecord(holder, duration, "t0", renewed, 0, resource_version="7")


# ---------------------------------------------------------------------------- pure decisions


def test_no_lease_is_created_and_ours_is_renewed() -> None:
    assert decide("a", None, 0.0) is Action.CREATE
    assert decide("a", Observation(record("a"), 0.0), 100.0) is Action.RENEW


def test_anothers_lease_is_waited_out_for_its_duration_from_when_we_saw_it_change() -> None:
    seen = observe(None, record("b"), now=100.0)
    assert decide("a", seen, 114.9) is Action.WAIT
    assert decide("a", seen, 115.0) is Action.TAKE_OVER
    # Read again unchanged: it goes on ageing from the first sighting.
    again = observe(seen, record("b"), now=110.0)
    assert again.seen_at == 100.0 and expired(again, 115.0)
    # Renewed meanwhile: the clock starts over, whatever time the holder wrote into it.
    renewed = observe(again, record("b", renewed="t2"), now=112.0)
    assert renewed.seen_at == 112.0
    assert decide("a", renewed, 126.9) is Action.WAIT
    assert decide("a", renewed, 127.0) is Action.TAKE_OVER


def test_a_new_resource_version_alone_is_no_renewal() -> None:
    seen = observe(None, record("b"), now=100.0)
    relabelled = LeaseRecord("b", 15, "t0", "t1", 0, resource_version="8")
    assert observe(seen, relabelled, now=110.0).seen_at == 100.0


def test_a_released_lease_is_free_at_once() -> None:
    released = Observation(record(""), seen_at=100.0)
    assert expired(released, 100.0)
    assert decide("a", released, 100.0) is Action.TAKE_OVER


def test_the_leader_is_lost_at_the_renew_deadline() -> None:
    assert not lost(renewed_at=100.0, now=109.9, renew_deadline_s=10.0)
    assert lost(renewed_at=100.0, now=110.0, renew_deadline_s=10.0)


def test_lease_bodies_carry_the_version_read_and_count_transitions() -> None:
    config = settings("a")
    created = lease_body(config, Action.CREATE, None, 1.7e9)
    assert created["spec"]["leaseTransitions"] == 0
    assert "resourceVersion" not in created["metadata"]
    assert created["spec"]["acquireTime"] == created["spec"]["renewTime"] == micro_time(1.7e9)
    taken = lease_body(config, Action.TAKE_OVER, record("b"), 1.7e9 + 20)
    assert taken["metadata"]["resourceVersion"] == "7"
    assert taken["spec"]["holderIdentity"] == "a"
    assert taken["spec"]["leaseTransitions"] == 1
    assert taken["spec"]["acquireTime"] == micro_time(1.7e9 + 20)
    renewed = lease_body(config, Action.RENEW, record("a"), 1.7e9 + 30)
    assert renewed["spec"]["acquireTime"] == "t0" and renewed["spec"]["leaseTransitions"] == 0
    assert renewed["spec"]["renewTime"] == "2023-11-14T22:13:50.000000Z"
    assert renewed["spec"]["leaseDurationSeconds"] == 15
    with pytest.raises(ValueError, match="another holds"):
        lease_body(config, Action.WAIT, record("b"), 0.0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lease_duration_s": 10}, "longer than the renew deadline"),
        ({"retry_period_s": 9.0}, "exceed"),
    ],
)
def test_unsound_settings_are_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        settings("a", **overrides)
    with pytest.raises(ValueError, match="identity"):
        settings("")


# ---------------------------------------------------------------------------- candidates


def test_one_leader_then_the_other_after_the_lease_expires() -> None:
    async def scenario() -> None:
        leases, clock = FakeLeases(), FakeClock()
        a, b = elector(leases, clock, "a"), elector(leases, clock, "b")
        await a.acquire()
        assert a.leading and leases.holder() == "a" and LEADER._value.get() == 1
        assert not b.looked  # its /healthz says 503 until it has looked once
        assert not b.try_acquire_or_renew()  # b sees a's fresh lease and waits
        assert b.looked
        assert a.try_acquire_or_renew() and a.last_action is Action.RENEW
        renewed_at = clock.now
        # a dies: b takes over once the record has not changed for 15 s, not sooner.
        clock.advance(14.0)
        assert not b.try_acquire_or_renew()
        clock.advance(0.9)  # b first saw a's last renewal at renewed_at
        assert not b.try_acquire_or_renew()
        clock.advance(0.1)
        assert clock.now - renewed_at == pytest.approx(15.0)
        assert b.try_acquire_or_renew() and b.last_action is Action.TAKE_OVER
        assert leases.holder() == "b"
        assert leases.leases["lease"]["spec"]["leaseTransitions"] == 1
        assert leases.writes == ["a", "a", "b"]

    asyncio.run(scenario())


def test_of_two_candidates_taking_over_at_once_the_api_server_admits_one() -> None:
    leases, clock = FakeLeases(), FakeClock()
    old = elector(leases, clock, "old")
    assert old.try_acquire_or_renew()
    a, b = elector(leases, clock, "a"), elector(leases, clock, "b")
    assert not a.try_acquire_or_renew() and not b.try_acquire_or_renew()
    clock.advance(15.0)
    # Both read the same expired version; a writes first, b's write with that version is 409.
    lease = leases.read_lease("ops", "lease")
    assert lease is not None
    stale = LeaseRecord.from_lease(lease)
    assert a.try_acquire_or_renew()
    written = leases.replace_lease(
        "ops", "lease", lease_body(b.config, Action.TAKE_OVER, stale, 0.0)
    )
    assert written is None
    # And b, reading afresh, sees a's new term and waits it out.
    assert not b.try_acquire_or_renew() and b.last_action is Action.WAIT
    assert leases.holder() == "a"


def test_a_leader_renews_with_one_request_and_reads_only_after_a_conflict() -> None:
    async def scenario() -> FakeLeases:
        leases, clock = FakeLeases(), FakeClock()
        a = elector(leases, clock, "a")
        await a.acquire()
        assert leases.calls == ["get", "create"]
        leases.calls.clear()
        assert a.try_acquire_or_renew()
        assert leases.calls == ["update"]  # at the version of its own last write
        # Changed behind its back (here: relabelled): the blind write is refused, it reads.
        leases.leases["lease"]["metadata"]["resourceVersion"] = "50"
        leases.calls.clear()
        assert a.try_acquire_or_renew() and a.last_action is Action.RENEW
        assert leases.calls == ["update", "get", "update"]
        return leases

    assert asyncio.run(scenario()).holder() == "a"


def test_two_candidates_creating_at_once_one_wins() -> None:
    leases, clock = FakeLeases(), FakeClock()
    a, b = elector(leases, clock, "a"), elector(leases, clock, "b")
    body = lease_body(b.config, Action.CREATE, None, 0.0)
    assert a.try_acquire_or_renew()
    assert leases.create_lease(body) is None  # b's create, a moment later: 409
    assert leases.holder() == "a"


def test_the_leader_stops_when_another_holds_the_lease() -> None:
    async def scenario() -> list[str]:
        leases, clock = FakeLeases(), FakeClock()
        a = elector(leases, clock, "a")
        await a.acquire()
        # Someone else wrote the Lease (a leader that thinks a expired: a must stop).
        lease = leases.leases["lease"]
        lease["spec"]["holderIdentity"] = "b"
        lease["metadata"]["resourceVersion"] = "99"
        reasons: list[str] = []
        await a.keep_leading(reasons.append)
        assert not a.leading and LEADER._value.get() == 0
        return reasons

    assert asyncio.run(scenario()) == ["the lease is now held by b"]


def test_the_leader_stops_at_the_renew_deadline_when_the_api_server_is_gone() -> None:
    async def scenario() -> tuple[list[str], float]:
        leases, clock = FakeLeases(), FakeClock()
        a = elector(leases, clock, "a")
        await a.acquire()
        assert a.renewed_at is not None
        renewed = a.renewed_at
        leases.failing = True
        reasons: list[str] = []
        await a.keep_leading(reasons.append)
        return reasons, clock.now - renewed

    reasons, after = asyncio.run(scenario())
    assert reasons == ["not renewed within 10s"]
    # It gave up no later than one retry period past the deadline, well before the 15 s after
    # which a standby may take over.
    assert 10.0 <= after <= 12.0


def test_a_leader_that_finds_the_lease_changed_hands_meanwhile_stops() -> None:
    async def scenario() -> list[str]:
        leases, clock = FakeLeases(), FakeClock()
        a = elector(leases, clock, "a")
        await a.acquire()
        # b led and released while a was stalled (a missed its own loss): a's next write is a
        # take-over, not a renewal, and a must not carry on as if it had led throughout.
        lease = leases.leases["lease"]
        lease["spec"]["holderIdentity"] = ""
        lease["spec"]["leaseTransitions"] = 2
        lease["metadata"]["resourceVersion"] = "98"
        reasons: list[str] = []
        await a.keep_leading(reasons.append)
        return reasons

    assert asyncio.run(scenario()) == ["the lease changed hands meanwhile"]


def test_the_watchdog_stops_a_leader_whose_loop_stalls() -> None:
    leases, clock = FakeLeases(), FakeClock()
    a = elector(leases, clock, "a", watchdog=True)
    stalled = threading.Event()
    reasons: list[str] = []

    async def stall(seconds: float) -> None:
        clock.advance(11.0)  # the deadline passes while the loop is blocked
        stalled.wait(5)  # blocks the event loop itself, as a busy loop would

    async def scenario() -> None:
        await a.acquire()
        a.sleep = stall
        await a.keep_leading(on_lost)

    def on_lost(reason: str) -> None:
        reasons.append(reason)
        stalled.set()

    runner = threading.Thread(target=lambda: asyncio.run(scenario()), daemon=True)
    started = time.monotonic()
    runner.start()
    assert stalled.wait(5), "the watchdog did not fire"
    assert time.monotonic() - started < 3
    assert reasons[0] == "renewals stalled past the renew deadline"
    runner.join(5)


# ---------------------------------------------------------------------------- flags


def _args(*namespaces: str, **flags: Any) -> argparse.Namespace:
    values = {
        "namespace": list(namespaces),
        "leader_elect": True,
        "leader_elect_resource_name": "bakeline-operator",
        "leader_elect_resource_namespace": None,
        "leader_elect_lease_duration": 15,
        "leader_elect_renew_deadline": 10.0,
        "leader_elect_retry_period": 2.0,
    }
    return argparse.Namespace(**{**values, **flags})


def test_flags_name_the_lease_and_its_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    monkeypatch.setenv("POD_NAME", "bakeline-7d9f-x2")
    assert election_config(_args("ml", leader_elect=False)) is None
    one = election_config(_args("ml"))
    assert one is not None
    assert (one.namespace, one.name, one.identity) == (
        "ml",
        "bakeline-operator",
        "bakeline-7d9f-x2",
    )
    with pytest.raises(SystemExit, match="leader-elect-resource-namespace"):
        election_config(_args("a", "b"))
    monkeypatch.setenv("POD_NAMESPACE", "ops")
    both = election_config(_args("a", "b", leader_elect_lease_duration=20))
    assert both is not None and both.namespace == "ops" and both.lease_duration_s == 20
    with pytest.raises(SystemExit, match="longer than the renew deadline"):
        election_config(_args("a", leader_elect_lease_duration=4))
    named = election_config(_args("a", leader_elect_resource_namespace="x"))
    assert named is not None and named.namespace == "x"


def test_without_a_pod_name_each_process_is_its_own_candidate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("POD_NAME", raising=False)
    config = election_config(_args("ml"))
    assert config is not None and config.identity.endswith(f"-{os.getpid()}")
