"""The DICOM node: receive CT, analyze every completed series, write SR and index, forward, query.

One module per concern:

- :mod:`dicom_node.config` — ``config.yaml``, every option documented and validated at start-up;
- :mod:`dicom_node.index` — the SQLAlchemy models of the sidecar index and its sessions;
- :mod:`dicom_node.storage` — durable files at server-chosen paths;
- :mod:`dicom_node.receive` — C-ECHO and C-STORE handlers;
- :mod:`dicom_node.series_tracking` — quiet-time completion, persisted and recomputed at start;
- :mod:`dicom_node.analysis_worker` — the bounded pool that calls :func:`model.api.analyze_series`;
- :mod:`dicom_node.sr` — the TID 1500 Structured Report;
- :mod:`dicom_node.forwarding` — the persistent C-STORE retry queue;
- :mod:`dicom_node.query` — C-FIND, C-MOVE and C-GET over the index;
- :mod:`dicom_node.security` — peers, permissions and TLS;
- :mod:`dicom_node.server` — wires them into one Application Entity;
- :mod:`dicom_node.cli` — ``bpr serve``, ``bpr index``, ``bpr reprocess`` and the model commands.

The model is reached through :func:`model.api.analyze_series` only.
"""

__version__ = "0.1.0"
