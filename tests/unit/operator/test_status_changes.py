"""A status write happens only when the merge patch would change what the API holds."""

from __future__ import annotations

from bakeline.kube.client import merge_patched, status_changes


def test_a_null_for_an_absent_field_is_no_change() -> None:
    # The waiting-job loop: queuePosition None is deleted by the patch, so never stored.
    stored = {"phase": "Pending", "conditions": [{"type": "Admitted", "status": "False"}]}
    assert not status_changes({**stored, "queuePosition": None}, stored)


def test_a_null_for_a_present_field_deletes_it() -> None:
    stored = {"phase": "Queued", "queuePosition": 3}
    assert status_changes({"phase": "Queued", "queuePosition": None}, stored)
    assert merge_patched(stored, {"queuePosition": None}) == {"phase": "Queued"}


def test_maps_merge_and_lists_replace() -> None:
    stored = {"result": {"a": 1, "b": 2}, "stages": [{"name": "x"}]}
    patched = merge_patched(stored, {"result": {"b": 3}, "stages": [{"name": "y"}]})
    assert patched == {"result": {"a": 1, "b": 3}, "stages": [{"name": "y"}]}
    assert not status_changes({"result": {"b": 2}}, stored)
    assert status_changes({"stages": []}, stored)
