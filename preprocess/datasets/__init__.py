"""Public labelled datasets read for training and benchmarks (CoNSeP)."""
