"""Model -> suggestions: the cell tables and embeddings a prediction reads, and the per-tile predictions."""
