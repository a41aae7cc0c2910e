"""The expert annotation page: a local web page on which a materials scientist annotates micrographs.

One session is one annotator on one dataset of a workspace (``xaiflow annotate``): the page shows
the dataset's images one at a time in a stratified random order (:mod:`.session`), hides the true
label and every model output, and stores each submission (the class the expert would assign, a
confidence, the painted region that decided it, the time spent) with
:func:`xaiflow.annotations.write_annotation` in ``annotations/<dataset>``. The server
(:mod:`.server`) listens on the loopback interface only and every request needs the session's
token (or the basic-auth credentials of ``$XAIFLOW_ANNOTATE_AUTH_STRING``).
"""

from xaiflow.annotate.server import AnnotationServer
from xaiflow.annotate.session import AnnotationSession

__all__ = ["AnnotationServer", "AnnotationSession"]
