FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY config ./config
COPY annotation ./annotation
COPY training ./training
COPY inference ./inference
RUN pip install --no-cache-dir .
COPY . .
EXPOSE 8000
# This host's scratch space (MASKLOOP_WORK_DIR, MASKLOOP_CACHE_DIR); shared files live in S3.
RUN mkdir -p /var/lib/maskloop/work /var/lib/maskloop/cache
