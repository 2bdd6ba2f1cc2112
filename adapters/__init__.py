"""Adapters shared by ``preprocess`` and ``ml_backend``: each wraps one I/O library and takes its client.

- :mod:`adapters.label_studio`  ``LabelStudioGateway`` (label-studio-sdk), with :mod:`adapters.retry`
- :mod:`adapters.storage`       local folders or S3 (boto3), with :mod:`adapters.atomic` for whole-file writes
- :mod:`adapters.slide_reader`  ``OpenSlideReader`` (openslide-python, Pillow for plain images)
- :mod:`adapters.settings`      the connection settings both packages share
- :mod:`adapters.errors`        the exception tree

Adapters import nothing of ``label_config``, ``preprocess`` or ``ml_backend`` (``tests/unit/test_layering.py``).
Adapters that only one step uses live with that step (``ml_backend/labels/redis_store.py``,
``preprocess/queue/``).
"""
