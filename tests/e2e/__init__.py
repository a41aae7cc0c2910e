"""End-to-end tests on real processes (a package, so its conftest does not shadow tests/conftest.py)."""
