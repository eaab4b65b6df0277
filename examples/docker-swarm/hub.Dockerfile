# JupyterHub with xnat-oauth and this directory's jupyterhub_config.py, for docker-stack.yml.
#
#   docker build -f hub.Dockerfile --build-arg JH_UID=54 --build-arg JH_GID=992 \
#     -t xnat-oauth/jupyterhub:latest .
#
# JH_UID/JH_GID as in xnat2jupyterhub: XNAT's uid and the docker group's gid on the manager.
ARG JUPYTERHUB_VERSION=5.5.0
FROM quay.io/jupyterhub/jupyterhub:${JUPYTERHUB_VERSION}

ARG JH_UID=54
ARG JH_GID=992
# What pip installs: a release by default. For a wheel you built, add
#   COPY xnat_oauth-<version>-py3-none-any.whl /tmp/
# here and build with --build-arg XNAT_OAUTH_SPEC="/tmp/xnat_oauth-<version>-py3-none-any.whl[docker]".
ARG XNAT_OAUTH_SPEC="xnat-oauth[docker]"

RUN python3 -m pip install --no-cache-dir "${XNAT_OAUTH_SPEC}" \
 && mkdir -p /srv/jupyterhub \
 && chown "${JH_UID}:${JH_GID}" /srv/jupyterhub
COPY jupyterhub_config.py /etc/jupyterhub/jupyterhub_config.py
WORKDIR /srv/jupyterhub
