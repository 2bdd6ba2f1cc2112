"""The project manager's dashboard: figures from Label Studio's annotations, computed by the worker after each
retrain into a snapshot the server only reads.

- :mod:`metrics` (pure): labels per hour, suggestions kept per version, Cohen's kappa, progress.
- :mod:`snapshot` (pure): the snapshot dict, the learning curve from model sidecars, the description line.
- :mod:`coverage` (pure): a slide's coverage map as PNG bytes.
- :mod:`summary` (pure): headline figures for ``/metrics``, as JSON and Prometheus text.
- :mod:`page` (pure): the HTML page; :mod:`plots`: the PNG plots (matplotlib; the server loads it lazily).
- :mod:`store`: the files under ``<data dir>/projects/<p>/dashboard``; :mod:`publish`: the worker's step.
"""
