"""Training-data builders (SFT stages, self-distillation pairs, RL data)."""
