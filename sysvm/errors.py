"""The one error type users see: a single line naming what is wrong."""


class SysvmError(Exception):
    """A user-facing failure. The message is one line; exit_code follows the caller's contract."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code
