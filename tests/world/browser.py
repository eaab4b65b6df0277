"""A browser-like HTTP driver for the hub: cookies, ``_xsrf``, redirects by hand, fetch metadata.

JupyterHub only sets its ``_xsrf`` cookie on requests that look like navigation
(``Sec-Fetch-Mode: navigate``) and checks it on every cookie-authenticated POST, so a plain
HTTP client cannot log in the way a user does. This one can. It refuses to send anything
off loopback, so a misconfigured redirect (to a real IdP, say) fails the test instead of
leaving the machine.
"""

from __future__ import annotations

import ssl
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

#: one SSL context for every test client: building one costs ~24 ms of CPU per client
SHARED_SSL_CONTEXT = ssl.create_default_context()

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})

# Headers Chromium sends on a top-level navigation; the anonymous _xsrf id hashes the User-Agent.
_NAVIGATE_HEADERS = {
    "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) xnat-oauth-test-browser/1.0",
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "Sec-Fetch-Mode": "navigate",
    "Sec-Fetch-Dest": "document",
    "Sec-Fetch-User": "?1",
}

_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})


class OffLoopbackError(AssertionError):
    """The driver was asked to send a request to a host other than loopback."""


class TooManyRedirects(AssertionError):
    """A redirect chain did not end within ``max_steps``."""


class Form:
    """One ``<form>`` of a page: where it posts, and its named inputs with their values."""

    def __init__(self, action: str | None, method: str, attrs: dict[str, str]):
        self.action = action
        self.method = method
        self.attrs = attrs
        #: every named input/select/textarea (buttons excluded), value "" when absent
        self.fields: dict[str, str] = {}
        #: the ``type`` of each field, to tell hidden inputs from visible ones
        self.types: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"Form(action={self.action!r}, fields={sorted(self.fields)})"


class _PageParser(HTMLParser):
    """Collects forms and the text of elements carrying a given class."""

    def __init__(self, text_class: str | None = None):
        super().__init__(convert_charrefs=True)
        self.forms: list[Form] = []
        self._form: Form | None = None
        self._text_class = text_class
        self._text_depth = 0
        self._text_tag: str | None = None
        self.texts: list[str] = []
        self._buf: list[str] = []

    def handle_starttag(self, tag: str, attrs_list: list) -> None:
        attrs = {k: (v or "") for k, v in attrs_list}
        if tag == "form":
            self._form = Form(attrs.get("action"), attrs.get("method", "get").lower(), attrs)
            self.forms.append(self._form)
        elif tag in ("input", "select", "textarea") and self._form is not None and attrs.get("name"):
            kind = attrs.get("type", "text").lower() if tag == "input" else tag
            if kind in ("submit", "button", "image", "reset"):
                pass
            elif kind in ("checkbox", "radio") and "checked" not in attrs:
                pass
            else:
                self._form.fields[attrs["name"]] = attrs.get("value", "")
                self._form.types[attrs["name"]] = kind
        if self._text_tag is not None:
            if tag == self._text_tag:
                self._text_depth += 1
        elif self._text_class and self._text_class in attrs.get("class", "").split():
            self._text_tag, self._text_depth, self._buf = tag, 1, []

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None
        if self._text_tag == tag:
            self._text_depth -= 1
            if self._text_depth == 0:
                self.texts.append(" ".join("".join(self._buf).split()))
                self._text_tag = None

    def handle_data(self, data: str) -> None:
        if self._text_tag is not None:
            self._buf.append(data)


def parse_forms(html: str) -> list[Form]:
    """Every form of an HTML page, in document order."""
    parser = _PageParser()
    parser.feed(html)
    parser.close()
    return parser.forms


def _check_loopback(request: httpx.Request) -> None:
    if request.url.host not in LOOPBACK_HOSTS:
        raise OffLoopbackError(f"test browser refused a request to {request.url.host!r}")


class HubBrowser:
    """Drives the hub the way a browser does: cookies, _xsrf, manual redirects, Sec-Fetch-Mode: navigate.

    ``base_url`` is the hub's public URL (``HubProcess.url``, with any ``base_url`` prefix);
    hub pages live under ``base_url + "/hub/"``. Relative URLs given to ``get`` and
    ``post_form`` resolve against ``base_url``.
    """

    def __init__(self, base_url: str, *, source_address: str | None = None):
        """``source_address``: another loopback address to connect from (``127.0.0.2``), for a
        client the hub must not take for its own proxy."""
        self.base_url = base_url.rstrip("/")
        self.hub_url = self.base_url + "/hub"

        async def _hook(request: httpx.Request) -> None:
            _check_loopback(request)

        transport = None
        if source_address is not None:
            if not source_address.startswith("127."):
                raise ValueError("the test browser connects from loopback only")
            transport = httpx.AsyncHTTPTransport(local_address=source_address, verify=SHARED_SSL_CONTEXT)
        self.client = httpx.AsyncClient(
            transport=transport,
            follow_redirects=False,
            trust_env=False,
            verify=SHARED_SSL_CONTEXT,
            timeout=30.0,
            headers=_NAVIGATE_HEADERS,
            event_hooks={"request": [_hook]},
        )

    async def __aenter__(self) -> HubBrowser:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client (its connections and cookie jar)."""
        await self.client.aclose()

    def _abs(self, url: str | httpx.URL) -> str:
        url = str(url)
        if url.startswith(("http://", "https://")):
            return url
        if url.startswith("/"):
            # an absolute path is relative to the server root, like in a browser
            parts = urlsplit(self.base_url)
            return f"{parts.scheme}://{parts.netloc}{url}"
        return f"{self.base_url}/{url}"

    def _site_headers(self, url: str, referer: str | None) -> dict[str, str]:
        if referer is None:
            return {"Sec-Fetch-Site": "none"}
        same = urlsplit(referer)[:2] == urlsplit(url)[:2]
        headers = {"Sec-Fetch-Site": "same-origin" if same else "cross-site", "Referer": referer}
        return headers

    async def get(self, url: str | httpx.URL, *, referer: str | None = None, **kw: Any) -> httpx.Response:
        """One navigation GET, redirects not followed."""
        url = self._abs(url)
        headers = {**self._site_headers(url, referer), **kw.pop("headers", {})}
        return await self.client.get(url, headers=headers, **kw)

    def xsrf_cookie(self, url: str | httpx.URL | None = None) -> str | None:
        """The ``_xsrf`` cookie a browser would send to ``url``: the one with the longest matching path."""
        target = urlsplit(self._abs(url or self.hub_url + "/"))
        best: tuple[int, str] | None = None
        for cookie in self.client.cookies.jar:
            if cookie.name != "_xsrf" or cookie.value is None:
                continue
            path = cookie.path or "/"
            if not target.path.startswith(path.rstrip("/") + "/") and target.path != path.rstrip("/"):
                continue
            if best is None or len(path) > best[0]:
                best = (len(path), cookie.value)
        return best[1] if best else None

    async def post_form(
        self, url: str | httpx.URL, data: dict[str, str], *, referer: str | None = None, **kw: Any
    ) -> httpx.Response:
        """POST a form (urlencoded) the way a page of the same origin does, redirects not followed.

        Adds ``_xsrf`` from the cookie when ``data`` lacks it (a page's hidden field holds the same value).
        """
        url = self._abs(url)
        data = dict(data)
        if "_xsrf" not in data:
            token = self.xsrf_cookie(url)
            if token is not None:
                data["_xsrf"] = token
        parts = urlsplit(url)
        headers = {
            **self._site_headers(url, referer or url),
            "Origin": f"{parts.scheme}://{parts.netloc}",
            **kw.pop("headers", {}),
        }
        return await self.client.post(url, data=data, headers=headers, **kw)

    async def follow(
        self, resp: httpx.Response, *, max_steps: int = 20, stay_within: str | None = None
    ) -> httpx.Response:
        """Follow redirects by hand from ``resp``, at most ``max_steps`` hops.

        Stops (returning the redirect itself) before leaving ``stay_within`` (a URL prefix).
        303, and 301/302 after a POST, become GETs; 307/308 repeat the method and body.
        """
        for _ in range(max_steps):
            if resp.status_code not in _REDIRECT_CODES or "location" not in resp.headers:
                return resp
            target = urljoin(str(resp.request.url), resp.headers["location"])
            if stay_within is not None and not target.startswith(stay_within):
                return resp
            referer = str(resp.request.url)
            method = resp.request.method
            if resp.status_code in (307, 308) and method != "GET":
                headers = {**self._site_headers(target, referer)}
                if "content-type" in resp.request.headers:
                    headers["Content-Type"] = resp.request.headers["content-type"]
                resp = await self.client.request(
                    method, target, content=resp.request.content, headers=headers
                )
            else:
                resp = await self.get(target, referer=referer)
        if resp.status_code in _REDIRECT_CODES:
            raise TooManyRedirects(f"still redirecting after {max_steps} steps, at {resp.request.url}")
        return resp

    async def login_page(self, *, next_url: str | None = None) -> tuple[httpx.Response, str]:
        """GET ``/hub/login`` (no redirects followed) and return (response, html)."""
        params = {"next": next_url} if next_url else None
        resp = await self.get(self.hub_url + "/login", params=params)
        return resp, resp.text

    def find_password_form(self, html: str, page_url: str) -> tuple[str, Form]:
        """The form posting to this hub's ``/hub/login`` with username and password fields, and its absolute action."""
        login_path = urlsplit(self.hub_url + "/login").path
        for form in parse_forms(html):
            action = urljoin(page_url, form.action or page_url)
            if (
                form.method == "post"
                and urlsplit(action).path == login_path
                and urlsplit(action)[:2] == urlsplit(self.base_url)[:2]
                and "username" in form.fields
                and "password" in form.fields
            ):
                return action, form
        raise AssertionError(f"no password form posting to {login_path} on the login page")

    async def password_login(
        self, username: str, password: str, *, next_url: str | None = None
    ) -> httpx.Response:
        """Log in through the login page's password form; returns the POST's response.

        302 on success; the hub's error page (403, 429, 503...) on failure.
        """
        page, html = await self.login_page(next_url=next_url)
        if page.status_code != 200:
            raise AssertionError(f"login page answered {page.status_code}")
        action, form = self.find_password_form(html, str(page.url))
        data = {**form.fields, "username": username, "password": password}
        return await self.post_form(action, data, referer=str(page.url))

    async def home(self) -> httpx.Response:
        """GET ``/hub/home``, following redirects within the hub."""
        return await self.follow(await self.get(self.hub_url + "/home"), stay_within=self.hub_url)

    async def logout(self) -> httpx.Response:
        """GET ``/hub/logout``, following redirects within the hub."""
        return await self.follow(await self.get(self.hub_url + "/logout"), stay_within=self.hub_url)

    @staticmethod
    def form_error(html: str) -> str | None:
        """Text of the page's ``login_error`` element (JupyterHub's login template), or None."""
        parser = _PageParser(text_class="login_error")
        parser.feed(html)
        parser.close()
        return parser.texts[0] if parser.texts else None
