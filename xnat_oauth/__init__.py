"""xnat-oauth: log in to JupyterHub with AAF, Google, any OpenID provider or an XNAT password,
and carry the user's own XNAT token to their notebook."""

from ._version import __version__

__all__ = ["XnatOAuthenticator", "__version__"]


def __getattr__(name):
    # Lazy, so `spawn_hooks` and the CLI can import the XNAT client without pulling in
    # JupyterHub's whole application stack.
    if name == "XnatOAuthenticator":
        from .authenticator import XnatOAuthenticator

        return XnatOAuthenticator
    raise AttributeError(name)
