"""The retrain job: labels -> model -> suggestions and queue order, pushed to Label Studio (``run_retrain``)."""
