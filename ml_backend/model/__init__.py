"""Labels -> model: the classifier head, its training, and the versioned model files."""
