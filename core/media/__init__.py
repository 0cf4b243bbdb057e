"""Adapters to audio and the outside world (ffmpeg, HTTP, yt-dlp, S3, files): import core.domain, core.settings."""
