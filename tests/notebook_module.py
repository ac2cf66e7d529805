"""Load the notebook's definition cells (imports, functions, classes, UPPER_CASE constants) as a module.

Heavy cells (model building, training, plotting) are skipped: only top-level statements of the kinds
below are kept, so tests exercise exactly the code the notebook runs, without a second copy of it.
"""
from __future__ import annotations

import ast
import pathlib
import types

import nbformat

NOTEBOOK_PATH = pathlib.Path(__file__).resolve().parent.parent / "TinyZero_AstarPO.ipynb"
_DEFINITION_NODES = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _is_constant(node: ast.stmt) -> bool:
    targets = []
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, ast.AnnAssign) and node.value is not None:
        targets = [node.target]
    return bool(targets) and all(isinstance(t, ast.Name) and t.id.isupper() for t in targets)


def definition_source(notebook_path: pathlib.Path = NOTEBOOK_PATH) -> str:
    notebook = nbformat.read(str(notebook_path), as_version=4)
    kept = []
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        source = "\n".join(l for l in cell.source.splitlines() if not l.lstrip().startswith(("%", "!")))
        for node in ast.parse(source).body:
            if isinstance(node, _DEFINITION_NODES) or _is_constant(node):
                first_line = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
                kept.append("\n".join(source.splitlines()[first_line - 1 : node.end_lineno]))
    return "\n\n".join(kept)


def load_notebook_module(notebook_path: pathlib.Path = NOTEBOOK_PATH) -> types.ModuleType:
    module = types.ModuleType("tinyzero_notebook")
    module.__file__ = str(notebook_path)
    import sys
    if str(notebook_path.parent) not in sys.path:  # as in a kernel started beside it: the package beside it imports
        sys.path.insert(0, str(notebook_path.parent))
    sys.modules[module.__name__] = module  # dataclasses and pickling look the module up by name
    # dont_inherit: compiled as the notebook kernel compiles it, without this file's __future__ imports
    exec(compile(definition_source(notebook_path), str(notebook_path), "exec", dont_inherit=True), module.__dict__)
    return module
