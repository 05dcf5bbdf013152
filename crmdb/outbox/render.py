"""Email templates: emails/<template>.<language>.j2, jinja2 with three blocks.

  {% block subject %}...{% endblock %}   one line
  {% block text %}...{% endblock %}      the plain-text part
  {% block html %}...{% endblock %}      the HTML part (autoescaped)

Each block is rendered on its own; only the html block escapes values. Undefined
variables are errors (StrictUndefined), so a typo never sends an empty field.
"""

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from crmdb.resources import resource_dir

LANGUAGES = ("vi", "en")
BLOCKS = ("subject", "text", "html")


class RenderError(Exception):
    """A template that is missing or does not render; the message names it."""


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str


def templates_dir() -> Path:
    return resource_dir("emails")


@cache
def _environment(directory: Path, html: bool) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(directory),
        autoescape=html,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _block(template: jinja2.Template, block: str, values: dict[str, Any]) -> str:
    if block not in template.blocks:
        raise RenderError(f"{template.name}: no {{% block {block} %}}")
    context = template.new_context(values)
    # Run the top level once, so that blocks see what it sets ({% set %} outside blocks).
    for _ in template.root_render_func(context):
        pass
    return "".join(template.blocks[block](context))


def render(
    name: str, language: str, values: dict[str, Any], directory: Path | None = None
) -> Rendered:
    """The subject, text and HTML of template `name` in `language`."""
    folder = directory or templates_dir()
    filename = f"{name}.{language}.j2"
    parts: dict[str, str] = {}
    try:
        for block in BLOCKS:
            template = _environment(folder, block == "html").get_template(filename)
            parts[block] = _block(template, block, values)
    except jinja2.TemplateNotFound:
        raise RenderError(f"no email template {filename} in {folder}") from None
    except jinja2.TemplateError as exc:
        raise RenderError(f"{filename}: {exc}") from None
    subject = " ".join(parts["subject"].split())
    if not subject:
        raise RenderError(f"{filename}: the subject is empty")
    return Rendered(subject, parts["text"].strip() + "\n", parts["html"].strip() + "\n")


def available(directory: Path | None = None) -> dict[str, set[str]]:
    """Template names and the languages each is written in."""
    found: dict[str, set[str]] = {}
    for path in sorted((directory or templates_dir()).glob("*.j2")):
        name, _, language = path.name.removesuffix(".j2").rpartition(".")
        if name and language in LANGUAGES:
            found.setdefault(name, set()).add(language)
    return found
