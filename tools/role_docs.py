"""Each role's README variable tables, generated from its meta/argument_specs.yml (the documentation source)
and defaults/main.yml.

    python tools/role_docs.py          rewrite the generated part of every roles/*/README.md
    python tools/role_docs.py --check  exit 1 naming each README whose generated part is stale (make lint)

The generated part sits between the BEGIN and END markers below, in the README's "Variables" section; text
around it is the role author's.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
BEGIN = "<!-- BEGIN generated from meta/argument_specs.yml by tools/role_docs.py: do not edit -->"
END = "<!-- END generated -->"
# A default longer than this, or computed by Jinja, is described by the spec's text instead of quoted.
MAX_DEFAULT = 40


def _text(value: Any) -> str:
    """An argument spec description (string or list of paragraphs) as one Markdown table cell."""
    parts = value if isinstance(value, list) else [value or ""]
    text = " ".join(" ".join(str(p).split()) for p in parts)
    text = re.sub(r"C\(([^)]*)\)", r"`\1`", text)
    text = re.sub(r"I\(([^)]*)\)", r"*\1*", text)
    return text.replace("|", "\\|")


def _default(name: str, spec: dict[str, Any], defaults: dict[str, Any]) -> str:
    if spec.get("required"):
        return "(required)"
    if "default" in spec:
        value = spec["default"]
    elif name in defaults:
        value = defaults[name]
    else:
        return "(none)"
    if isinstance(value, str) and "{{" in value:
        return "computed (defaults/main.yml)"
    shown = str(yaml.safe_dump(value, default_flow_style=True, width=1000)).strip()
    shown = shown.removesuffix("\n...").removesuffix("...").strip()
    if len(shown) > MAX_DEFAULT:
        return "see defaults/main.yml"
    return "`" + shown.replace("|", "\\|") + "`"


def _type(spec: dict[str, Any]) -> str:
    kind = str(spec.get("type", "str"))
    if kind == "list" and "elements" in spec:
        kind = f"list of {spec['elements']}"
    if "choices" in spec:
        kind += " (" + ", ".join(f"`{c}`" if c != "" else "`''`" for c in spec["choices"]) + ")"
    return kind


def render(role: Path) -> str:
    """The generated Markdown of one role: a table per entry point."""
    specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    defaults_file = role / "defaults" / "main.yml"
    defaults = (yaml.safe_load(defaults_file.read_text()) or {}) if defaults_file.exists() else {}
    out: list[str] = []
    for entry, spec in specs.items():
        title = "`main` (the role)" if entry == "main" else f"`tasks_from: {entry}.yml`"
        out.append(f"### Entry point {title}")
        out.append("")
        out.append(_text(spec.get("short_description", "")))
        out.append("")
        options = spec.get("options") or {}
        if not options:
            out.append("No variables.")
            out.append("")
            continue
        out.append("| variable | type | default | description |")
        out.append("|---|---|---|---|")
        for name, option in options.items():
            out.append(
                f"| `{name}` | {_type(option)} | {_default(name, option, defaults)} | "
                f"{_text(option.get('description'))} |"
            )
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def updated(readme_text: str, generated: str, readme: Path) -> str:
    if BEGIN not in readme_text or END not in readme_text:
        raise SystemExit(f"{readme}: no generated section (add the lines {BEGIN!r} and {END!r})")
    head, rest = readme_text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{generated}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="fail when a README is out of date")
    args = parser.parse_args(argv)
    stale = []
    for role in sorted(p.parent.parent for p in ROOT.glob("roles/*/meta/argument_specs.yml")):
        readme = role / "README.md"
        text = readme.read_text()
        new = updated(text, render(role), readme)
        if new != text:
            stale.append(readme.relative_to(ROOT))
            if not args.check:
                readme.write_text(new)
    if args.check and stale:
        names = ", ".join(map(str, stale))
        print(
            f"out of date with meta/argument_specs.yml: {names}; run: python tools/role_docs.py",
            file=sys.stderr,
        )
        return 1
    for path in [] if args.check else stale:
        print(f"updated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
