"""Phoenix's two wire formats, chosen per socket by the ``vsn`` query parameter.

``1.0.0`` frames are JSON objects ``{"topic", "event", "payload", "ref"}`` (realtime-py).
``2.0.0`` frames are JSON arrays ``[join_ref, ref, topic, event, payload]`` (supabase-js's
default), and a client broadcast may come as a binary "user broadcast push" instead. Server
frames in 2.0.0 are always sent as JSON text, which the JavaScript client decodes as well.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Protocol

__all__ = ["SERIALIZERS", "FrameError", "Serializer"]

Frame = dict[str, Any]

_USER_BROADCAST_PUSH = 3
_JSON_ENCODING = 1


class FrameError(ValueError):
    """A frame that does not follow the socket's wire format."""


class Serializer(Protocol):
    """Turns websocket messages into frames and frames into text."""

    def decode(self, data: str | bytes) -> Frame: ...

    def encode(self, frame: Frame) -> str: ...

    def broadcast(self, topic: str, event: str, payload_json: str, meta_json: str) -> str:
        """A server broadcast; the JSON texts are spliced in as-is to stay byte-exact."""
        ...


class V1Serializer:
    """``vsn=1.0.0``: one JSON object per frame; ``join_ref`` is not sent back."""

    def decode(self, data: str | bytes) -> Frame:
        if isinstance(data, bytes):
            raise FrameError("binary frames need vsn=2.0.0")
        frame = _loads(data)
        if not isinstance(frame, dict):
            raise FrameError(f"a vsn=1.0.0 frame must be a JSON object: {data[:200]!r}")
        return frame

    def encode(self, frame: Frame) -> str:
        return json.dumps(
            {
                "event": frame["event"],
                "topic": frame["topic"],
                "ref": frame.get("ref"),
                "payload": frame["payload"],
            }
        )

    def broadcast(self, topic: str, event: str, payload_json: str, meta_json: str) -> str:
        return (
            f'{{"event":"broadcast","topic":{json.dumps(topic)},"ref":null,'
            f'"payload":{{"type":"broadcast","event":{json.dumps(event)},'
            f'"payload":{payload_json}{meta_json}}}}}'
        )


class V2Serializer:
    """``vsn=2.0.0``: ``[join_ref, ref, topic, event, payload]`` arrays, plus binary pushes."""

    def decode(self, data: str | bytes) -> Frame:
        if isinstance(data, bytes):
            return _decode_user_broadcast_push(data)
        frame = _loads(data)
        if not isinstance(frame, list) or len(frame) != 5:
            raise FrameError(f"a vsn=2.0.0 frame must be a 5-element array: {data[:200]!r}")
        keys = ("join_ref", "ref", "topic", "event", "payload")
        return dict(zip(keys, frame, strict=True))

    def encode(self, frame: Frame) -> str:
        return json.dumps(
            [
                frame.get("join_ref"),
                frame.get("ref"),
                frame["topic"],
                frame["event"],
                frame["payload"],
            ]
        )

    def broadcast(self, topic: str, event: str, payload_json: str, meta_json: str) -> str:
        return (
            f'[null,null,{json.dumps(topic)},"broadcast",'
            f'{{"type":"broadcast","event":{json.dumps(event)},'
            f'"payload":{payload_json}{meta_json}}}]'
        )


SERIALIZERS: dict[str, Serializer] = {"1.0.0": V1Serializer(), "2.0.0": V2Serializer()}


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise FrameError(f"a frame that is not JSON: {text[:200]!r}") from exc


def _decode_user_broadcast_push(data: bytes) -> Frame:
    """A binary client broadcast: a kind byte, five lengths and an encoding byte, the
    join_ref/ref/topic/event/metadata strings, then the payload (only JSON is supported)."""
    header = struct.Struct("!7B")
    if len(data) < header.size or data[0] != _USER_BROADCAST_PUSH:
        raise FrameError(f"unsupported binary frame (kind {data[:1].hex() or 'none'})")
    _, *lengths, encoding = header.unpack_from(data)
    offset = header.size
    parts: list[str] = []
    for length in lengths:
        try:
            parts.append(data[offset : offset + length].decode())
        except UnicodeDecodeError as exc:
            raise FrameError("a binary frame with a header that is not text") from exc
        offset += length
    join_ref, ref, topic, event, metadata = parts
    if encoding != _JSON_ENCODING:
        raise FrameError(f"broadcast {event!r} on {topic!r}: binary payloads are not supported")
    try:
        meta = json.loads(metadata) if metadata else {}
        body = json.loads(data[offset:])
    except ValueError as exc:
        raise FrameError(f"broadcast {event!r} on {topic!r}: payload is not JSON") from exc
    payload = {**meta, "type": "broadcast", "event": event, "payload": body}
    return {
        "join_ref": join_ref or None,
        "ref": ref or None,
        "topic": topic,
        "event": "broadcast",
        "payload": payload,
    }
