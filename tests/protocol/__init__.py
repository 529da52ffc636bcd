"""Tests for hutch.protocol (wire pieces without I/O)."""
