FROM python:3.11-slim
ARG EXTRAS=all
WORKDIR /app
COPY pyproject.toml README.md ./
COPY producer producer
COPY worker worker
COPY shared shared
COPY models models
RUN pip install --no-cache-dir ".[${EXTRAS}]" flower
RUN useradd --create-home mammo \
 && install -d -o mammo -g mammo /var/lib/mammo /var/lib/mammo/reports
# Reports (MAMMO_REPORT_DIR in docker-compose.yml): WORKDIR /app is root's and the container
# runs as mammo, so they go here; a named volume mounted on it starts with this ownership.
USER mammo
CMD ["mammo", "--help"]
