"""Evaluation: tokenizer compression, bits per byte, and (later) CORE and chat benchmarks."""
