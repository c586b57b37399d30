"""Errors this library raises."""


class CommitterIsDeadError(RuntimeError):
    """The background committer stopped: no offset would be committed any more."""


class ConcurrentProcessingSetupError(RuntimeError):
    """A subscriber or the app is wired in a way that would lose or duplicate messages."""
