"""The evaluation's one error type: its inputs cannot give a result (a missing or unfitting checkpoint, an unknown
method, a store that is not prepared); the CLI prints its message on one line."""


class EvaluationError(ValueError):
    """The evaluation cannot run with these inputs (a missing or unfitting checkpoint, an unknown method)."""
