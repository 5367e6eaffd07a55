"""Pydantic models of the four custom resources (spec + status) and CRD generation."""
