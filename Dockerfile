# One image for the portal and the workers. GPU workers: build with --build-arg EXTRAS=gpu.
FROM python:3.11-slim
ARG EXTRAS=""
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY pneumoscreen pneumoscreen
COPY web web
COPY worker worker
COPY db db
COPY models models
RUN pip install ".${EXTRAS:+[$EXTRAS]}" \
    && useradd --create-home --uid 1000 pneumoscreen \
    && mkdir -p /data && chown pneumoscreen /data
USER pneumoscreen
ENV PNEUMOSCREEN_DATA_DIR=/data PNEUMOSCREEN_STORAGE_DIR=/data/studies \
    PNEUMOSCREEN_WEIGHTS_DIR=/app/models/weights
EXPOSE 8000
CMD ["pneumoscreen", "web", "--host", "0.0.0.0", "--port", "8000"]
