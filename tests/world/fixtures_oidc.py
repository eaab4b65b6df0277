"""Fixtures; filled in by the test-world work."""
