"""JupyterHub on Docker Swarm with xnat-oauth, in place of xnat2jupyterhub's configuration.

The environment variables keep xnat2jupyterhub's names and meaning (JH_NETWORK, JH_XNAT_URL,
JH_XNAT_USERNAME, JH_XNAT_PASSWORD, JH_XNAT_SERVICE_TOKEN, JH_START_TIMEOUT, NB_UID, NB_GID,
and the plugin's JH_XNAT_PT_* path translation). Any secret among them may instead be given
as a file, NAME_FILE=/run/secrets/..., which is how docker-stack.yml passes Docker secrets.
"""

import os

import spawn_hooks.docker

c = get_config()  # noqa: F821 - provided by JupyterHub's config loader


def secret(name: str) -> str:
    """$NAME, else the content of the file named by $NAME_FILE (a Docker secret), else ''."""
    value = os.environ.get(name, "")
    if value:
        return value
    path = os.environ.get(f"{name}_FILE", "")
    if path:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    return ""


# -- the hub: XNAT at /, JupyterHub at /jupyterhub behind the same reverse proxy -------------

c.JupyterHub.bind_url = "http://:8000/jupyterhub"
c.JupyterHub.hub_bind_url = "http://:8081/jupyterhub"
# the hub's service name on the overlay network, as notebooks reach it
c.JupyterHub.hub_connect_url = "http://jupyterhub:8081/jupyterhub"
c.JupyterHub.db_url = "sqlite:////srv/jupyterhub/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "/srv/jupyterhub/jupyterhub_cookie_secret"
# XNAT's JupyterHub plugin (1.2+) starts a named server per launch
c.JupyterHub.allow_named_servers = True
c.JupyterHub.shutdown_on_logout = True
# the hooks' and the authenticator's loggers go to the hub's log, as xnat2jupyterhub's did
c.JupyterHub.logging_config = {
    "loggers": {
        "spawn_hooks": {"level": "INFO", "handlers": ["console"]},
        "xnat_oauth": {"level": "INFO", "handlers": ["console"]},
    }
}

# -- login: XNAT passwords as before, and optionally AAF, Google or both ---------------------

c.JupyterHub.authenticator_class = "xnat-oauth"
# XnatOAuthenticator.xnat_url defaults to $JH_XNAT_URL.
admins = {name.strip() for name in os.environ.get("JH_ADMIN_USERS", "").split(",") if name.strip()}
if admins:
    c.Authenticator.admin_users = admins

# Each user's XNAT token is kept in the encrypted auth_state. Without a key the authenticator
# refuses to start and says how to make one.
crypt_key = secret("JUPYTERHUB_CRYPT_KEY")
if crypt_key:
    c.CryptKeeper.keys = crypt_key.split(";")

# One provider: "aaf", "aaf-test" or "google" in $JH_OIDC_PROVIDER; its client id and callback
# URL are oauthenticator's $OAUTH_CLIENT_ID and $OAUTH_CALLBACK_URL.
# Several on one login page: their ids in $JH_OIDC_PROVIDERS ("aaf,google"), each with
# $<ID>_CLIENT_ID and its secret in $<ID>_CLIENT_SECRET_FILE (a Docker secret); the hub answers
# each at $OAUTH_CALLBACK_URL/<id>, the redirect URI to register with that provider.
# Neither: xnat2jupyterhub's XNAT password form only.
oidc_provider = os.environ.get("JH_OIDC_PROVIDER", "")
oidc_providers = [p.strip() for p in os.environ.get("JH_OIDC_PROVIDERS", "").split(",") if p.strip()]
if oidc_providers:
    c.XnatOAuthenticator.oidc_providers = [
        {
            "id": pid,
            "preset": pid,
            "client_id_env": f"{pid.upper().replace('-', '_')}_CLIENT_ID",
            "client_secret_file": os.environ[f"{pid.upper().replace('-', '_')}_CLIENT_SECRET_FILE"],
            # Google's sub is all digits: NRG's pattern puts the provider id (a letter) first
            "username_pattern": "[providerId]-[sub]" if pid == "google" else "[providerId]_[sub]",
        }
        for pid in oidc_providers
    ]
elif oidc_provider:
    c.XnatOAuthenticator.oidc_provider = oidc_provider
    c.XnatOAuthenticator.client_secret = secret("OAUTH_CLIENT_SECRET")

# -- XNAT's plugin calls the hub's API with this token ---------------------------------------

service_token = secret("JH_XNAT_SERVICE_TOKEN")
if service_token:
    c.JupyterHub.services = [{"name": "xnat", "api_token": service_token}]
    c.JupyterHub.load_roles = [
        {
            "name": "xnat",
            "description": "XNAT's JupyterHub plugin creates users and starts and stops their servers",
            "scopes": ["admin:users", "admin:servers", "read:hub", "tokens"],
            "services": ["xnat"],
        }
    ]

# -- running servers renew their XNAT token through the hub (docs: token-renewal.md) ----------

c.JupyterHub.custom_scopes = {
    "custom:xnat-oauth:renew:xnat-token": {"description": "Renew the XNAT token of one's own server"},
}
c.JupyterHub.load_roles.extend([
    {"name": "user", "scopes": ["self", "custom:xnat-oauth:renew:xnat-token!user"]},
    {"name": "server", "scopes": ["users:activity!user", "access:servers!server",
                                  "custom:xnat-oauth:renew:xnat-token!server"]},
])

# -- spawner: Swarm services with the user's XNAT data ----------------------------------------

c.JupyterHub.spawner_class = "dockerspawner.SwarmSpawner"
c.SwarmSpawner.network_name = os.environ["JH_NETWORK"]
c.SwarmSpawner.pre_spawn_hook = spawn_hooks.docker.pre_spawn_hook
# each server's own XNAT token is ended in XNAT when the server stops
c.SwarmSpawner.post_stop_hook = spawn_hooks.docker.post_stop_hook
c.Spawner.start_timeout = int(os.environ.get("JH_START_TIMEOUT", "180"))
c.Spawner.http_timeout = 75
# servers started from the hub; XNAT's launches choose from allowed_images
c.SwarmSpawner.image = "quay.io/jupyter/scipy-notebook:latest"

# XNAT's JupyterHub-role account reads the launch options XNAT stored (it is not an admin).
# Its username, XNAT's URL, JH_XNAT_PT_* and NB_UID/NB_GID are the hooks' defaults already.
c.XnatSpawnHooks.service_password = secret("JH_XNAT_PASSWORD")
# images XNAT's compute environments may choose
c.XnatSpawnHooks.allowed_images = [
    "quay.io/jupyter/scipy-notebook:latest",
    "xnat/scipy-notebook:0.3.0",
    "xnat/monai-notebook:0.3.0",
]
