"""``hali preprocess --queue``: the rq jobs of the preprocessing step and their progress in Redis."""
