"""A local Telegram Bot API test server: enough of the HTTP API for python-telegram-bot.

The bot under test talks to it over real HTTP (STEMBOT_TELEGRAM_API_URL). Tests push
updates as a user would, and read back every call the bot made.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

BOT_USER = {
    "id": 1000,
    "is_bot": True,
    "first_name": "stembot",
    "username": "stembot_test_bot",
    "can_join_groups": True,
    "can_read_all_group_messages": False,
    "supports_inline_queries": False,
}


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)
    result: Any = None
    filenames: dict[str, str] = field(default_factory=dict)  # the name each uploaded file was sent with


class BotApiServer:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.files: dict[str, bytes] = {}
        self._updates: list[dict[str, Any]] = []
        self._new_update = asyncio.Event()
        self._ids = itertools.count(1)
        self._message_ids = itertools.count(100)
        self.runner: web.AppRunner | None = None
        self.url = ""
        self.holds: dict[tuple[str, int], asyncio.Event] = {}  # (method, chat id): answered once set

    async def start(self, port: int) -> None:
        app = web.Application(client_max_size=200 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._api)
        app.router.add_get("/file/bot{token}/{path:.*}", self._file)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    # --- what a user does -------------------------------------------------------------
    def add_file(self, data: bytes, name: str) -> str:
        file_id = f"file{next(self._ids)}"
        self.files[file_id] = data
        self.files[f"{file_id}/{name}"] = data
        return file_id

    def push(self, kind: str, payload: dict[str, Any]) -> None:
        self._updates.append({"update_id": next(self._ids), kind: payload})
        self._new_update.set()

    def message(self, chat: dict[str, Any], user: dict[str, Any], **fields: Any) -> dict[str, Any]:
        msg = {"message_id": next(self._message_ids), "date": int(time.time()), "chat": chat, "from": user, **fields}
        self.push("message", msg)
        return msg

    def press(self, message: dict[str, Any], user: dict[str, Any], data: str) -> None:
        self.push(
            "callback_query",
            {"id": str(next(self._ids)), "from": user, "chat_instance": "1", "message": message, "data": data},
        )

    # --- what the bot did ----------------------------------------------------------------
    def sent(self, *methods: str) -> list[Call]:
        return [c for c in self.calls if c.method in methods]

    async def wait_for(self, predicate: Any, timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = predicate()
            if found:
                return found
            await asyncio.sleep(0.05)
        raise TimeoutError(f"bot never did that; calls: {[c.method for c in self.calls]}")

    # --- the HTTP side ---------------------------------------------------------------------
    async def _file(self, request: web.Request) -> web.Response:
        path = request.match_info["path"]
        return web.Response(body=self.files[path.split("/", 1)[1]]) if "/" in path else web.Response(status=404)

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params: dict[str, Any] = {}
        files: dict[str, bytes] = {}
        filenames: dict[str, str] = {}
        if request.method == "POST":
            form = await request.post()
            for key, value in form.items():
                if isinstance(value, web.FileField):
                    files[key] = value.file.read()
                    filenames[key] = value.filename
                else:
                    try:
                        params[key] = json.loads(str(value))
                    except ValueError:
                        params[key] = str(value)
        hold = self.holds.get((method, int(params.get("chat_id", 0) or 0)))
        if hold is not None:  # a slow upload to that chat, until the test lets it through
            await hold.wait()
        result = await self._result(method, params, files)
        if method != "getUpdates":
            self.calls.append(Call(method, params, files, result, filenames))
        return web.json_response({"ok": True, "result": result})

    async def _result(self, method: str, params: dict[str, Any], files: dict[str, bytes]) -> Any:
        if method == "getMe":
            return BOT_USER
        if method == "getUpdates":
            return await self._get_updates(params)
        if method == "getFile":
            file_id = params["file_id"]
            path = next(k for k in self.files if k.startswith(f"{file_id}/"))
            return {
                "file_id": file_id,
                "file_unique_id": file_id,
                "file_size": len(self.files[file_id]),
                "file_path": f"music/{path}",
            }
        if method in ("sendMessage", "editMessageText", "editMessageReplyMarkup"):
            return self._bot_message(params, text=params.get("text", ""))
        if method in ("sendAudio", "sendDocument"):
            kind = "audio" if method == "sendAudio" else "document"
            return self._bot_message(params, **{kind: self._stored(files, params, kind)})
        if method == "sendMediaGroup":
            return [self._bot_message(params, **{m["type"]: self._stored(files, m, "media")}) for m in params["media"]]
        return True

    def _stored(self, files: dict[str, bytes], params: dict[str, Any], key: str) -> dict[str, Any]:
        ref = str(params.get(key, key))
        data = files.get(ref.removeprefix("attach://"), files.get(key, b""))
        file_id = self.add_file(data, "sent")
        return {"file_id": file_id, "file_unique_id": file_id, "file_size": len(data), "duration": 0}

    def _bot_message(self, params: dict[str, Any], **fields: Any) -> dict[str, Any]:
        chat_id = int(params.get("chat_id", 0))
        mid = int(params["message_id"]) if "message_id" in params else next(self._message_ids)
        # as Telegram does: the message comes back with its keyboard, which a press then carries
        markup = {"reply_markup": params["reply_markup"]} if params.get("reply_markup") else {}
        return {
            "message_id": mid,
            "date": int(time.time()),
            "chat": {"id": chat_id, "type": "private"},
            "from": BOT_USER,
            **markup,
            **fields,
        }

    async def _get_updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        offset = int(params.get("offset", 0) or 0)
        timeout = float(params.get("timeout", 0) or 0)
        deadline = time.monotonic() + timeout
        # as Telegram does: an offset confirms, and forgets, every update before it
        self._updates = [u for u in self._updates if u["update_id"] >= offset]
        while True:
            fresh = [u for u in self._updates if u["update_id"] >= offset]
            if fresh or time.monotonic() >= deadline:
                return fresh
            self._new_update.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new_update.wait(), max(0.01, deadline - time.monotonic()))
