"""The DICOM node: receive CT, analyze every completed series, write SR and index, forward, query.

One module per concern; each rule of the node has one owner:

- :mod:`dicom_node.config` — ``config.yaml``, every option documented and validated at start-up;
- :mod:`dicom_node.config_operations` — the options of adaptation, backfill and the web view;
- :mod:`dicom_node.index` — the SQLAlchemy models of the sidecar index and its sessions;
- :mod:`dicom_node.storage` — durable files at server-chosen paths;
- :mod:`dicom_node.headers` — reading what peers send: instance headers, UIDs, identifier
  values, AE titles;
- :mod:`dicom_node.statuses` — every DIMSE status the node answers or reads, and what a
  peer's C-STORE status means for forwarding;
- :mod:`dicom_node.contexts` — the presentation contexts accepted and proposed;
- :mod:`dicom_node.application_entity` — the one factory of the node's AE, and its server;
- :mod:`dicom_node.ingest` — storing and indexing one instance;
- :mod:`dicom_node.receive` — C-ECHO and C-STORE handlers;
- :mod:`dicom_node.series_state` — the series state machine: every change of a series' state;
- :mod:`dicom_node.series_tracking` — quiet-time completion of series;
- :mod:`dicom_node.recovery` — start-up recovery of the storage and of the series;
- :mod:`dicom_node.analysis_worker` — the bounded pool that calls :func:`model.api.analyze_series`;
- :mod:`dicom_node.sr` — the TID 1500 Structured Report;
- :mod:`dicom_node.forwarding` — the persistent C-STORE retry queue;
- :mod:`dicom_node.forward_send` — sending one batch of that queue over one association;
- :mod:`dicom_node.matching` — DICOM attribute matching as SQL clauses;
- :mod:`dicom_node.query_identifier` — the Query/Retrieve keys and identifier parsing;
- :mod:`dicom_node.query_sql` — the SELECTs that answer C-FIND, C-MOVE and C-GET;
- :mod:`dicom_node.query` — the C-FIND, C-MOVE and C-GET handlers;
- :mod:`dicom_node.security` — peer permissions and TLS;
- :mod:`dicom_node.metrics` — the Prometheus metrics of a node process;
- :mod:`dicom_node.web` — the operator's HTTP view (health, metrics, series pages);
- :mod:`dicom_node.web_server` — serving it with uvicorn beside the DICOM port;
- :mod:`dicom_node.cluster` — node processes sharing one index: heartbeats, taking over the
  work of a process that died, the periodic sweep;
- :mod:`dicom_node.backfill` — fetching a peer's archive series by series (C-FIND, C-MOVE or
  C-GET), resumable;
- :mod:`dicom_node.model_versions` — the base model, adapted candidates and the active one;
- :mod:`dicom_node.adaptation` — adaptation runs on the node's series and their schedule;
- :mod:`dicom_node.server` — wires them into the running node;
- :mod:`dicom_node.commands` — the node's ``bpr`` commands (arguments only; the work below is
  imported when a command runs);
- :mod:`dicom_node.cli` — ``bpr serve`` and ``bpr index``;
- :mod:`dicom_node.reprocess_cli` — ``bpr reprocess``;
- :mod:`dicom_node.adapt_cli` — ``bpr adapt`` and ``bpr models``;
- :mod:`dicom_node.backfill_cli` — ``bpr backfill``.

The model is reached through :mod:`model.api` only.
"""

__version__ = "0.1.0"
