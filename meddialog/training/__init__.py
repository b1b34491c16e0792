"""Trainer setup, the training run shared by sft and grpo, launchers, SFT tokenisation, rewards."""
