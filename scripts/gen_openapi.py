"""The server's OpenAPI document for the docs: ``docs/openapi.json`` and api.md's reference.

    python scripts/gen_openapi.py            # write docs/openapi.json
    python scripts/gen_openapi.py --stdout   # print it instead

The document is the one a running server answers at ``/openapi.json``: FastAPI's, built from
``create_app`` with a default config. Building it starts nothing (the app's lifespan, which opens
the data dir and the database, runs only under a server), so this needs neither root nor a data
dir.

It is also an mkdocs hook (``hooks:`` in mkdocs.yml), so every docs build regenerates it:
``on_pre_build`` writes ``docs/openapi.json`` (git-ignored: a build product, like ``site/``, so it
can never be stale and needs no ``--check``), and ``on_page_markdown`` replaces the
``<!-- openapi -->`` marker of api.md with a Markdown rendering of it (operations, then schemas),
so the page renders offline with no JavaScript.

One more hook, for the SDK reference (sdk.md, rendered by mkdocstrings): the SDK's docstrings
cross-reference in reST roles (``:class:`Sandbox```), which Markdown leaves as text;
``on_page_content`` drops the role, and links a class to its entry on the page when it has one;
a paragraph ending in reST's literal-block ``::`` ends in one colon (the block is code already).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "openapi.json"
MARKER = "<!-- openapi -->"
#: The control plane is served under three prefixes (see docs/server.md); the reference lists
#: operations once, under the first, as the document's other two copies are the same routers.
ALIASES = ("/api/v2/sandboxes", "/api/v1/v2/sandboxes")
METHODS = ("get", "head", "post", "put", "patch", "delete")


def build() -> dict[str, Any]:
    """The OpenAPI document of this checkout's server."""
    sys.path.insert(0, str(ROOT / "src"))
    from hutch.server._app import create_app
    from hutch.server._config import ServerConfig

    # The data dir is never touched: only the lifespan opens it, and it does not run here.
    app = create_app(ServerConfig(data_dir=ROOT / "data"))
    with warnings.catch_warnings():
        # GET and HEAD of one download route share their function, hence an operation id.
        warnings.simplefilter("ignore", UserWarning)
        return app.openapi()


def dump(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def write(path: Path = OUTPUT) -> dict[str, Any]:
    """Write the document to ``path`` unless it is already there (``mkdocs serve`` watches it)."""
    doc = build()
    text = dump(doc)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return doc


# -- Markdown ------------------------------------------------------------------------------------


def _cell(text: str) -> str:
    """Text safe in one table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def _anchor(schema: str) -> str:
    return f"schema-{schema.lower()}"


def _type(schema: dict[str, Any]) -> str:
    """A schema as a short type expression, references linked to their section."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{_anchor(name)})"
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return " \\| ".join(_type(s) for s in schema[key])
    if "enum" in schema:
        return " \\| ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    kind = schema.get("type")
    if kind == "array":
        return f"array of {_type(schema.get('items', {}))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {_type(schema['additionalProperties'])}"
    if kind is None:
        return "any"
    fmt = schema.get("format")
    return f"{kind} ({fmt})" if fmt else str(kind)


def _body(body: dict[str, Any]) -> str:
    parts = []
    for media, content in body.get("content", {}).items():
        parts.append(f"`{media}`: {_type(content.get('schema', {}))}")
    return "; ".join(parts) or "none"


def _operation(path: str, method: str, op: dict[str, Any]) -> list[str]:
    lines = [f"### `{method.upper()} {path}`", ""]
    if op.get("summary"):
        lines += [f"**{op['summary']}**", ""]
    if op.get("description"):
        lines += [op["description"].strip(), ""]
    auth = "`X-Api-Key`" if op.get("security") else "none (a token in the request, or public)"
    lines += [f"Authentication: {auth}", ""]
    params = op.get("parameters", [])
    if params:
        lines += ["| parameter | in | type | required |", "|---|---|---|---|"]
        for p in params:
            required = "yes" if p.get("required") else "no"
            lines.append(
                f"| `{p['name']}` | {p['in']} | {_type(p.get('schema', {}))} | {required} |"
            )
        lines.append("")
    if "requestBody" in op:
        lines += [f"Request body: {_body(op['requestBody'])}", ""]
    lines += ["| status | meaning | body |", "|---|---|---|"]
    for status, answer in sorted(op.get("responses", {}).items()):
        desc = _cell(answer.get("description", ""))
        lines.append(f"| {status} | {desc} | {_body(answer)} |")
    lines.append("")
    return lines


def _schema(name: str, schema: dict[str, Any]) -> list[str]:
    lines = [f"### {name} {{#{_anchor(name)}}}", ""]
    if schema.get("description"):
        lines += [schema["description"].strip(), ""]
    props = schema.get("properties")
    if not props:
        lines += [f"Type: {_type(schema)}", ""]
        return lines
    required = set(schema.get("required", []))
    lines += ["| field | type | required | default |", "|---|---|---|---|"]
    for field, sub in props.items():
        default = f"`{json.dumps(sub['default'])}`" if "default" in sub else ""
        req = "yes" if field in required else "no"
        lines.append(f"| `{field}` | {_type(sub)} | {req} | {_cell(default)} |")
    if schema.get("additionalProperties") is False:
        lines += ["", "Other fields are refused (422 `ValidationError`)."]
    lines.append("")
    return lines


def markdown(doc: dict[str, Any]) -> str:
    """The reference: every operation (aliases once), then every schema."""
    control: list[str] = []
    data: list[str] = []
    for path, item in doc["paths"].items():
        if path.startswith(ALIASES):
            continue
        for method in METHODS:
            if method in item:
                target = data if path.startswith("/dp/") else control
                target += _operation(path, method, item[method])
    schemas: list[str] = []
    for name, schema in sorted(doc.get("components", {}).get("schemas", {}).items()):
        schemas += _schema(name, schema)
    return "\n".join(
        ["## Control plane", "", *control, "## Data plane", "", *data, "## Schemas", "", *schemas]
    )


# -- mkdocs hook ---------------------------------------------------------------------------------

_doc: dict[str, Any] | None = None


def on_pre_build(config: Any) -> None:
    global _doc
    _doc = write(Path(config["docs_dir"]) / "openapi.json")


def on_page_markdown(markdown_text: str, page: Any, config: Any, files: Any) -> str:
    if MARKER not in markdown_text:
        return markdown_text
    doc = _doc if _doc is not None else build()
    return markdown_text.replace(MARKER, markdown(doc))


#: A reST role before a code span, as Markdown renders ``:class:`Sandbox``` (``~`` shows the
#: last name of a dotted path only).
_ROLE = re.compile(r":(?:class|meth|func|attr|data|exc|mod|obj):<code>(~?)([\w.]+)</code>")


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    html = html.replace("::</p>", ":</p>")
    if ":<code>" not in html:
        return html
    ids = set(re.findall(r'id="(hutch\.[\w.]+)"', html))

    def link(match: re.Match[str]) -> str:
        short, name = match.group(1), match.group(2)
        target = name if name.startswith("hutch.") else f"hutch.{name}"
        code = f"<code>{name.rsplit('.', 1)[-1] if short else name}</code>"
        return f'<a href="#{target}">{code}</a>' if target in ids else code

    return _ROLE.sub(link, html)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stdout", action="store_true", help="print instead of writing")
    args = parser.parse_args()
    if args.stdout:
        sys.stdout.write(dump(build()))
    else:
        write()
        print(f"wrote {OUTPUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
