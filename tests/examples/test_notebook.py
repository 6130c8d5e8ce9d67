"""The Colab notebook's code cells, run in order on a tiny model and a slice of local STS-B.

Shell lines (``!``/``%``) are the install step and are skipped; every other line runs verbatim. The
settings cell runs too, then the test points its variables at local, tiny inputs.
"""

import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTEBOOK = os.path.join(ROOT, "examples", "colab_quickstart.ipynb")


def test_notebook_cells_run(tiny_st, stsb_dir, tmp_path, capsys):
    with open(NOTEBOOK, encoding="utf-8") as f:
        nb = json.load(f)
    code_cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert any("save_pretrained" in c for c in code_cells) and any("TorchSentenceTransformer" in c for c in code_cells)
    ns = {}
    for src in code_cells:
        src = "\n".join(line for line in src.splitlines() if not line.lstrip().startswith(("!", "%")))
        exec(compile(src, NOTEBOOK, "exec"), ns)  # noqa: S102 - the notebook's own code
        if "OUTPUT_DIR =" in src:  # the settings cell: tiny local inputs for the test
            ns.update(MODEL=tiny_st, DATA_DIR=str(stsb_dir), MAX_ROWS=48, MAX_STEPS=2, BATCH_PER_DEVICE=2, MAX_SEQ_LENGTH=8,
                      OUTPUT_DIR=str(tmp_path))
    assert os.path.isfile(os.path.join(tmp_path, "export", "modules.json"))
    assert ns["trainer"].state.global_step == 2
    losses = [r["loss"] for r in ns["trainer"].state.log_history if "loss" in r]
    assert losses and all(abs(v) < float("inf") for v in losses)
    assert ns["max_diff"] < 1e-4  # the notebook asserts this too
    assert "max abs embedding difference, PyTorch vs JAX" in capsys.readouterr().out
