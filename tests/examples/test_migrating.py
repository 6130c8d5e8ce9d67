"""examples/MIGRATING.md: each sentence-transformers script (bi-encoder, CrossEncoder) and its port differ only in
import lines."""

import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _scripts():
    """The python blocks: (reference, port) pairs, the bi-encoder's then the CrossEncoder's."""
    with open(os.path.join(ROOT, "examples", "MIGRATING.md"), encoding="utf-8") as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    assert len(blocks) == 4
    assert "SentenceTransformerTrainer" in blocks[0] and "CrossEncoderTrainer" in blocks[2]
    return blocks


def _imports(tree):
    return [(n.module, tuple(a.name for a in n.names)) for n in tree.body if isinstance(n, ast.ImportFrom)]


@pytest.mark.parametrize("pair", [0, 1], ids=["sentence_transformer", "cross_encoder"])
def test_port_differs_only_in_imports(pair):
    reference, port = _scripts()[2 * pair: 2 * pair + 2]
    assert reference.startswith("from datasets") and "sentence_transformers" in reference
    ref_lines = [line for line in reference.splitlines() if not line.startswith(("from ", "import "))]
    port_lines = [line for line in port.splitlines() if not line.startswith(("from ", "import "))]
    assert ref_lines == port_lines
    ref_imports, port_imports = _imports(ast.parse(reference)), _imports(ast.parse(port))
    assert [names for _, names in ref_imports] == [names for _, names in port_imports]
    assert [m.replace("sentence_transformers", "stcore_jax") for m, _ in ref_imports] == [m for m, _ in port_imports]


def test_every_imported_name_exists_in_both_libraries():
    import importlib

    for script in _scripts():
        for module, names in _imports(ast.parse(script)):
            mod = importlib.import_module(module)
            for name in names:
                assert hasattr(mod, name), f"{module}.{name}"
