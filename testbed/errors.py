"""Error types that reach the user as one clear line (exit code 2), never a traceback."""


class UserError(Exception):
    """Bad input from the user: printed as one line, exit code 2, nothing started."""


class ConfigError(UserError):
    """A scenario or profile value that is not allowed.

    The message names the file, the field path and what is allowed, e.g.
    ``scenarios/x.yaml: fleet[2].profile: unknown profile 'rpi9' (allowed: laptop, rpi4, ...)``.
    """

    def __init__(self, source: str, path: str, problem: str):
        self.source, self.path, self.problem = source, path, problem
        where = f"{source}: {path}" if path else source
        super().__init__(f"{where}: {problem}")


class DataError(UserError):
    """Missing, corrupt or inconsistent speech data; the message names the file(s)."""
