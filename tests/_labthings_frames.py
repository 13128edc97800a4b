"""The bytes of a test frame, shared by the LabThings-side scripts (run by LabThings' own Python) and
tests/test_labthings_interop.py, so each side can recompute what the other should have sent."""

from __future__ import annotations


def frame(label: str, size: int) -> bytes:
    """Deterministic bytes: the label, then a counter pattern, `size` bytes in all."""
    head = f"PNG:{label}:".encode()
    return head + bytes(i % 251 for i in range(max(0, size - len(head))))
