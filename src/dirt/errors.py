"""Exceptions with messages a user can act on."""


class DirtError(Exception):
    """Base of every error dirt reports to a user."""


class ConfigError(DirtError):
    """dirt.toml, an environment variable or a flag is wrong."""


class ProjectNotFoundError(DirtError):
    """No dirt.toml above the working directory and none named."""


class ProjectExistsError(DirtError):
    """`dirt create` refuses to touch an existing folder."""


class SubmissionError(DirtError):
    """A submission was rejected whole; `problems` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"submission rejected, nothing was stored:\n{lines}")


class InputError(DirtError):
    """A value that names or locates something (a page cursor, a node address, a token name, a
    project name) is malformed. Nothing was changed."""


class RequirementError(DirtError):
    """A `requires` expression does not parse."""


class NotFoundError(DirtError):
    """A record, task, node or attachment does not exist."""


class NodeError(DirtError):
    """A node could not be reached or probed."""


class StateError(DirtError):
    """An operation does not apply to an object in its current state."""


class StoreUnavailableError(DirtError):
    """The store cannot be reached (PostgreSQL restarting, the connection dropped, a SQLite
    file locked past the busy timeout). Try again later: a write that failed this way either
    committed whole or not at all, and the dispatcher's writes are safe to repeat."""


class TakenOverError(DirtError):
    """This dispatcher's lease ran out and another master took over what it held."""


class UnauthorizedError(DirtError):
    """A credential is unknown, revoked or expired (an agent's job token)."""
