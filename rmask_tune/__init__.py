"""rmask-tune: learning-rate search for Random Masking parameter-efficient fine-tuning."""

__version__ = "0.1.0"
