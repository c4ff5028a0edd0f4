# The settlement worker image, used by docker-compose.yml (service "worker").
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what the package needs, so that edits to tests or docs do not rebuild the image.
COPY pyproject.toml README.md ./
COPY engine ./engine
RUN pip install . && rm -rf /src

# An unprivileged user owning only the worker's state directory.
RUN useradd --system --uid 10001 --create-home --home-dir /var/lib/mynapoint mynapoint \
    && mkdir -p /var/lib/mynapoint/state \
    && chown -R mynapoint:mynapoint /var/lib/mynapoint
USER mynapoint
WORKDIR /var/lib/mynapoint
# numba caches compiled kernels beside their source, which this user cannot write.
ENV NUMBA_CACHE_DIR=/var/lib/mynapoint/.numba-cache
# Loopback is unreachable from outside a container, so metrics listen on all of the
# container's interfaces; the compose file publishes them to no host port.
ENV MYNAPOINT_METRICS_ADDR=0.0.0.0

EXPOSE 9100
ENTRYPOINT ["mynapoint"]
CMD ["worker", "--broker", "kafka:9092", "--metrics-port", "9100", \
     "--state-dir", "/var/lib/mynapoint/state"]
