"""Ledger keys are valid ConfigMap data keys whatever the names, and never collide."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from bakeline.handlers.slo import MAX_LEDGER_KEY, ledger_key

NAME = st.from_regex(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", fullmatch=True)
DATA_KEY = re.compile(r"[-._a-zA-Z0-9]+")


def _job(name: str, uid: str = "0123456789abcdef") -> dict[str, object]:
    return {"metadata": {"name": name, "uid": uid}}


def test_short_names_stay_readable() -> None:
    assert ledger_key("standard", _job("digits")) == "standard.digits.01234567"


@given(lane=NAME, name=NAME)
def test_every_key_is_a_valid_configmap_data_key(lane: str, name: str) -> None:
    key = ledger_key(lane, _job(name))
    assert len(key) <= MAX_LEDGER_KEY and DATA_KEY.fullmatch(key)


def test_long_names_are_told_apart() -> None:
    long = "n" * 253
    keys = {ledger_key("standard", _job(long)), ledger_key("standard", _job(long[:-1] + "m"))}
    keys.add(ledger_key("standard", _job(long, uid="fedcba9876543210")))
    assert len(keys) == 3
