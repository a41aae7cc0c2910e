"""Prefect flows around the xaiflow library. Thin by rule: each flow body calls library functions."""
