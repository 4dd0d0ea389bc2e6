"""mkdocs hooks: the pages of the site that are made from the code at build time, never by hand.

- `reference.md`: every command of the `elite` Typer app, walked through click
  (`typer.main.get_command`): usage, help, arguments, options with defaults and environment
  variables, and the examples of `--help`.
- `library-format.md`, `benchmarks.md`, `changelog.md`: library/FORMAT.md, benchmarks/README.md
  and CHANGELOG.md as pages (their relative links to repository files become file names, which
  the site does not hold).
- `<!-- elite:error-list -->` in a page: every `Error:` message the code can raise, read from the
  source (ast), grouped by the part of elite that raises it.

mkdocs.yml names this file under `hooks:`; tests/test_docs.py builds the site with it.
"""

from __future__ import annotations

import ast
import inspect
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Document this checkout's code, whatever elite is installed.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
PACKAGE = ROOT / "elite_cli"
ERROR_LIST_MARKER = "<!-- elite:error-list -->"


# ---------------------------------------------------------------------------------------------
# mkdocs events


def on_files(files, config):
    from mkdocs.structure.files import File

    for name, content in generated_pages().items():
        files.append(File.generated(config, name, content=content))
    return files


def on_page_markdown(markdown, page, config, files):
    if ERROR_LIST_MARKER in markdown:
        markdown = markdown.replace(ERROR_LIST_MARKER, error_list_markdown())
    return markdown


def generated_pages() -> dict[str, str]:
    return {
        "reference.md": command_reference(),
        "library-format.md": repository_page(
            "library/FORMAT.md",
            "The exact on-disk format of the concept library, as `library/FORMAT.md` in the repository "
            "states it (this page is that file)."),
        "benchmarks.md": repository_page(
            "benchmarks/README.md",
            "The speed and memory benchmarks and their figures, as `benchmarks/README.md` states them "
            "(this page is that file; the scripts are in `benchmarks/`)."),
        "changelog.md": repository_page("CHANGELOG.md", ""),
    }


# ---------------------------------------------------------------------------------------------
# Repository files as pages

LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)")


def repository_page(relative: str, note: str) -> str:
    """A markdown file of the repository as a page: relative links to repository files (which the
    site does not publish) become the file's repository path in code; anchors and URLs stay."""
    source = ROOT / relative
    folder = source.parent.relative_to(ROOT)

    def relink(match: re.Match) -> str:
        text, target = match.groups()
        if target.startswith(("#", "http://", "https://", "mailto:")):
            return match.group(0)
        path = (folder / target.split("#")[0]).as_posix()
        return text if text.strip("`") == path or text.strip("`") == target else f"{text} (`{path}`)"

    text = LINK.sub(relink, source.read_text(encoding="utf-8"))
    if note:
        # After the first heading, so that it stays the page's title.
        title, _, rest = text.partition("\n")
        text = f"{title}\n\n!!! note \"Source\"\n    {note}\n{rest}"
    return text


# ---------------------------------------------------------------------------------------------
# Command reference

def command_reference() -> str:
    import typer

    from elite_cli.commands import app

    root = typer.main.get_command(app)
    root_context = root.context_class(root, info_name="elite")
    lines = [
        "# Command reference",
        "",
        "Every `elite` command, its arguments and options, generated from the command line itself "
        "when the site is built (so it says what `elite COMMAND --help` says: every command has "
        "`-h`/`--help` with an example, and those that report data take `--json`). Settings that also "
        "come from the environment name their variable; [Models and settings](models.md) explains "
        "the order in which flag, environment, `config.toml` and default win.",
        "",
    ]
    lines += command_section(root, root_context, level=2)
    lines += settings_section()
    for command, context, depth in walk_commands(root, root_context):
        lines += command_section(command, context, level=min(1 + depth, 4))
    return "\n".join(lines) + "\n"


def settings_section() -> list[str]:
    """The settings of elite_cli/common/config.py: config.toml key, environment variable, default."""
    from elite_cli.common import config

    built_in = config.defaults(Path("/nonexistent-library"))  # no imported mappers: the Hub files
    lines = ["## Settings and environment variables", "",
             "Each comes from the flag (where there is one), else the environment variable, else "
             "`config.toml` in the library folder (`elite config set KEY VALUE`), else the default. "
             "The library folder itself comes from `--library`, else `ELITE_HOME`, else the "
             "platform's user data folder.", "",
             "| `config.toml` key | environment | default | what |", "|---|---|---|---|"]
    for setting in config.SETTINGS:
        choices = f" ({', '.join(setting.choices)})" if setting.choices else ""
        lines.append(f"| `{setting.key}` | `{setting.env}` | `{built_in[setting.key]}` | "
                     f"{escape(setting.help)}{choices} |")
    return lines + [""]


def walk_commands(group, context, depth: int = 0):
    """(command, context, depth) for every command and sub-command, in the order `--help` lists them."""
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        if command is None or command.hidden:
            continue
        child = command.context_class(command, info_name=name, parent=context)
        yield command, child, depth + 1
        if hasattr(command, "list_commands"):
            yield from walk_commands(command, child, depth + 1)


def command_section(command, context, level: int) -> list[str]:
    path = context.command_path
    title = "Global options" if context.parent is None else path
    lines = ["#" * level + f" `{title}`" if context.parent else "#" * level + f" {title}", ""]
    lines += [f"```text\n{path} {' '.join(command.collect_usage_pieces(context))}\n```", ""]
    help_text = inspect.cleandoc(command.help or "")
    examples = []
    for paragraph in help_text.split("\n\n"):
        paragraph = " ".join(paragraph.split())
        if paragraph.startswith("Example:"):
            examples.append(paragraph.removeprefix("Example:").strip())
        elif paragraph:
            lines += [escape(paragraph), ""]
    arguments = [p for p in command.params if p.param_type_name == "argument"]
    options = [p for p in command.params if p.param_type_name == "option" and not p.hidden]
    if arguments:
        lines += ["**Arguments**", ""] + [parameter_item(p, context) for p in arguments] + [""]
    if options:
        lines += ["**Options**", ""] + [parameter_item(p, context) for p in options] + [""]
    if hasattr(command, "list_commands"):
        names = [name for name in command.list_commands(context) if not command.get_command(context, name).hidden]
        if names and context.parent is not None:
            lines += ["**Commands**: " + ", ".join(f"[`{path} {name}`](#{slug(path + ' ' + name)})" for name in names), ""]
    for example in examples:
        # "elite ui --port 7860 then open http://...": the commands in code, the words between as text.
        lines += ["**Example**: " + " then ".join(code(part) if part.startswith("elite") else escape(part) for part in example.split(" then ")), ""]
    return lines


def parameter_item(parameter, context) -> str:
    record = parameter.get_help_record(context)
    if record is None:
        name, help_text = " ".join(parameter.opts), parameter.help or ""
    else:
        name, help_text = record
    help_text = " ".join(help_text.split())
    extras = {}
    bracket = re.search(r"\s*\[([^\[\]]*)\]$", help_text)
    if bracket and re.match(r"(default|env var|required)", bracket.group(1)):
        help_text = help_text[: bracket.start()]
        for part in bracket.group(1).split(";"):
            key, _, value = part.strip().partition(":")
            extras[key.strip()] = value.strip()
    variables = [extras["env var"]] if extras.get("env var") else []
    variables += [v for v in re.findall(r"\benv (ELITE_\w+|HF_\w+)", help_text) if v not in variables]
    help_text = re.sub(r"\s*\(env [A-Z_]+\)", "", help_text)  # said once, below
    item = f"- {code(name)}: {escape(help_text)}"
    if "required" in extras:
        item += " *Required.*"
    if extras.get("default"):
        item += f" Default: {code(extras['default'])}."
    if variables:
        item += " Environment: " + ", ".join(code(v) for v in variables) + "."
    return item


def slug(text: str) -> str:
    """The anchor mkdocs' toc gives a heading (its default slugify)."""
    from markdown.extensions.toc import slugify

    return slugify(text, "-")


def code(text: str) -> str:
    ticks = "``" if "`" in text else "`"
    pad = " " if ticks == "``" else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def escape(text: str) -> str:
    """Help text as markdown: code spans kept, `<name>` and `*` outside them shown as typed."""
    parts = re.split(r"(`[^`]*`)", text)
    for index in range(0, len(parts), 2):
        parts[index] = parts[index].replace("&", "&amp;").replace("<", "&lt;").replace("*", r"\*").replace("_", r"\_")
    return "".join(parts)


# ---------------------------------------------------------------------------------------------
# Every error message, read from the source

ERROR_CLASSES = {"EliteError", "InputError", "ModelError", "LibraryError", "IndexUnreadable",
                 "ConceptNotFound", "NameClash", "FormatError", "BadParameter"}

# Folders and files in the order the troubleshooting page lists them, with their headings.
AREAS = [
    ("commands/", "Command line and arguments"),
    ("api.py", "Command line and arguments"),
    ("common/config.py", "Settings and config.toml"),
    ("common/", "Files, memory and disk"),
    ("model/hub.py", "Models, downloads and mirrors"),
    ("model/loading.py", "Models, downloads and mirrors"),
    ("model/mapper_files.py", "Models, downloads and mirrors"),
    ("model/tiny.py", "Models, downloads and mirrors"),
    ("model/", "Pictures, masks and prompts"),
    ("library/", "The concept library"),
    ("generation/", "Generating"),
    ("ui/", "The web UI"),
    ("training/", "Training"),
    ("evaluation/", "Evaluation"),
]


def area_of(relative: str) -> str:
    for prefix, title in AREAS:
        if relative.startswith(prefix):
            return title
    return "Other"


def error_messages() -> tuple[dict[str, dict[str, str]], int]:
    """{area: {message: 'InputError, elite_cli/x.py'}} of every literal message, and the number of
    raise sites whose message is composed at run time (not listed)."""
    found: dict[str, dict[str, str]] = {}
    composed = 0
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        constants = {node.targets[0].id: node.value for node in tree.body
                     if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
                     and isinstance(node.value, (ast.Constant, ast.JoinedStr))}
        for node, kind in message_nodes(tree, constants):
            text = render(node, constants)
            if text is None:
                composed += 1
                continue
            found.setdefault(area_of(relative), {}).setdefault(text, f"{kind}, elite_cli/{relative}")
    return found, composed


def message_nodes(tree: ast.AST, constants: dict[str, ast.expr]):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in ERROR_CLASSES and node.args:
                yield node.args[0], name
            elif name in {"echo", "message_html"} and node.args and starts_with_error(node.args[0]):
                yield node.args[0], "printed"
        elif isinstance(node, ast.FunctionDef) and node.name == "user_message":
            for inner in ast.walk(node):
                if isinstance(inner, ast.Return) and inner.value is not None:
                    value = constants.get(inner.value.id) if isinstance(inner.value, ast.Name) else inner.value
                    if isinstance(value, (ast.Constant, ast.JoinedStr)) and not (
                            isinstance(value, ast.Constant) and value.value is None):
                        yield value, "system error"


def starts_with_error(node: ast.expr) -> bool:
    text = render(node)
    return bool(text) and text.startswith("Error: ") and text != "Error: …"


def render(node: ast.expr, constants: dict[str, ast.expr] | None = None) -> str | None:
    """The message's text with each run-time value as `…` (a module's string constant is spelt
    out); None when nothing of it is literal."""
    constants = constants or {}
    if isinstance(node, ast.Name) and node.id in constants:
        return render(constants[node.id])
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        text = node.value
    elif isinstance(node, ast.JoinedStr):
        text = "".join(part.value if isinstance(part, ast.Constant)
                       else render(part.value, constants) or "…" if isinstance(part.value, ast.Name)
                       else "…" for part in node.values)
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = render(node.left, constants), render(node.right, constants)
        text = None if left is None and right is None else (left or "…") + (right or "…")
    else:
        return None
    if text is None or not text.strip("… "):
        return None
    return " ".join(text.removeprefix("Error: ").split())


def error_list_markdown() -> str:
    found, composed = error_messages()
    order = list(dict.fromkeys(title for _, title in AREAS)) + ["Other"]
    total = sum(len(messages) for messages in found.values())
    lines = [f"{total} messages, read from the source when this site was built (`…` stands for what the "
             f"message names at run time: a file, a value, a concept). Besides these, {composed} "
             f"{'place passes' if composed == 1 else 'places pass'} on a message composed elsewhere.", ""]
    for title in order:
        if title not in found:
            continue
        lines += [f"### {title}", ""]
        for message, origin in sorted(found[title].items(), key=lambda item: item[0].lower()):
            lines.append(f"- {code(message)} <small>({origin})</small>")
        lines.append("")
    return "\n".join(lines)
