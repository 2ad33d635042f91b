"""Code that runs in the training env (torch, transformers, LLaMA-Factory, TRL)."""
