"""The one error tree of mlrollout.

Every error a user can meet derives from :class:`MlrolloutError` and carries the process exit code
the CLI uses for it (see DESIGN.md, "Exit codes"). The CLI prints ``str(error)`` on one line, then
``hint`` if there is one, and a traceback only with ``--debug``.

::

    MlrolloutError                      exit 1 unless a subclass says otherwise
    ├── UsageError                      2   bad command line (unknown rollout id, wrong flags)
    ├── PlanError                       4   the plan is invalid (carries every PlanIssue found)
    ├── NeedsHuman                      5   the tool cannot go on by itself
    │   ├── LeaseHeld                   5   another runner drives this endpoint
    │   ├── LeaseLost                   5   this runner's lease was taken over (fencing)
    │   ├── RolloutActive               5   another rollout of this store is active on the endpoint
    │   ├── EndpointOwned               5   a runner of another state store drives the endpoint
    │   ├── EndpointDrifted             5   the live endpoint no longer matches the journal
    │   ├── RollbackFailed              5   traffic could not be restored
    │   ├── StateCorrupt                5   the state store cannot be read
    │   └── StateLost                   5   the state store was deleted or replaced mid-run
    ├── ProviderError                   6   a provider call failed before any change
    │   ├── ProviderUnavailable         6   plugin missing or broken
    │   ├── ProviderAuthError           6
    │   └── ProviderThrottled           6   retries ran out on throttling
    └── StateUnavailable                6   the state store cannot be opened or written

    (any other exception)               70  a bug in mlrollout
"""

from __future__ import annotations

from dataclasses import dataclass


class ExitCode:
    """Process exit codes; CI pipelines depend on them."""

    OK = 0
    ROLLED_BACK = 1
    USAGE = 2
    WAITING = 3
    INVALID_PLAN = 4
    NEEDS_HUMAN = 5
    PROVIDER = 6
    BUG = 70


class MlrolloutError(Exception):
    """Base of every error mlrollout raises on purpose."""

    exit_code: int = ExitCode.ROLLED_BACK

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(MlrolloutError):
    exit_code = ExitCode.USAGE


@dataclass(frozen=True)
class PlanIssue:
    """One problem in a plan file, located as precisely as the YAML allows."""

    file: str
    line: int  # 1-based; 0 when unknown
    column: int  # 1-based; 0 when unknown
    path: str  # key path such as "strategy.steps[2].weight"; "" for the whole document
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}" if self.line else self.file
        key = f" {self.path}:" if self.path else ""
        return f"{where}:{key} {self.message}"


class PlanError(MlrolloutError):
    exit_code = ExitCode.INVALID_PLAN

    def __init__(self, issues: list[PlanIssue]) -> None:
        self.issues = list(issues)
        count = len(self.issues)
        head = str(self.issues[0]) if self.issues else "invalid plan"
        more = f" (and {count - 1} more)" if count > 1 else ""
        super().__init__(head + more)


class NeedsHuman(MlrolloutError):
    exit_code = ExitCode.NEEDS_HUMAN


class LeaseHeld(NeedsHuman):
    pass


class LeaseLost(NeedsHuman):
    pass


class RolloutActive(NeedsHuman):
    pass


class EndpointOwned(NeedsHuman):
    pass


class EndpointDrifted(NeedsHuman):
    pass


class RollbackFailed(NeedsHuman):
    pass


class StateCorrupt(NeedsHuman):
    pass


class StateLost(NeedsHuman):
    pass


class ProviderError(MlrolloutError):
    exit_code = ExitCode.PROVIDER


class ProviderUnavailable(ProviderError):
    pass


class ProviderRefused(ProviderError):
    """The platform refused a change before making any (a missing permission, a precondition
    the endpoint does not meet): a start refused so changed nothing."""


class ProviderAuthError(ProviderRefused):
    pass


class ProviderThrottled(ProviderError):
    pass


class StateUnavailable(MlrolloutError):
    exit_code = ExitCode.PROVIDER
