"""MedDialog pipeline stages: one module per DVC stage, plus small shared modules."""
