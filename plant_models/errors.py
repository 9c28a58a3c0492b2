"""The one exception hierarchy of bioimp.

It lives in the lowest layer so that every layer can raise and catch the same types. Each subclass also
derives from the matching builtin, so callers that only know Python's exceptions still catch them.
"""

from __future__ import annotations


class BioimpError(Exception):
    """Base of every error bioimp raises on purpose."""


class ModelError(BioimpError, ValueError):
    """A model specification is inconsistent, or a model name cannot be resolved."""


class ScenarioError(BioimpError, ValueError):
    """A scenario or other configuration file is invalid. The message names the offending key."""


class InputDataError(BioimpError, ValueError):
    """A user-supplied data file (inputs CSV, initial state) is malformed."""


class SolverFailed(BioimpError, RuntimeError):
    """A numerical solver did not return a usable solution."""


class ProtocolError(BioimpError, ValueError):
    """A wire-protocol message is malformed or a reply reports an error.

    Attributes:
        code: the protocol error code (``bad_request``, ``out_of_range``, ...).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class PlantTimeout(BioimpError, TimeoutError):
    """The plant did not answer within the allowed time."""


class ConformanceError(BioimpError, AssertionError):
    """A Plant does not behave as wire protocol v1 says (raised by ``twin.conformance.check_plant``)."""
