"""The package's folders are its layers, and each imports only the layers below it (docs/contributing.md,
"The layers"). Read from the source, so a lazy import inside a function counts as well."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "elite_cli"

# Lowest first. A module may import its own layer and any layer with a smaller rank.
LAYERS = {
    "elite_cli": 0,  # the package face: __version__
    "elite_cli.errors": 0,
    "elite_cli.common": 1,
    "elite_cli.model": 2,
    "elite_cli.library": 3,
    "elite_cli.generation": 4,
    "elite_cli.training": 5,
    "elite_cli.evaluation": 5,
    "elite_cli.api": 6,
    "elite_cli.ui": 7,
    "elite_cli.commands": 8,
}
TOP_LEVEL = {"__init__.py", "__main__.py", "api.py", "errors.py"}


def layer_of(module: str) -> str:
    """The layer a dotted module name belongs to: its longest prefix in LAYERS."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in LAYERS:
            return ".".join(parts[:end])
    raise AssertionError(f"{module} is in no layer; add its folder to LAYERS (and to the table in docs/contributing.md)")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("elite_cli"):
            if node.module == "elite_cli":  # `from elite_cli import __version__`
                found.extend((node.lineno, f"elite_cli.{alias.name}") for alias in node.names
                             if not alias.name.startswith("__"))
                found.append((node.lineno, "elite_cli"))
            else:
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names if alias.name.startswith("elite_cli"))
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}:{node.lineno}: relative import; write the full elite_cli name")
    return found


def upward_imports() -> list[str]:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__main__.py":  # entry points (`python -m ...`) start the top layer
            continue
        importer = layer_of(module_name(path))
        for line, imported in imported_modules(path):
            target = layer_of(imported)
            if target != importer and LAYERS[target] >= LAYERS[importer]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({importer}) imports {imported} ({target})")
    return wrong


def test_each_layer_imports_only_the_layers_below_it():
    assert upward_imports() == []


def test_the_top_of_the_package_holds_only_its_face():
    assert {path.name for path in PACKAGE.glob("*.py")} == TOP_LEVEL
    folders = {f"elite_cli.{path.name}" for path in PACKAGE.iterdir() if (path / "__init__.py").is_file()}
    assert folders == {name for name in LAYERS if name.count(".") == 1 and not name.endswith((".api", ".errors"))}


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    # The check itself must be able to fail: a model module importing the library is caught.
    package = tmp_path / "elite_cli"
    (package / "model").mkdir(parents=True)
    (package / "library").mkdir()
    for folder in (package, package / "model", package / "library"):
        (folder / "__init__.py").write_text("")
    (package / "model" / "masks.py").write_text("def f():\n    from elite_cli.library.conceptfile import sha256_bytes\n")
    (package / "library" / "store.py").write_text("from elite_cli.model import masks\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
    assert upward_imports() == ["elite_cli/model/masks.py:2 (elite_cli.model) imports elite_cli.library.conceptfile "
                                "(elite_cli.library)"]


# A command parses, calls the layer below, prints (issue 16): one that grows past a screen is
# doing the layer below's work. Counted from `def` to the last line, signature included.
LONGEST_COMMAND_FUNCTION = 50


def long_functions(folder: Path, limit: int) -> list[str]:
    found = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{node.name}:{length}")
    return found


def test_no_command_function_is_longer_than_a_screen():
    assert long_functions(PACKAGE / "commands", LONGEST_COMMAND_FUNCTION) == []


def test_the_length_check_sees_a_long_function(tmp_path, monkeypatch):
    package = tmp_path / "elite_cli"
    (package / "commands").mkdir(parents=True)
    body = "".join(f"    x{number} = {number}\n" for number in range(50))
    (package / "commands" / "long.py").write_text(f"def short():\n    pass\n\n\ndef command(\n    a,\n):\n{body}")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
    assert long_functions(PACKAGE / "commands", LONGEST_COMMAND_FUNCTION) == ["elite_cli/commands/long.py:command:53"]
