"""Which XNAT credentials a notebook gets: the one place that decides it.

* A server XNAT launched gets what XNAT put in its launch options: an alias token the plugin
  minted for this launch (``DefaultUserOptionsService.getDefaultEnvironmentVariables``). The
  hooks pass it on untouched.
* A server started from the hub gets :func:`for_hub_server`: today the user's own alias
  token from ``auth_state`` (the one their login got). Giving each server a token of its own
  changes this function only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xnat_oauth.auth_state import XnatAuthState


@dataclass(frozen=True)
class NotebookCredentials:
    host: str
    user: str
    password: str = field(repr=False)

    def env(self) -> dict[str, str]:
        return {"XNAT_HOST": self.host, "XNAT_USER": self.user, "XNAT_PASS": self.password}


def for_hub_server(state: XnatAuthState, settings) -> NotebookCredentials:
    """The XNAT credentials of a server started from the hub (``state.token`` is set)."""
    if state.token is None:
        raise ValueError("a hub-started server needs the user's XNAT token")
    return NotebookCredentials(
        host=settings.notebook_xnat_url or state.url,
        user=state.token.alias,
        password=state.token.secret,
    )
