"""Labels out, for data scientists: one row per labelled cell in slide coordinates (``hali export``)."""
