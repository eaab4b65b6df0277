# The zero-to-jupyterhub hub image with the xnat-oauth wheel built from this repository.
# Build it from the repository's root (the wheel is in dist/):
#
#   make wheel
#   docker build -f examples/kubernetes/hub.Dockerfile -t registry.example.org/xnat/k8s-hub-xnat-oauth:4.4.0-xnat-oauth .
#   docker push registry.example.org/xnat/k8s-hub-xnat-oauth:4.4.0-xnat-oauth
#
# then name it in values.yaml (hub.image). Keep Z2JH_VERSION equal to the chart version you
# install, so the hub image matches the chart's configuration files, and JUPYTERHUB_VERSION equal
# to the JupyterHub that chart version ships (z2jh changelog: "4.4.0 upgrades JupyterHub to
# 5.5.0"). xnat-oauth supports JupyterHub >=5.3,<7; tests/test_examples.py checks both.
ARG Z2JH_VERSION=4.4.0
FROM quay.io/jupyterhub/k8s-hub:${Z2JH_VERSION}
ARG JUPYTERHUB_VERSION=5.5.0

USER root
COPY dist/*.whl /tmp/dist/
# The image's JupyterHub stays as the chart ships it: pip fails rather than replace it.
RUN echo "jupyterhub==${JUPYTERHUB_VERSION}" > /tmp/keep-hub.txt \
 && python3 -m pip install --no-cache-dir --disable-pip-version-check --root-user-action=ignore -c /tmp/keep-hub.txt \
      "$(ls /tmp/dist/xnat_oauth-*-py3-none-any.whl)[kube]" \
 && rm -rf /tmp/dist /tmp/keep-hub.txt
# the chart runs the hub as this uid
USER 1000
