"""HALI ML backend: Flask service for Label Studio, rq retrain jobs, and the learning core."""
