"""The end-to-end replay (``bench/bench_replay.py``): CoNSeP sources, the stack, the scripted annotator, the report."""
