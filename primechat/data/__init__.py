"""Pretraining data: the shard format, Hub downloads, your own text, and the offline demo corpus."""
