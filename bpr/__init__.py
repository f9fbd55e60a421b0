"""The ``bpr`` command: the model's commands and the node's, composed in one parser.

Neither wing imports the other's command line: :mod:`model.cli` builds the parser and takes
extra commands, :mod:`dicom_node.commands` offers the node's (``serve``, ``index``,
``reprocess``, ``backfill``, ``adapt``, ``models``), whose work is imported only when one of
them runs. This package is the only place that knows both.
"""
