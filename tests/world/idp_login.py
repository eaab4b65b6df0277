"""A scripted, browser-less login through the hub and the test world's OpenID provider.

Follows redirects by hand from the hub's login URL to the provider, fills in the
provider's dev login and consent forms, and stops at the first answer the hub gives
once the provider has sent the user back (the OAuth callback).
"""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import httpx

# What a browser sends on a top-level navigation; hubs may look at Sec-Fetch-*.
_NAVIGATE = {
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "Sec-Fetch-Mode": "navigate",
    "Sec-Fetch-Dest": "document",
    "Sec-Fetch-User": "?1",
    "Upgrade-Insecure-Requests": "1",
}


class IdpLoginError(AssertionError):
    """The login did not reach the hub's callback; ``response`` is the last answer seen."""

    def __init__(self, message: str, response: httpx.Response | None = None):
        super().__init__(message)
        self.response = response


class _Forms(HTMLParser):
    """Collects forms (action, method, inputs) and links of a simple HTML page."""

    def __init__(self):
        super().__init__()
        self.forms: list[dict] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(
                {"action": a.get("action", ""), "method": a.get("method", "get").lower(), "inputs": {}}
            )
        elif tag == "input" and self.forms and a.get("name"):
            self.forms[-1]["inputs"][a["name"]] = a.get("value", "")
        elif tag == "a" and a.get("href"):
            self.links.append(a["href"])


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _site_relation(previous: str | None, url: str) -> str:
    if previous is None:
        return "none"
    if _origin(previous) == _origin(url):
        return "same-origin"
    # Loopback ports differ but the site (scheme + host) is the same.
    return "same-site" if urlsplit(previous).hostname == urlsplit(url).hostname else "cross-site"


async def login_via_idp(
    client: httpx.AsyncClient,
    start_url: str,
    account_id: str,
    *,
    consent: bool = True,
    max_steps: int = 20,
    stop_before: str | None = None,
) -> httpx.Response:
    """Log ``account_id`` in, starting at the hub's ``/hub/oauth_login`` URL.

    ``client`` must not follow redirects and keeps the cookies of both hub and provider.
    With ``consent=False`` the consent screen is cancelled (the provider then sends
    ``error=access_denied`` to the hub). Returns the hub's answer to the callback: the
    first response from the start URL's origin after the flow has left it (a redirect
    into the hub on success, an error page otherwise). With ``stop_before`` (a URL
    prefix), returns instead the redirect whose target starts with it, unfollowed:
    for driving the provider with no hub behind the redirect URI. Raises
    ``IdpLoginError`` if the flow stalls anywhere else or takes more than ``max_steps``.
    """
    home = _origin(start_url)
    method, url, form = "GET", start_url, None
    previous: str | None = None
    left_home = False
    for _ in range(max_steps):
        headers = {**_NAVIGATE, "Sec-Fetch-Site": _site_relation(previous, url)}
        if method == "POST":
            headers["Origin"] = _origin(previous or url)
        response = await client.request(method, url, data=form, headers=headers)
        at_home = _origin(url) == home
        if at_home and left_home:
            return response
        left_home |= not at_home
        previous = url

        if response.is_redirect:
            target = urljoin(url, response.headers["location"])
            if stop_before is not None and target.startswith(stop_before):
                return response
            method, url, form = "GET", target, None
            continue
        if response.status_code != 200:
            raise IdpLoginError(f"stalled: {response.status_code} from {urlsplit(url).path}", response)
        method, url, form = _next_interaction(response, url, account_id, consent)
    raise IdpLoginError(f"no callback after {max_steps} steps")


def _next_interaction(
    response: httpx.Response, url: str, account_id: str, consent: bool
) -> tuple[str, str, dict | None]:
    """The request that answers the provider's login or consent page."""
    page = _Forms()
    page.feed(response.text)
    forms = [f for f in page.forms if f["method"] == "post" and "prompt" in f["inputs"]]
    if len(forms) != 1:
        raise IdpLoginError(f"no interaction form at {urlsplit(url).path}", response)
    form = forms[0]
    fields = dict(form["inputs"])
    prompt = fields["prompt"]
    if prompt == "login":
        # The dev login form takes any password; the login name selects the account.
        fields.update(login=account_id, password="any-password")
    elif prompt == "consent" and not consent:
        aborts = [link for link in page.links if link.rstrip("/").endswith("/abort")]
        if not aborts:
            raise IdpLoginError("no cancel link on the consent page", response)
        return "GET", urljoin(url, aborts[0]), None
    elif prompt != "consent":
        raise IdpLoginError(f"unknown prompt {prompt!r}", response)
    return "POST", urljoin(url, form["action"]), fields
