"""xaiflow: what did the network learn from these micrographs?

The library is pure (no Prefect import): ingest micrographs into a Zarr workspace, train
CNNs, compute and evaluate attributions on Dask. Prefect flows live in ``xaiflow_flows/``.
"""

__version__ = "0.1.0"

from xaiflow.saliency import open_saliency  # noqa: E402
from xaiflow.store import open_group, open_workspace  # noqa: E402

__all__ = ["__version__", "open_workspace", "open_group", "open_saliency"]
