# faxbridge appliance image. Installs the package as a regular (non-editable) install,
# like the wheel of the README: the code, the built-in templates and the example
# config end up in site-packages and the sources are removed again.
FROM python:3.11-slim

RUN useradd --system --uid 10025 --home-dir /var/lib/faxbridge --create-home faxbridge
COPY pyproject.toml README.md config.example.toml /tmp/faxbridge-src/
COPY faxbridge /tmp/faxbridge-src/faxbridge
COPY templates /tmp/faxbridge-src/templates
RUN pip install --no-cache-dir /tmp/faxbridge-src && rm -rf /tmp/faxbridge-src \
    && faxbridge check
# `faxbridge example-config` prints the example to start a config from.

USER faxbridge
WORKDIR /var/lib/faxbridge
VOLUME ["/var/lib/faxbridge"]
# The embedded default (no --config) trusts these client networks instead of loopback
# alone: published ports reach the container from Docker's networks, never from its
# loopback. Only the embedded default (simulator, no real faxes) reads this; a mounted
# config's [smtp].trusted_networks and [[senders]] decide for themselves.
ENV FAXBRIDGE_TRUSTED_NETWORKS=127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7
# 2525: SMTP listener; 8025: HTTP (health, metrics, status push webhook)
EXPOSE 2525 8025
# `faxbridge health` asks /healthz where the bridge listens: the data directory's
# listening.json, written by `serve` from its config and flags (no port assumed here).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD faxbridge health --data-dir /var/lib/faxbridge || exit 1
# Mount a config at /etc/faxbridge/config.toml and add: --config /etc/faxbridge/config.toml
# (its [smtp].trusted_networks / [[senders]] must admit your mail server's address).
CMD ["faxbridge", "serve", "--data-dir", "/var/lib/faxbridge", \
     "--smtp-listen", "0.0.0.0:2525", "--http-listen", "0.0.0.0:8025"]
