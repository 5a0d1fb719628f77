"""fedmed: federated, privacy-preserving training for hospitals.

The library core. The hospital node (``fedmed.clients``), the coordinator
(``fedmed.server``) and the de-identification stage (``fedmed.deid``) live in the
top-level folders ``clients/``, ``server/`` and ``deid/`` of the repository and are
installed under this package so no generic top-level name is ever imported.
"""

__version__ = "0.1.0"
