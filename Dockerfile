# syntax=docker/dockerfile:1
# One image for the portal and the workers. GPU workers: build with --build-arg EXTRAS=gpu.
FROM python:3.11-slim
ARG EXTRAS=""
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
# Dependencies first, from pyproject.toml alone: an edit to the code does not reinstall TensorFlow.
COPY pyproject.toml ./
RUN python -c "import sys, tomllib; project = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = [e for e in sys.argv[1].split(',') if e]; \
print('\n'.join(project['dependencies'] + [d for e in extras for d in project['optional-dependencies'][e]]))" \
    "$EXTRAS" > requirements.txt \
    && pip install -r requirements.txt
# Then the project itself, from a bind mount: the code lands once, in site-packages (weights included).
RUN --mount=type=bind,source=.,target=/src,rw pip install --no-deps /src \
    && useradd --create-home --uid 1000 pneumoscreen \
    && mkdir -p /data && chown pneumoscreen /data
USER pneumoscreen
ENV PNEUMOSCREEN_DATA_DIR=/data PNEUMOSCREEN_STORAGE_DIR=/data/studies
EXPOSE 8000
CMD ["pneumoscreen", "web", "--host", "0.0.0.0", "--port", "8000"]
