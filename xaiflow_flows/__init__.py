"""Prefect flows around the xaiflow library. Thin by rule: each flow body calls library functions.

Importing the package imports the plugin modules named in ``$XAIFLOW_PLUGINS``
(:func:`xaiflow.plugins.load_plugins`), so served deployments know a lab's own plugins.
"""

from xaiflow.plugins import load_plugins

load_plugins()
