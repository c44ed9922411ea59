"""Benchmarks behind the design choices: each prints a Markdown table for docs/benchmarks.md."""
