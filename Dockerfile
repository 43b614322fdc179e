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
# Static files, hashed and compressed, for WhiteNoise to serve under gunicorn. Settings need a
# key to load with DEBUG off: a throwaway one, used for this step only.
RUN DJANGO_SECRET_KEY="$(python -c 'import secrets; print(secrets.token_urlsafe(50))')" \
    python manage.py collectstatic --no-input -v0
EXPOSE 8000
# This host's scratch space (MASKLOOP_WORK_DIR, MASKLOOP_CACHE_DIR); shared files live in S3.
RUN mkdir -p /var/lib/maskloop/work /var/lib/maskloop/cache
