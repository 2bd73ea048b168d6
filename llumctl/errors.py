"""The one exception tree of llumctl.

Every error a user can cause or meet is a `LlumctlError`; foreign errors (httpx, paramiko,
vLLM, OS) are translated into one of these where they enter our code, so the CLI can map
each to a one-line message and an exit code, and the HTTP servers to a 4xx/5xx body.

    LlumctlError
    ├── ConfigError          bad cluster.toml / workload file / flag value (exit 2)
    ├── InputError           bad request or argument from a user or client (exit 2, HTTP 400)
    │   └── NotFoundError    unknown request, instance, model, host (HTTP 404)
    ├── AuthError            missing or wrong cluster secret (HTTP 401)
    ├── ConnectionFailed     a host, agent, controller or instance cannot be reached
    ├── ProvisionError       a bootstrap step failed on a host
    ├── EngineError          an engine failed to start or died
    │   └── InstanceDraining an instance takes no new requests (draining): try another
    └── MigrationError       a migration was refused or aborted; carries a named reason
"""

from __future__ import annotations


class LlumctlError(Exception):
    """Base of every error llumctl raises on purpose."""

    exit_code: int = 1
    http_status: int = 500


class ConfigError(LlumctlError):
    exit_code = 2
    http_status = 400


class InputError(LlumctlError):
    exit_code = 2
    http_status = 400


class NotFoundError(InputError):
    http_status = 404


class AuthError(LlumctlError):
    exit_code = 3
    http_status = 401


class ConnectionFailed(LlumctlError):
    exit_code = 4
    http_status = 502


class ProvisionError(LlumctlError):
    exit_code = 5


class EngineError(LlumctlError):
    exit_code = 6
    http_status = 503


class InstanceDraining(EngineError):
    """An instance refused a new request because it is draining. Not the caller's fault:
    the controller sends the request to another instance (`reason` lets it tell this
    refusal from other 503s)."""

    reason = "draining"


class MigrationError(LlumctlError):
    """A migration that did not commit. `reason` is a stable name (see MigrationAbort)."""

    http_status = 409

    def __init__(self, message: str, reason: str = "failed") -> None:
        super().__init__(message)
        self.reason = reason
