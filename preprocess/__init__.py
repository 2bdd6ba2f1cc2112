"""Slide -> nuclei -> tiles -> embeddings -> Label Studio tasks. Entry point: :func:`preprocess.run.run_preprocess`."""
