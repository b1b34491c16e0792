"""Loading models (base + adapters), precision, merging adapters, generation."""
