"""Chat-training and chat-eval data: tasks are lists of conversations, mixtures are YAML files that combine them.

common.py has Task and TaskMixture; each other module adapts one source (a Hub dataset, a JSONL file, a generator)
into a Task; mixture.py reads a mixture file into train/val TaskMixtures (and previews it), and names the generated
tasks for every command that takes one (GENERATED).
"""
