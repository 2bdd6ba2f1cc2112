"""Developer scripts: the dev stack (``stack.py``) and the demo slide (``demo_slide.py``)."""
