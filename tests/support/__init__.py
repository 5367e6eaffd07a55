"""Test support: helpers for the real control plane and the node harness (test code only)."""
