FROM python:3.11-slim
ARG EXTRAS=all
WORKDIR /app
COPY pyproject.toml README.md ./
COPY producer producer
COPY worker worker
COPY shared shared
COPY models models
RUN pip install --no-cache-dir ".[${EXTRAS}]" flower
RUN useradd --create-home mammo
USER mammo
CMD ["mammo", "--help"]
