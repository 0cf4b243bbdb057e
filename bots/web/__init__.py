"""The web studio: a third frontend (`stembot web`), a mixer page for any kept song.

aiohttp, like the rest of stembot's I/O (arq, redis-py, discord.py's HTTP), so it runs on
the same asyncio event loop with no new stack. It imports only core: no torch, no chat library.
"""

from bots.web.server import make_app, run

__all__ = ["make_app", "run"]
