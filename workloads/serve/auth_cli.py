"""The authentication options the serve and edge commands share (the flags the operator passes)."""

from __future__ import annotations

from pathlib import Path

import typer

from neuraxis.workloads.serve.auth import AuthConfig, AuthMode, AuthSetupError, Gate, build_gate

AUTH_MODES: tuple[AuthMode, ...] = ("none", "apiKeys", "serviceAccountToken")

AUTH_MODE = typer.Option(
    "none",
    help="none, apiKeys (keys from --api-keys-dir) or serviceAccountToken (TokenReview).",
)
API_KEYS_DIR = typer.Option(
    None, help="apiKeys: folder of the mounted Secret, one file per key (file name = key id)."
)
TOKEN_AUDIENCE = typer.Option(None, help="serviceAccountToken: an accepted audience (repeat).")
ALLOWED_USER = typer.Option(
    None, help="serviceAccountToken: a username allowed to call (repeat; default any)."
)
RATE_LIMIT_RPS = typer.Option(None, min=0.001, help="Requests per second per caller (429 past).")
RATE_LIMIT_BURST = typer.Option(None, min=1, help="Token bucket size (default: the rate).")


def gate_from_options(
    mode: str,
    api_keys_dir: Path | None,
    audiences: list[str] | None,
    allowed_users: list[str] | None,
    rps: float | None,
    burst: int | None,
) -> Gate:
    """The gate the options ask for; exit code 2 with the reason when it cannot be set up."""
    if mode not in AUTH_MODES:
        typer.echo(
            f"error: --auth-mode {mode!r}: expected one of {', '.join(AUTH_MODES)}", err=True
        )
        raise typer.Exit(2)
    config = AuthConfig(
        mode=mode,  # checked just above
        api_keys_dir=api_keys_dir,
        audiences=tuple(audiences or ()),
        allowed_users=tuple(allowed_users or ()),
        rate_limit_rps=rps,
        rate_limit_burst=burst,
    )
    try:
        return build_gate(config)
    except AuthSetupError as exc:
        from neuraxis.workloads.result import report_refusal

        typer.echo(f"error: {exc.reason}: {exc}", err=True)
        report_refusal(exc.reason, str(exc))
        raise typer.Exit(2) from exc
