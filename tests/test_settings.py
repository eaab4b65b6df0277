"""In-process tests over the settings, in the style of oauthenticator's own ``test_generic.py``.

The authenticator runs in this process and is driven through JupyterHub's outer API
(``get_authenticated_user``, ``refresh_user``) exactly as the hub drives it; its peers are real:
the XNAT emulator and the test-controlled OpenID provider, both on 127.0.0.1. Only the request
handler and the user are stand-ins, carrying what JupyterHub would hand over (the callback's
``code`` and cookies, the user's encrypted-then-decrypted auth_state).
"""

from __future__ import annotations

import copy
import secrets
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from jupyterhub.crypto import CryptKeeper
from oauthenticator.oauth2 import _serialize_state  # the state cookie's format, as the hub writes it
from tornado import web
from tornado.httputil import HTTPHeaders
from traitlets.config import Config

from tests.world.rogue_idp import RogueIdP, pkce_pair
from xnat_oauth import XnatOAuthenticator
from xnat_oauth.login_state import LOGIN_KEY
from xnat_oauth.oidc.handlers import LOGIN_COOKIE

PROVIDER_ID = "inproc"
PASSWORD = "correct horse battery staple"
CALLBACK = "http://127.0.0.1:1/hub/oauth_callback"


@pytest.fixture(autouse=True)
def crypt_key(monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_CRYPT_KEY", secrets.token_hex(32))
    CryptKeeper.clear_instance()
    yield
    CryptKeeper.clear_instance()


@pytest.fixture(scope="module")
def provider():
    with RogueIdP(client_id="inproc-client") as idp:
        yield idp


@pytest.fixture
def idp(provider, xnat):
    provider.reset()
    provider.issue_refresh_token = False
    xnat.enable_bearer(
        PROVIDER_ID, issuer=provider.issuer, jwks_url=provider.url("/jwks"), accepted_audiences=[provider.client_id]
    )
    yield provider
    provider.reset()


def make_authenticator(xnat, *, oidc: RogueIdP | None = None, **settings) -> XnatOAuthenticator:
    c = Config()
    state = xnat.root / f"hub-state-{secrets.token_hex(4)}"
    c.XnatOAuthenticator.xnat_state_file = f"{state}.sqlite"
    c.XnatOAuthenticator.password_throttle_db = f"{state}-throttle.sqlite"
    c.XnatOAuthenticator.xnat_url = xnat.url
    c.XnatOAuthenticator.xnat_timeout = 2.0
    if oidc is not None:
        c.XnatOAuthenticator.oidc_issuer = oidc.issuer
        c.XnatOAuthenticator.xnat_provider_id = PROVIDER_ID
        c.XnatOAuthenticator.client_id = oidc.client_id
        c.XnatOAuthenticator.client_secret = oidc.client_secret
        c.XnatOAuthenticator.oauth_callback_url = CALLBACK
    for key, value in settings.items():
        setattr(c.XnatOAuthenticator, key, value)
    auth = XnatOAuthenticator(config=c)
    auth.check_allow_config()
    return auth


# -- stand-ins for what JupyterHub hands the authenticator ------------------------------------


class FormHandler:
    """A POST to /hub/login as the authenticator sees it: from a client on this machine."""

    def __init__(self, address: str = "127.0.0.1"):
        self.request = SimpleNamespace(
            remote_ip=address,
            headers=HTTPHeaders(),
            connection=SimpleNamespace(context=SimpleNamespace(address=(address, 50000))),
        )


class CallbackHandler:
    """A GET of /hub/oauth_callback: the code in the URL, the login's cookies in the browser."""

    def __init__(self, code: str, verifier: str, nonce: str | None):
        self.hub = SimpleNamespace(base_url="/hub/")
        self._args = {"code": code}
        self._state = _serialize_state({"state_id": "s", "next_url": None, "code_verifier": verifier})
        self._cookies = {LOGIN_COOKIE: nonce.encode()} if nonce else {}

    def get_argument(self, name, default=None):
        return self._args.get(name, default)

    def get_state_cookie(self):
        return self._state

    def get_secure_cookie(self, name, max_age_days=None):
        return self._cookies.get(name)

    def clear_cookie(self, name, **kwargs):
        self._cookies.pop(name, None)


@dataclass
class HubUser:
    """What refresh_user sees of a hub user: a name and its auth_state."""

    name: str
    auth_state: dict | None
    saved: list[dict] = field(default_factory=list)

    async def get_auth_state(self):
        return self.auth_state

    async def save_auth_state(self, auth_state):
        self.saved.append(auth_state)
        self.auth_state = auth_state


async def callback_from_provider(idp: RogueIdP, auth, account: str | None = None) -> CallbackHandler:
    """Authorize at the provider as the hub's login handler would; the callback it sends back,
    as the hub's callback handler hands it on (the provider and nonce its login cookie named)."""
    verifier, challenge = pkce_pair()
    nonce = secrets.token_urlsafe(16)
    async with httpx.AsyncClient(trust_env=False) as http:
        answer = await http.get(
            idp.url("/authorize"),
            params={
                "response_type": "code",
                "client_id": idp.client_id,
                "redirect_uri": CALLBACK,
                "scope": "openid profile email",
                "state": "s",
                "nonce": nonce,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
                **({"login_hint": account} if account else {}),
            },
        )
    assert answer.status_code == 302, answer.text
    code = parse_qs(urlsplit(answer.headers["location"]).query)["code"][0]
    handler = CallbackHandler(code, verifier, nonce)
    handler.xnat_provider, handler.xnat_nonce = auth.provider(None), nonce
    return handler


async def openid_login(auth, idp, account=None):
    return await auth.get_authenticated_user(await callback_from_provider(idp, auth, account), None)


def add_password_user(xnat, name="alice", roles=("Jupyter",)) -> str:
    xnat.add_user(name, PASSWORD, roles=list(roles))
    return name


def add_openid_user(xnat, idp, roles=("Jupyter",)) -> str:
    """An XNAT account the OpenID plugin created for the provider's default account."""
    return xnat.add_openid_account(PROVIDER_ID, f"{PROVIDER_ID}_{idp.account['sub']}", roles=list(roles))


def valid_tokens(xnat, name) -> list[dict]:
    return [t for t in xnat.tokens_of(name) if xnat.token_owner(t["alias"], t["secret"]) == name]


async def password_login(auth, name, password=PASSWORD):
    return await auth.get_authenticated_user(FormHandler(), {"username": name, "password": password})


async def refused(coro) -> web.HTTPError:
    with pytest.raises(web.HTTPError) as info:
        await coro
    return info.value


# -- admission: XNAT's Jupyter permission is one allow rule among JupyterHub's ---------------


@pytest.mark.parametrize(
    "check_jupyter, roles, rules, admitted",
    [
        (True, ["Jupyter"], {}, True),
        (True, ["Administrator"], {}, False),  # as the plugin: Administrator alone is not Jupyter
        (True, [], {}, False),
        (True, [], {"allowed_users": {"alice"}}, True),  # another rule grants
        (True, [], {"allowed_users": {"bob"}}, False),
        (False, [], {"allowed_users": {"alice"}}, True),
        (False, [], {"allowed_users": {"bob"}}, False),
        (False, [], {"allow_all": True}, True),
        (False, ["Jupyter"], {"allowed_users": {"bob"}}, False),  # without the check, the role grants nothing
    ],
)
async def test_xnat_jupyter_permission_and_allow_rules(xnat, check_jupyter, roles, rules, admitted):
    name = add_password_user(xnat, roles=roles)
    auth = make_authenticator(xnat, check_xnat_jupyter_permission=check_jupyter, **rules)
    if admitted:
        model = await password_login(auth, name)
        assert model["name"] == name
        assert model["auth_state"]["xnat"]["username"] == name
        assert len(valid_tokens(xnat, name)) == 1
    else:
        err = await refused(password_login(auth, name))
        assert err.status_code == 403
        jupyter_said = "Jupyter" in err.jupyterhub_message
        assert jupyter_said is check_jupyter, err.jupyterhub_message
        assert valid_tokens(xnat, name) == [], "a refused login left a valid XNAT token"


@pytest.mark.parametrize("settings", [{"check_xnat_jupyter_permission": False}])
def test_a_hub_that_could_admit_nobody_does_not_start(xnat, settings):
    with pytest.raises(SystemExit, match="No login could ever be admitted.*allowed_users"):
        make_authenticator(xnat, **settings)


def test_openid_without_exchange_and_without_allow_rules_does_not_start(xnat, idp):
    with pytest.raises(SystemExit, match="xnat_token_exchange is 'off'.*allowed_users"):
        make_authenticator(xnat, oidc=idp, password_login=False, xnat_token_exchange="off")


def test_openid_without_exchange_beside_password_login_warns(xnat, idp, caplog):
    make_authenticator(xnat, oidc=idp, xnat_token_exchange="off")
    assert "OpenID logins can never be admitted" in caplog.text


async def test_password_login_off_refuses_the_form_without_asking_xnat(xnat, idp):
    name = add_password_user(xnat)
    auth = make_authenticator(xnat, oidc=idp, password_login=False, allow_all=True)
    err = await refused(password_login(auth, name))
    assert err.status_code == 403 and "disabled" in err.jupyterhub_message
    assert xnat.count() == 0


def test_password_login_off_without_a_provider_does_not_start(xnat):
    with pytest.raises(SystemExit, match="Nothing to log in with"):
        make_authenticator(xnat, password_login=False)


async def test_password_login_off_still_logs_in_with_openid(xnat, idp):
    name = add_openid_user(xnat, idp)
    auth = make_authenticator(xnat, oidc=idp, password_login=False)
    model = await openid_login(auth, idp)
    assert model["name"] == name
    assert model["auth_state"]["xnat"]["source"] == "bearer"


# -- admin_users, blocked_users ------------------------------------------------------------


@pytest.mark.parametrize("admin_users, is_admin", [({"alice"}, True), (set(), False), ({"bob"}, False)])
async def test_admin_users(xnat, admin_users, is_admin):
    name = add_password_user(xnat)
    auth = make_authenticator(xnat, admin_users=admin_users)
    model = await password_login(auth, name)
    # JupyterHub's None means "leave the admin flag as it is": not an admin for a new user
    assert (model["admin"] is True) is is_admin


@pytest.mark.parametrize("path", ["password", "openid"])
async def test_blocked_users_are_refused_and_their_token_invalidated(xnat, idp, path):
    if path == "password":
        name = add_password_user(xnat)
        auth = make_authenticator(xnat, blocked_users={name})
        attempt = password_login(auth, name)
    else:
        name = add_openid_user(xnat, idp)
        auth = make_authenticator(xnat, oidc=idp, blocked_users={name})
        attempt = openid_login(auth, idp)
    err = await refused(attempt)
    assert err.status_code == 403
    assert xnat.count("tokens.issue") == 1, "the login did get an XNAT token"
    assert xnat.count("tokens.invalidate") == 1
    assert valid_tokens(xnat, name) == []


# -- manage_groups, allowed_groups ---------------------------------------------------------


def groups_from_xnat_source(auth_state):
    return [f"xnat-{auth_state['xnat']['source']}"]


@pytest.mark.parametrize(
    "allowed_groups, admitted", [({"xnat-password"}, True), ({"xnat-bearer"}, False)]
)
async def test_manage_groups_and_allowed_groups(xnat, allowed_groups, admitted):
    name = add_password_user(xnat, roles=[])
    auth = make_authenticator(
        xnat,
        check_xnat_jupyter_permission=False,
        manage_groups=True,
        auth_state_groups_key=groups_from_xnat_source,
        allowed_groups=allowed_groups,
    )
    if admitted:
        model = await password_login(auth, name)
        assert model["groups"] == ["xnat-password"]
    else:
        assert (await refused(password_login(auth, name))).status_code == 403
        assert xnat.count("tokens.issue") == 1 and valid_tokens(xnat, name) == []


async def test_manage_groups_on_openid_logins_reads_the_claims(xnat, idp):
    idp.account["groups"] = ["radiology", "staff"]
    name = add_openid_user(xnat, idp)
    auth = make_authenticator(xnat, oidc=idp, manage_groups=True, auth_state_groups_key="oauth_user.groups")
    model = await openid_login(auth, idp)
    assert model["name"] == name and model["groups"] == ["radiology", "staff"]


# -- modify_auth_state_hook ------------------------------------------------------------------


def sync_hook(authenticator, auth_state):
    return {**auth_state, "site": "imaging-centre"}


async def async_hook(authenticator, auth_state):
    return {**auth_state, "site": "imaging-centre"}


@pytest.mark.parametrize("hook", [sync_hook, async_hook], ids=["sync", "async"])
@pytest.mark.parametrize("path", ["password", "openid"])
async def test_modify_auth_state_hook(xnat, idp, hook, path):
    if path == "password":
        name = add_password_user(xnat)
        auth = make_authenticator(xnat, modify_auth_state_hook=hook)
        model = await password_login(auth, name)
    else:
        name = add_openid_user(xnat, idp)
        auth = make_authenticator(xnat, oidc=idp, modify_auth_state_hook=hook)
        model = await openid_login(auth, idp)
    assert model["auth_state"]["site"] == "imaging-centre"
    assert model["auth_state"]["xnat"]["username"] == name


async def test_a_failing_modify_auth_state_hook_refuses_the_login(xnat):
    name = add_password_user(xnat)

    def broken(authenticator, auth_state):
        raise RuntimeError("site hook failed")

    auth = make_authenticator(xnat, modify_auth_state_hook=broken)
    with pytest.raises(RuntimeError):
        await password_login(auth, name)


# -- refresh_user and refresh_user_hook ------------------------------------------------------


async def logged_in(auth, xnat, name) -> HubUser:
    model = await password_login(auth, name)
    return HubUser(name, model["auth_state"])


@pytest.mark.parametrize("answer", [True, False])
async def test_refresh_user_hook_decides_when_it_answers(xnat, answer):
    name = add_password_user(xnat)
    seen = []

    def hook(authenticator, user, auth_state):
        seen.append((user.name, auth_state["xnat"]["username"]))
        return answer

    auth = make_authenticator(xnat, refresh_user_hook=hook)
    user = await logged_in(auth, xnat, name)
    xnat.reset()
    assert await auth.refresh_user(user) is answer
    assert seen == [(name, name)]
    assert xnat.count() == 0, "the hook's answer is final: XNAT is not asked"


async def test_refresh_user_hook_returning_none_leaves_the_xnat_check(xnat):
    name = add_password_user(xnat)
    auth = make_authenticator(xnat, refresh_user_hook=lambda a, u, s: None)
    user = await logged_in(auth, xnat, name)
    (token,) = valid_tokens(xnat, name)
    model = await auth.refresh_user(user)
    assert model["auth_state"]["xnat"]["token"]["alias"] == token["alias"]
    xnat.revoke_token(token["alias"])
    assert await auth.refresh_user(user) is False


async def test_refresh_keeps_a_valid_token_and_asks_for_login_near_expiry(xnat):
    name = add_password_user(xnat)
    auth = make_authenticator(xnat)
    user = await logged_in(auth, xnat, name)
    model = await auth.refresh_user(user)
    assert model["name"] == name
    assert model["auth_state"]["xnat"] == user.auth_state["xnat"]
    auth.xnat_token_refresh_margin = 10 * 86400  # longer than any XNAT token lives
    assert await auth.refresh_user(user) is False


async def test_refresh_of_an_auth_state_from_elsewhere_asks_for_login(xnat):
    auth = make_authenticator(xnat)
    for state in (None, {}, {"xnat": {"version": 99}}, {"token_response": {"access_token": "x"}}):
        assert await auth.refresh_user(HubUser("alice", state)) is False


# -- refresh through the provider's refresh token --------------------------------------------


async def openid_user_with_refresh_token(xnat, idp, **settings):
    idp.issue_refresh_token = True
    name = add_openid_user(xnat, idp)
    auth = make_authenticator(xnat, oidc=idp, **settings)
    model = await openid_login(auth, idp)
    assert model["auth_state"]["refresh_token"]
    return auth, HubUser(name, model["auth_state"])


async def test_refresh_renews_the_xnat_token_through_the_refresh_token(xnat, idp):
    auth, user = await openid_user_with_refresh_token(xnat, idp)
    (old,) = valid_tokens(xnat, user.name)
    auth.xnat_token_refresh_margin = 10 * 86400  # every XNAT token is "about to expire"
    model = await auth.refresh_user(user)
    assert model["name"] == user.name
    new = model["auth_state"]["xnat"]["token"]
    assert new["alias"] != old["alias"]
    assert [t["alias"] for t in valid_tokens(xnat, user.name)] == [new["alias"]], "the old token lives on"
    assert user.saved and user.saved[-1]["xnat"]["token"]["alias"] == new["alias"], "stored before the old died"


async def test_concurrent_refreshes_of_one_user_make_one_refresh(xnat, idp):
    import asyncio

    auth, user = await openid_user_with_refresh_token(xnat, idp)
    auth.xnat_token_refresh_margin = 10 * 86400
    tokens_before = idp.counts["token"]
    results = await asyncio.gather(*(auth.refresh_user(user) for _ in range(20)))
    assert idp.counts["token"] - tokens_before == 1, "one refresh grant for 20 requests"
    assert len({r["auth_state"]["xnat"]["token"]["alias"] for r in results}) == 1
    assert len(valid_tokens(xnat, user.name)) == 1, "no XNAT token minted and left behind"


async def test_refresh_refused_by_the_provider_asks_for_login(xnat, idp):
    auth, user = await openid_user_with_refresh_token(xnat, idp)
    auth.xnat_token_refresh_margin = 10 * 86400
    idp._refresh_tokens.clear()  # the provider revoked the grant: invalid_grant
    assert await auth.refresh_user(user) is False
    assert len(valid_tokens(xnat, user.name)) == 1


async def test_refresh_with_the_provider_down_keeps_the_session_while_its_token_is_valid(xnat, caplog):
    with RogueIdP(client_id="inproc-client") as own:
        xnat.enable_bearer(
            PROVIDER_ID, issuer=own.issuer, jwks_url=own.url("/jwks"), accepted_audiences=[own.client_id]
        )
        auth, user = await openid_user_with_refresh_token(xnat, own)
    # the provider is gone (connection refused) when the XNAT token needs renewing
    auth.xnat_token_refresh_margin = 10 * 86400
    stored = copy.deepcopy(user.auth_state)
    assert await auth.refresh_user(user) is True, "an outage is no reason to end the session"
    assert user.saved == [] and user.auth_state == stored
    assert len(valid_tokens(xnat, user.name)) == 1
    assert "keeping the session" in caplog.text and "identity provider is unavailable" in caplog.text
    # once the XNAT token itself has expired there is nothing left to keep: log in again
    user.auth_state["xnat"]["token"]["expires_at"] = time.time() - 1
    assert await auth.refresh_user(user) is False


async def test_a_bearer_record_without_an_identity_refreshes_without_a_crash(xnat, idp):
    """auth_state from a version that stored no (issuer, sub) with a Bearer login."""
    auth, user = await openid_user_with_refresh_token(xnat, idp)
    for record in (user.auth_state["xnat"], user.auth_state["token_response"][LOGIN_KEY]["xnat"]):
        record.pop("identity")
    assert isinstance(await auth.refresh_user(user), dict)
    auth.xnat_token_refresh_margin = 10 * 86400  # and one that renews the XNAT token
    model = await auth.refresh_user(user)
    assert model["auth_state"]["xnat"]["identity"]["sub"] == idp.account["sub"]
    assert len(valid_tokens(xnat, user.name)) == 1


async def test_a_refresh_that_returns_someone_else_is_refused(xnat, idp):
    auth, user = await openid_user_with_refresh_token(xnat, idp)
    auth.xnat_token_refresh_margin = 10 * 86400
    other = HubUser("somebody_else", user.auth_state)
    assert await auth.refresh_user(other) is False
    assert len(valid_tokens(xnat, user.name)) == 1, "the new token of the refused refresh was invalidated"


# -- a token goes only to the XNAT that issued it ---------------------------------------------


async def test_refresh_and_logout_never_send_a_token_to_another_xnat(xnat, make_xnat, caplog):
    name = add_password_user(xnat)
    user = await logged_in(make_authenticator(xnat), xnat, name)
    (alias,) = [t["alias"] for t in valid_tokens(xnat, name)]
    moved = make_xnat()  # xnat_url now names another XNAT (a migration, a typo fixed)
    auth = make_authenticator(moved)
    xnat.reset()
    assert await auth.refresh_user(user) is False, "a token of another XNAT asks for a new login"
    await auth.forget_xnat_token(user)  # logout
    assert "xnat" not in user.auth_state, "logout forgets the token all the same"
    assert xnat.count() == 0 and moved.count() == 0, "the token was sent somewhere"
    assert f"is for {xnat.url}, not {moved.url} (alias {alias})" in caplog.text


async def test_logout_with_xnat_down_forgets_the_token_and_names_it_for_the_admin(xnat, caplog):
    name = add_password_user(xnat)
    auth = make_authenticator(xnat)
    user = await logged_in(auth, xnat, name)
    (alias,) = [t["alias"] for t in valid_tokens(xnat, name)]
    xnat.go_down()
    await auth.forget_xnat_token(user)
    assert "xnat" not in user.auth_state
    assert f"Could not invalidate the XNAT token of {name} (alias {alias}) at logout" in caplog.text
    xnat.come_up()
    await auth.forget_xnat_token(user)  # nothing left to forget: no call
    assert xnat.count("tokens.invalidate") == 0


# -- TLS and PKCE ------------------------------------------------------------------------------


def test_tls_verification_off_is_a_loud_warning_at_start_up(xnat, idp, caplog):
    make_authenticator(xnat, oidc=idp)
    assert "!!!" not in caplog.text
    make_authenticator(xnat, oidc=idp, xnat_validate_cert=False, validate_server_cert=False)
    assert "!!! xnat_validate_cert is False: XNAT's TLS certificate is NOT verified" in caplog.text
    assert "!!! validate_server_cert is False: the identity provider's TLS certificate is NOT verified" in caplog.text
    assert all(r.levelname == "WARNING" for r in caplog.records if "!!!" in r.getMessage())


@pytest.mark.parametrize(
    "advertised, configured, pkce",
    [
        (["S256"], True, True),
        (["plain", "S256"], False, False),  # the admin's explicit enable_pkce = False is kept
        (None, True, True),  # the document says nothing (AAF's): oauthenticator's default, on
        (None, False, False),
        (["plain"], True, False),  # methods listed, S256 not among them: off, with a warning
    ],
    ids=["s256", "config-off", "absent", "absent-config-off", "plain-only"],
)
async def test_pkce_follows_what_the_provider_advertises(xnat, idp, caplog, advertised, configured, pkce):
    idp.discovery_overrides = {"code_challenge_methods_supported": advertised}
    auth = make_authenticator(xnat, oidc=idp, enable_pkce=configured)
    provider = auth.provider(None)
    assert auth.pkce_for(provider, await auth.oidc_ready(provider)) is pkce
    assert ("without S256" in caplog.text) is (advertised == ["plain"] and configured)
    if pkce:  # and a login then goes through with it
        add_openid_user(xnat, idp)
        model = await openid_login(auth, idp)
        assert model is not None and idp.requests["token"][-1]["code_verifier"]


# -- identity: the login XNAT names, or the pattern's prediction without an exchange -----------


async def test_the_default_exchange_works_with_opaque_access_tokens(xnat, idp):
    name = add_openid_user(xnat, idp)
    auth = make_authenticator(xnat, oidc=idp)
    assert auth.xnat_exchange_token == "id_token"
    model = await openid_login(auth, idp)
    assert model["name"] == name
    assert "." not in model["auth_state"]["access_token"], "the provider's access token is opaque"
    identity = model["auth_state"]["xnat"]["identity"]
    assert identity["auth_user"] == name and identity["sub"] == idp.account["sub"]


async def test_without_exchange_allowed_users_admit_exactly_those(xnat, idp):
    idp.accounts["other"] = {"sub": "OtherPerson42", "name": "Other"}
    admitted = f"{PROVIDER_ID}_{idp.account['sub']}"
    auth = make_authenticator(xnat, oidc=idp, xnat_token_exchange="off", allowed_users={admitted})
    model = await openid_login(auth, idp)
    assert model["name"] == admitted and model["auth_state"]["xnat"]["source"] == "none"
    err = await refused(openid_login(auth, idp, "other"))
    assert err.status_code == 403
    assert xnat.count() == 0, "no exchange: XNAT is never called"


@pytest.mark.parametrize(
    "sub, why", [("1234567890", "does not start with a letter"), ("a" * 70, "more than 64")]
)
async def test_without_exchange_a_name_xnat_cannot_have_is_refused_saying_why(xnat, idp, sub, why):
    idp.account["sub"] = sub
    auth = make_authenticator(
        xnat, oidc=idp, xnat_token_exchange="off", xnat_username_pattern="[sub]", allow_all=True
    )
    err = await refused(openid_login(auth, idp))
    assert err.status_code == 403 and why in err.jupyterhub_message


@pytest.mark.parametrize("exchange", ["off", "bearer"])
async def test_two_subjects_rendering_one_name_never_share_an_account(xnat, idp, exchange):
    idp.account["preferred_username"] = "alice@x"
    idp.accounts["twin"] = {"sub": "TwinSubject", "preferred_username": "alice_x"}
    pattern = "[providerId]_[preferred_username]"
    name = f"{PROVIDER_ID}_alice_x"
    auth = make_authenticator(
        xnat, oidc=idp, xnat_token_exchange=exchange, xnat_username_pattern=pattern, allowed_users={name}
    )
    if exchange == "bearer":
        # XNAT's mapping keys differ (alice@x vs alice_x), but an XNAT admin who linked both to
        # one account makes XNAT answer with that account for both: only the hub's binding
        # tells the two people apart
        xnat.enable_bearer(
            PROVIDER_ID,
            issuer=idp.issuer,
            jwks_url=idp.url("/jwks"),
            accepted_audiences=[idp.client_id],
            username_pattern=pattern,
        )
        xnat.add_openid_account(PROVIDER_ID, f"{PROVIDER_ID}_alice@x", roles=["Jupyter"])
        xnat.link_openid_account(PROVIDER_ID, f"{PROVIDER_ID}_alice_x", name)
    first = await openid_login(auth, idp)
    assert first["name"] == name
    assert first["auth_state"]["xnat"]["identity"]["auth_user"] == f"{PROVIDER_ID}_alice@x"
    err = await refused(openid_login(auth, idp, "twin"))
    assert err.status_code == 403 and name in err.jupyterhub_message
    if exchange == "bearer":
        assert len(valid_tokens(xnat, name)) == 1, "the twin's XNAT token was invalidated"
    again = await openid_login(auth, idp)  # the first person still gets in
    assert again["name"] == name


async def test_a_merged_account_logs_in_as_its_xnat_login(xnat, idp):
    key = f"{PROVIDER_ID}_{idp.account['sub']}"
    xnat.add_openid_account(PROVIDER_ID, key, "jsmith", roles=["Jupyter"])
    auth = make_authenticator(xnat, oidc=idp)
    model = await openid_login(auth, idp)
    assert model["name"] == "jsmith"
    record = model["auth_state"]["xnat"]
    assert record["username"] == "jsmith" and record["identity"]["auth_user"] == key
    assert xnat.token_owner(record["token"]["alias"], record["token"]["secret"]) == "jsmith"


async def test_a_login_refused_by_the_allow_rules_binds_nothing(xnat, idp):
    idp.accounts["twin"] = {"sub": "TwinSubject", "preferred_username": "bob"}
    idp.account["preferred_username"] = "bob"
    auth = make_authenticator(
        xnat,
        oidc=idp,
        xnat_token_exchange="off",
        xnat_username_pattern="[providerId]_[preferred_username]",
        allowed_users={f"{PROVIDER_ID}_bob"},
        blocked_users=set(),
    )
    auth.blocked_users = {f"{PROVIDER_ID}_bob"}
    assert (await refused(openid_login(auth, idp, "twin"))).status_code == 403
    auth.blocked_users = set()
    assert (await openid_login(auth, idp))["name"] == f"{PROVIDER_ID}_bob"


def test_the_old_names_of_the_claim_requirements_still_work_with_a_warning(xnat, idp, caplog):
    auth = make_authenticator(xnat, oidc=idp, allowed_home_organisations={"uni.edu.au"})
    assert auth.required_home_organisations == {"uni.edu.au"}
    assert "allowed_home_organisations is deprecated" in caplog.text


async def test_a_provider_gone_from_the_configuration_asks_its_users_to_log_in_again(xnat, idp):
    add_openid_user(xnat, idp)
    before = make_authenticator(xnat, oidc=idp)
    model = await openid_login(before, idp)
    user = HubUser(model["name"], model["auth_state"])
    assert isinstance(await before.refresh_user(user), dict), "still offered: the session stays"
    # the site renamed the provider in XNAT and the hub: logins of the old one are not refreshed
    after = make_authenticator(xnat, oidc=idp, xnat_provider_id="renamed")
    assert await after.refresh_user(user) is False


# -- providers read from XNAT's own openid-provider.properties --------------------------------


def xnat_properties(tmp_path, idp, *, issuer=None, pattern="[providerId]_[sub]"):
    path = tmp_path / "openid-provider.properties"
    path.write_text(
        f"openid.providers={PROVIDER_ID}\n"
        f"openid.{PROVIDER_ID}.issuer={issuer or idp.issuer}\n"
        f"openid.{PROVIDER_ID}.jwksUri={idp.url('/jwks')}\n"
        f"openid.{PROVIDER_ID}.usernamePattern={pattern}\n"
        f"openid.{PROVIDER_ID}.bearer.enabled=true\n"
        f"openid.{PROVIDER_ID}.audCheck.acceptedAudiences={idp.client_id}\n"
    )
    return str(path)


def provider_entry(idp, **kw):
    return {"id": PROVIDER_ID, "client_id": idp.client_id, "client_secret": idp.client_secret, **kw}


async def test_the_hub_takes_issuer_and_pattern_from_xnats_own_settings(xnat, idp, tmp_path):
    path = xnat_properties(tmp_path, idp, pattern="[providerId]-[sub]")
    auth = make_authenticator(xnat, oidc_providers=[provider_entry(idp)], xnat_openid_properties=path)
    (p,) = auth.providers
    assert p.preset.issuer == idp.issuer and p.username_pattern.pattern == "[providerId]-[sub]"


def test_a_hub_issuer_unlike_xnats_does_not_start(xnat, idp, tmp_path):
    path = xnat_properties(tmp_path, idp, issuer=idp.issuer + "/")  # one character apart
    with pytest.raises(SystemExit, match="is not XNAT's"):
        make_authenticator(
            xnat, oidc_providers=[provider_entry(idp, issuer=idp.issuer)], xnat_openid_properties=path
        )


def test_a_provider_xnat_does_not_list_does_not_start(xnat, idp, tmp_path):
    path = xnat_properties(tmp_path, idp)
    with pytest.raises(SystemExit, match="not in openid.providers"):
        make_authenticator(
            xnat,
            oidc_providers=[provider_entry(idp, id="other", issuer=idp.issuer)],
            xnat_openid_properties=path,
        )


def test_single_provider_settings_beside_oidc_providers_are_refused(xnat, idp):
    with pytest.raises(SystemExit, match="oidc_provider describe the single provider"):
        make_authenticator(xnat, oidc_providers=[provider_entry(idp, issuer=idp.issuer)], oidc_provider="aaf")
