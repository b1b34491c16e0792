"""The trained model leaving the repository: merged export, model card, parity check, GGUF."""
