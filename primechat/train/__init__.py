"""Training stages: base pretraining (and later mid-training, SFT and RL), plus their shared checkpointing."""
