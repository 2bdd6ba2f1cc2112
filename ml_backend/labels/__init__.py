"""Labels: what annotators said about cells (``records``, pure) and the backend's Redis mirror of it (``redis_store``)."""
