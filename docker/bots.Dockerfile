# The Telegram and Discord frontends: no torch, a slim image.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends ffmpeg && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY core core
COPY bots bots
COPY worker worker
RUN pip install --no-cache-dir '.[telegram,discord,links,web]'
USER nobody
ENTRYPOINT ["stembot"]
