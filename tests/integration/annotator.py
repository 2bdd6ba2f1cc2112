"""The scripted annotator lives in ``bench/annotator.py`` (the end-to-end replay bench uses it too)."""

from bench.annotator import Annotator, LabelStudioServer, create_user, login, make_annotator

__all__ = ["Annotator", "LabelStudioServer", "create_user", "login", "make_annotator"]
