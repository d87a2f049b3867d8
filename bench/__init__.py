"""Benchmarks for routegate, and the fake providers they share with the tests."""
