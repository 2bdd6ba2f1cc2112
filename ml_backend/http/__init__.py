"""The HTTP edge Label Studio calls: the Flask app (``/predict``, ``/webhook``, ...) and webhook parsing."""
