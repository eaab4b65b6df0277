# JupyterHub with the xnat-oauth wheel built from this repository and this directory's
# jupyterhub_config.py, for docker-stack.yml. Build it from the repository's root:
#
#   make wheel
#   docker build -f examples/docker-swarm/hub.Dockerfile --build-arg JH_UID=54 --build-arg JH_GID=992 \
#     -t xnat-oauth/jupyterhub:latest .
#
# JH_UID/JH_GID as in xnat2jupyterhub: XNAT's uid and the docker group's gid on the manager.
# xnat-oauth supports JupyterHub >=5.3,<7 (tests/test_examples.py checks JUPYTERHUB_VERSION).
ARG JUPYTERHUB_VERSION=5.5.0
FROM quay.io/jupyterhub/jupyterhub:${JUPYTERHUB_VERSION}
ARG JUPYTERHUB_VERSION

ARG JH_UID=54
ARG JH_GID=992
COPY dist/*.whl /tmp/dist/
# The image's JupyterHub stays as its tag says: pip fails rather than replace it.
RUN echo "jupyterhub==${JUPYTERHUB_VERSION}" > /tmp/keep-hub.txt \
 && python3 -m pip install --no-cache-dir --disable-pip-version-check --root-user-action=ignore \
      -c /tmp/keep-hub.txt "$(ls /tmp/dist/xnat_oauth-*-py3-none-any.whl)[docker]" \
 && rm -rf /tmp/dist /tmp/keep-hub.txt \
 && mkdir -p /srv/jupyterhub \
 && chown "${JH_UID}:${JH_GID}" /srv/jupyterhub
COPY examples/docker-swarm/jupyterhub_config.py /etc/jupyterhub/jupyterhub_config.py
WORKDIR /srv/jupyterhub
