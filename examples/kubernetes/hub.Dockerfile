# The zero-to-jupyterhub hub image with xnat-oauth installed.
#
#   docker build -f hub.Dockerfile -t registry.example.org/xnat/k8s-hub-xnat-oauth:4.4.0-xnat-oauth .
#   docker push registry.example.org/xnat/k8s-hub-xnat-oauth:4.4.0-xnat-oauth
#
# then name it in values.yaml (hub.image). Keep Z2JH_VERSION equal to the chart version you
# install, so the hub image matches the chart's configuration files.
ARG Z2JH_VERSION=4.4.0
FROM quay.io/jupyterhub/k8s-hub:${Z2JH_VERSION}

# What pip installs: a release by default. For a wheel you built, add
#   COPY xnat_oauth-<version>-py3-none-any.whl /tmp/
# here and build with --build-arg XNAT_OAUTH_SPEC="/tmp/xnat_oauth-<version>-py3-none-any.whl[kube]".
ARG XNAT_OAUTH_SPEC="xnat-oauth[kube]"

USER root
RUN python3 -m pip install --no-cache-dir "${XNAT_OAUTH_SPEC}"
# the chart runs the hub as this uid
USER 1000
