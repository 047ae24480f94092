"""The AsyncAPI document as a plain HTML page (`GET /asyncapi`): rendered here from the
document, with no script and nothing loaded from elsewhere, so it works on a closed
network (AsyncAPI's own viewer loads its script from a CDN)."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from typing import Any


def _target(document: Mapping[str, Any], ref: str) -> Any:
    target: Any = document
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return target


def _expanded(document: Mapping[str, Any], node: Any, depth: int = 0) -> Any:
    """`node` with every `$ref` replaced by what it points at (annotations beside it
    kept), so a reader of the page need not follow references. The schemas have no
    cycles; `depth` stops one all the same."""
    if isinstance(node, list):
        return [_expanded(document, item, depth) for item in node]
    if not isinstance(node, Mapping):
        return node
    if "$ref" in node and depth < 20:
        rest = {k: v for k, v in node.items() if k != "$ref"}
        target = _expanded(document, _target(document, node["$ref"]), depth + 1)
        return {**target, **rest} if isinstance(target, Mapping) else target
    return {k: _expanded(document, v, depth) for k, v in node.items()}


def _pre(value: Any) -> str:
    return f"<pre>{html.escape(json.dumps(value, indent=2, ensure_ascii=False))}</pre>"


_STYLE = (
    "body{font-family:sans-serif;max-width:70em;margin:auto;padding:1em}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em;text-align:left;"
    "vertical-align:top}pre{background:#f6f6f6;padding:.5em;overflow:auto}"
)


def render_html(document: Mapping[str, Any]) -> str:
    """A plain page of the document: servers, channels with their Kafka bindings, and each
    message with its key, headers and data schema. Everything is escaped; nothing is
    loaded from elsewhere."""
    e = html.escape
    info = document["info"]
    title = f"{e(info['title'])} {e(info['version'])}"
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>",
        f"<style>{_STYLE}</style></head><body><h1>{title}</h1>",
        f"<pre>{e(info['description'])}</pre>",
        "<p>This document as <a href='asyncapi.yaml'>YAML</a> or "
        "<a href='asyncapi.json'>JSON</a>.</p>",
        "<h2>Servers</h2><table><tr><th>name</th><th>host</th><th>protocol</th><th></th></tr>",
    ]
    for name, server in document["servers"].items():
        parts.append(
            f"<tr><td>{e(name)}</td><td>{e(server['host'])}</td>"
            f"<td>{e(server['protocol'])}</td><td>{e(server['description'])}</td></tr>"
        )
    parts.append(
        "</table><h2>Channels</h2><table><tr><th>topic</th><th>the service</th>"
        "<th>partitions</th><th>configuration</th><th>messages</th></tr>"
    )
    actions = {
        op["channel"]["$ref"].rsplit("/", 1)[1]: op["action"]
        for op in document["operations"].values()
    }
    for channel_id, channel in document["channels"].items():
        kafka = channel["bindings"]["kafka"]
        links = ", ".join(f"<a href='#{e(t)}'>{e(t)}</a>" for t in channel["messages"])
        parts.append(
            f"<tr><td><b>{e(channel['address'])}</b><br>{e(channel['description'])}</td>"
            f"<td>{e(actions[channel_id])}s</td><td>{kafka['partitions']}</td>"
            f"<td>{e(json.dumps(kafka.get('topicConfiguration', {})))}</td>"
            f"<td>{links}</td></tr>"
        )
    parts.append("</table><h2>Messages</h2>")
    for name, message in document["components"]["messages"].items():
        payload = message["payload"]
        data = (
            _expanded(document, payload["allOf"][1]["properties"]["data"])
            if "allOf" in payload
            else payload
        )
        key = message["bindings"]["kafka"]["key"]
        parts += [
            f"<h3 id='{e(name)}'>{e(name)}</h3><p><b>{e(message['summary'])}</b> "
            f"{e(message['description'])}</p>",
            f"<p>Content type {e(message['contentType'])}; key: "
            f"{e(key.get('description', ''))}.</p>",
            f"<details><summary>Kafka headers</summary>"
            f"{_pre(_expanded(document, message['headers']))}</details>",
            f"<details><summary>data schema</summary>{_pre(data)}</details>",
        ]
    parts.append("</body></html>")
    return "".join(parts)
