"""The audit log: one structured line per login, logout, refresh, spawn decision and token renewal.

Each line says what was decided (``event``, ``outcome``, ``reason``), about whom (``user``: the
hub user, named as in XNAT, once XNAT or the hub knows it; ``sub`` for an OpenID subject XNAT
never named; ``username_id`` for a password login, the throttle's id of what was typed in the
username field, never the text itself), how (``method``, ``provider``, ``launch``), and from
where (``address``: the client as trusted proxies saw it). The fields are a fixed list
(:data:`FIELDS`): nothing else can be written, so no token, secret, password or authorization
code can reach a line.

Two formats, ``c.XnatOAuthenticator.audit_log_format``:

* ``text``: ``event=login outcome=refused reason=bad_password method=password provider=password
  username_id=3f9a0c1d2e4b address=192.0.2.7`` (a value with anything but letters, digits and
  ``_.:@/+-`` is JSON-quoted, so a line is one line and splits unambiguously);
* ``json``: one JSON object per line, with ``time`` (UTC, ISO 8601) first.

Lines go to the logger ``xnat_oauth.audit`` at INFO. Unless the site routes that logger itself
(``c.JupyterHub.logging_config``, see ``docs/operations.md``), the authenticator sends its lines
into the hub's own log, with the hub's prefix.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime, timezone

from traitlets import CaselessStrEnum, HasTraits, observe

LOGGER_NAME = "xnat_oauth.audit"
log = logging.getLogger(LOGGER_NAME)

FORMATS = ("text", "json")
EVENTS = ("login", "logout", "refresh", "spawn", "renewal")
#: every field a line may carry, in the order they are written
FIELDS = (
    "event",
    "outcome",
    "reason",
    "user",
    "server",
    "method",
    "provider",
    "launch",
    "sub",
    "username_id",
    "throttle",
    "address",
)

_BARE = re.compile(r"[A-Za-z0-9_.:@/+-]{1,200}")
_format = "text"


class AuditSettings(HasTraits):
    """The audit log's setting, for the authenticator to inherit (``c.XnatOAuthenticator.*``)."""

    audit_log_format = CaselessStrEnum(
        list(FORMATS),
        default_value="text",
        config=True,
        help="""Format of the audit log, one line per login, logout, auth refresh, spawn decision
        and token renewal on the logger ``xnat_oauth.audit``: ``"text"`` (``key=value`` pairs) or
        ``"json"`` (one JSON object per line, with a UTC ``time``). Without a handler of its own
        (``c.JupyterHub.logging_config``) the lines go into the hub's log. No line ever holds a
        token, secret, password or authorization code, nor what was typed in the username field
        of a refused password login (its throttle id instead). See docs/operations.md.""",
    )

    @observe("audit_log_format")
    def _audit_log_format_changed(self, change):
        set_format(change.new)


def set_format(fmt: str) -> None:
    global _format
    fmt = (fmt or "").lower()
    if fmt not in FORMATS:
        raise ValueError(f"audit_log_format must be one of {FORMATS}, not {fmt!r}")
    _format = fmt


def current_format() -> str:
    return _format


class IntoHubLog(logging.Handler):
    """Hands audit records to the hub's logger, so they are written with the hub's handlers."""

    def __init__(self, target: logging.Logger):
        super().__init__()
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        self.target.handle(record)


def route_into(hub_log: logging.Logger | logging.LoggerAdapter) -> bool:
    """Send the audit lines into ``hub_log`` unless the site routed ``xnat_oauth.audit`` itself
    (a handler of its own, or ``propagate`` off without one of ours). True if they now go to
    ``hub_log``."""
    target = hub_log.logger if isinstance(hub_log, logging.LoggerAdapter) else hub_log
    ours = [h for h in log.handlers if isinstance(h, IntoHubLog)]
    if len(ours) != len(log.handlers) or (not ours and not log.propagate):
        return False  # the site's logging_config decides
    for h in ours:
        log.removeHandler(h)
    log.addHandler(IntoHubLog(target))
    # once in the hub's log, not again through a handler the site put on the root logger
    log.propagate = False
    if log.level == logging.NOTSET:
        # JupyterHub configures only its own logger: left alone, this one would inherit the
        # root logger's WARNING and drop every line
        log.setLevel(logging.INFO)
    return True


def _text_value(value: str) -> str:
    return value if _BARE.fullmatch(value) else json.dumps(value)


def format_line(fields: dict[str, str], fmt: str | None = None) -> str:
    """One audit line of ``fields`` (already in :data:`FIELDS` order) in ``fmt``."""
    if (fmt or _format) == "json":
        stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return json.dumps({"time": stamp, **fields}, separators=(",", ":"))
    return " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())


def emit(event: str, outcome: str, **fields: object) -> None:
    """Write one audit line. Fields that are None are left out; an unknown field is a bug."""
    unknown = set(fields) - set(FIELDS)
    if unknown or event not in EVENTS:
        raise TypeError(f"not an audit line: event {event!r}, fields {sorted(unknown)}")
    if not log.isEnabledFor(logging.INFO):
        return
    given = {"event": event, "outcome": outcome, **fields}
    line = {k: str(given[k]) for k in FIELDS if given.get(k) is not None}
    log.info("%s", format_line(line), extra={"xnat_oauth_audit": line})
