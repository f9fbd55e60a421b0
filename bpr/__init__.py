"""The ``bpr`` command: the model's commands and the node's, composed in one parser.

Neither wing imports the other's command line: :mod:`model.cli` builds the parser and takes
extra commands, :mod:`dicom_node.cli` offers ``serve``, ``index`` and ``reprocess``. This
package is the only place that knows both.
"""
