"""docs/api.md, rendered from the OpenAPI document: `python -m api.reference > docs/api.md`
(a test fails when the file and the API disagree)."""

from __future__ import annotations

import json
import sys
from typing import Any

_METHOD_ORDER = {"get": 0, "post": 1, "patch": 2, "put": 3, "delete": 4}


def _ref_name(schema: dict[str, Any]) -> str | None:
    ref = schema.get("$ref")
    return ref.rsplit("/", 1)[-1] if isinstance(ref, str) else None


def _type(schema: dict[str, Any]) -> str:
    """A short human type for a JSON schema."""
    name = _ref_name(schema)
    if name:
        return f"[{name}](#{name.lower()})"
    if "anyOf" in schema:
        parts = [_type(s) for s in schema["anyOf"] if s.get("type") != "null"]
        nullable = any(s.get("type") == "null" for s in schema["anyOf"])
        return " \\| ".join(parts) + (" \\| null" if nullable else "")
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {_type(schema.get('items', {}))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {_type(schema['additionalProperties'])}"
    if schema.get("format") == "date-time":
        return "timestamp"
    return str(kind)


def _limits(schema: dict[str, Any]) -> str:
    bits = []
    for key, label in (
        ("minLength", "min length"),
        ("maxLength", "max length"),
        ("minItems", "min items"),
        ("maxItems", "max items"),
        ("minimum", "≥"),
        ("maximum", "≤"),
    ):
        for option in [schema, *schema.get("anyOf", [])]:
            if key in option:
                bits.append(f"{label} {option[key]}")
    return ", ".join(bits)


def _cell(text: Any) -> str:
    return str(text or "").replace("|", "\\|").replace("\n", " ")


def render(doc: dict[str, Any]) -> str:
    """The whole reference as Markdown."""
    out = [
        f"# {doc['info']['title']} reference",
        "",
        "Generated from the service's OpenAPI document (`GET /openapi.json`; interactive at `/docs`) by",
        "`python -m api.reference > docs/api.md`. Every error has the body",
        "[ErrorBody](#errorbody) and every response carries `X-Request-ID`. Authenticated routes take",
        "`Authorization: Bearer <api_key>`.",
        "",
        "## Routes",
        "",
    ]
    ops = []
    for path, item in doc["paths"].items():
        for method, op in item.items():
            ops.append((op.get("tags", ["other"])[0], path, _METHOD_ORDER.get(method, 9), method, op))
    ops.sort(key=lambda o: (o[0], o[1], o[2]))
    tag = None
    for op_tag, path, _order, method, op in ops:
        if op_tag != tag:
            tag = op_tag
            out += [f"### {tag}", ""]
        out += [f"#### `{method.upper()} {path}`", ""]
        summary = (op.get("description") or op.get("summary") or "").strip()
        if summary:
            out += [summary, ""]
        out.append(f"Auth: {'API key (bearer)' if op.get('security') else 'none'}.")
        out.append("")
        params = op.get("parameters", [])
        if params:
            out += ["| Parameter | In | Type | Required | Notes |", "|---|---|---|---|---|"]
            for p in params:
                schema = p.get("schema", {})
                notes = "; ".join(x for x in (_cell(p.get("description")), _limits(schema)) if x)
                out.append(
                    f"| `{p['name']}` | {p['in']} | {_type(schema)} | {'yes' if p.get('required') else 'no'} "
                    f"| {notes} |"
                )
            out.append("")
        body = op.get("requestBody")
        if body:
            kinds = ", ".join(
                f"`{ctype}` {_type(c.get('schema', {}))}" for ctype, c in body.get("content", {}).items()
            )
            out += [f"Body{' (required)' if body.get('required') else ' (optional)'}: {kinds}.", ""]
            if body.get("description"):
                out += [_cell(body["description"]), ""]
        out += ["| Status | Body | Meaning |", "|---|---|---|"]
        for status, resp in sorted(op.get("responses", {}).items()):
            content = resp.get("content", {})
            shape = ", ".join(_type(c.get("schema", {})) for c in content.values()) or "—"
            out.append(f"| {status} | {shape} | {_cell(resp.get('description'))} |")
        out.append("")
    out += ["## Objects", ""]
    for name, schema in sorted(doc.get("components", {}).get("schemas", {}).items()):
        out += [f"### {name}", ""]
        if schema.get("description"):
            out += [_cell(schema["description"]), ""]
        props = schema.get("properties", {})
        if props:
            required = set(schema.get("required", []))
            out += ["| Field | Type | Required | Notes |", "|---|---|---|---|"]
            for field, fs in props.items():
                notes = "; ".join(x for x in (_cell(fs.get("description")), _limits(fs)) if x)
                out.append(f"| `{field}` | {_type(fs)} | {'yes' if field in required else 'no'} | {notes} |")
            out.append("")
        elif "enum" in schema:
            out += ["One of " + ", ".join(f"`{v}`" for v in schema["enum"]) + ".", ""]
        examples = schema.get("examples")
        if examples:
            out += ["Example:", "", "```json", json.dumps(examples[0], indent=2), "```", ""]
    return "\n".join(out).rstrip() + "\n"


def current() -> str:
    """The reference of the API as built now (an app over a throwaway database)."""
    import tempfile
    from pathlib import Path

    from api.app import create_app
    from core.db import make_engine
    from core.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'reference.db'}"
        engine = make_engine(url)
        try:
            app = create_app(Settings(database_url=url, data_dir=Path(tmp)), engine=engine)
            return render(app.openapi())
        finally:
            engine.dispose()


if __name__ == "__main__":
    sys.stdout.write(current())
