"""The Hugging Face Hub both ways, against the Hub-compatible server of tests/hub_server.py on 127.0.0.1.

In this process the client is pointed at the server by patching ``huggingface_hub.constants`` (it reads
``HF_ENDPOINT`` and friends at import: ``hub_server.hub_client``); the PyTorch reference runs in a subprocess
that gets plain environment variables (``hub_server.client_env``). Both send LFS-mode files through the
git-LFS batch API (``HF_HUB_DISABLE_XET=1``: with ``hf_xet`` installed the client would use Xet storage).

Round trip: a tiny SentenceTransformer is trained with ``push_to_hub=True, hub_strategy="checkpoint"`` -> the
repo holds the final model (``model.safetensors`` uploaded through LFS) and ``last-checkpoint/`` -> the repo
id loads in stcore_jax and in sentence-transformers (PyTorch) with equal embeddings. A CrossEncoder and a
SparseEncoder go through ``push_to_hub`` and load back the same way.
"""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from datasets import Dataset
from hub_server import HubServer, client_env, hub_client

import tiny_models
from stcore_jax import (
    CrossEncoder,
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments as Args,
    SparseEncoder,
)
from stcore_jax.training import TrainerCallback, checkpoint
from stcore_jax.training.hub_upload import HubUploader, HubUploadError

TEXTS = [s for s in tiny_models.SENTENCES if s]
PAIRS = list(zip(TEXTS, TEXTS[1:] + TEXTS[:1]))
CE_PAIRS = PAIRS
SCORES = [0.1, 0.9, 0.3, 0.7, 0.5, 0.2]


def _train_data():
    """Scored pairs for the default CoSENTLoss (a pair loss: every row trains, whatever the batch)."""
    return Dataset.from_dict({"sentence1": [a for a, _ in PAIRS], "sentence2": [b for _, b in PAIRS],
                              "score": SCORES})


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    home = str(tmp_path_factory.mktemp("hf_home"))
    with HubServer() as server, hub_client(server, home):
        server.home = home
        yield server


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, minilm_path):
    root = tmp_path_factory.mktemp("tiny_hub")
    hf = tiny_models.build_hf("bert", str(root / "hf"), str(minilm_path), TEXTS)
    return {"hf": hf, "st": tiny_models.build_st(hf, str(root / "st"), max_seq_length=32),
            "mlm": _tiny_mlm(hf, str(root / "mlm"))}


def _tiny_mlm(hf: str, out: str) -> str:
    """A random BertForMaskedLM beside the tiny encoder (same tokenizer): a SPLADE SparseEncoder loads it."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    BertForMaskedLM(BertConfig.from_pretrained(hf)).save_pretrained(out)
    AutoTokenizer.from_pretrained(hf).save_pretrained(out)
    return out


def _uploader(trainer) -> HubUploader:
    return next(cb for cb in trainer.callbacks if isinstance(cb, HubUploader))


class _CheckConcurrent(TrainerCallback):
    """At the end of step 2, the push of checkpoint-1 must still be in flight (its commit held by the server):
    step 2 ran while it uploaded. Then lets it through."""

    def __init__(self, hub, gate):
        self.hub, self.gate, self.seen = hub, gate, None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 2:
            deadline = time.monotonic() + 60
            while self.hub.held == 0 and time.monotonic() < deadline:  # the upload thread reaches the commit
                time.sleep(0.05)
            self.seen = self.hub.held
            self.gate.set()


@pytest.fixture(scope="module")
def trained(hub, tiny, tmp_path_factory):
    """Train 2 steps, saving (and pushing) after each, hub_strategy="checkpoint", default hub_model_id."""
    out = str(tmp_path_factory.mktemp("run") / "tiny-st-hub")
    model = SentenceTransformer(tiny["st"])
    gate = hub.hold("POST", r"^/api/models/[^/]+/tiny-st-hub/commit/")
    check = _CheckConcurrent(hub, gate)
    args = Args(output_dir=out, max_steps=2, per_device_train_batch_size=1, learning_rate=5e-2, save_steps=1,
                logging_steps=1, disable_tqdm=True, push_to_hub=True, hub_strategy="checkpoint")
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=_train_data(), callbacks=[check])
    try:
        trainer.train()
    finally:
        gate.set()  # never leave the server holding a commit
    return {"out": out, "uploader": _uploader(trainer), "check": check, "repo": _uploader(trainer).repo_id,
            "embeddings": SentenceTransformer(os.path.join(out, "final")).encode(TEXTS)}


@pytest.fixture(scope="module")
def others(hub, tiny):
    """A CrossEncoder (private repo) and a SparseEncoder (SPLADE: MLMTransformer + SpladePooling) pushed with
    ``push_to_hub``, with their outputs before the push."""
    ce = CrossEncoder(tiny["hf"], num_labels=1)
    ce_url = ce.push_to_hub("test-org/tiny-ce", private=True)
    sparse = SparseEncoder(tiny["mlm"])
    sparse_url = sparse.push_to_hub("test-org/tiny-sparse")
    return {"ce": ce, "ce_url": ce_url, "ce_scores": ce.predict(CE_PAIRS), "sparse": sparse,
            "sparse_url": sparse_url, "sparse_emb": sparse.encode(TEXTS)}


REFERENCE = textwrap.dedent("""
    import json, sys
    import numpy as np
    from sentence_transformers import CrossEncoder, SentenceTransformer
    spec = json.loads(sys.argv[1])
    out = {}
    for key, (cls, repo, revision) in spec["models"].items():
        if cls == "st":
            out[key] = SentenceTransformer(repo, revision=revision, device="cpu").encode(spec["texts"])
        else:
            out[key] = CrossEncoder(repo, revision=revision, device="cpu").predict(spec["pairs"])
    np.savez(spec["out"], **out)
""")


@pytest.fixture(scope="module")
def reference(hub, trained, others, tmp_path_factory):
    """sentence-transformers (PyTorch) in a subprocess, loading the pushed repos by id through HF_ENDPOINT."""
    root = tmp_path_factory.mktemp("ref")
    first = trained["uploader"].commits[0][1].rsplit("/", 1)[1]  # the push of checkpoint-1
    spec = {"texts": TEXTS, "pairs": CE_PAIRS, "out": str(root / "out.npz"),
            "models": {"st": ["st", trained["repo"], None], "st_step1": ["st", trained["repo"], first],
                       "ce": ["ce", "test-org/tiny-ce", None]}}
    env = {**os.environ, **client_env(hub, str(root / "home"))}
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, "-c", REFERENCE, json.dumps(spec)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(np.load(spec["out"]))


# -- the training run's pushes ---------------------------------------------------------------------------
def test_training_pushes_in_the_background_through_lfs(hub, trained):
    repo, out = trained["repo"], trained["out"]
    assert repo == "test-user/tiny-st-hub"  # hub_model_id defaults to output_dir's name, in the token's namespace
    # Step 2 ran while checkpoint-1's push was in flight (the server held its commit): uploads never block steps.
    assert trained["check"].seen >= 1
    files = hub.repo_files(repo)
    weights = files["model.safetensors"]
    assert weights["lfs"] is not None and weights["lfs"]["oid"] == _sha256(os.path.join(out, "final",
                                                                                          "model.safetensors"))
    assert weights["lfs"]["oid"] in hub.lfs_uploads  # PUT through the LFS basic transfer, verified, committed
    assert files["config.json"]["lfs"] is None  # small text files go inline
    assert "README.md" in files and "1_Pooling/config.json" in files
    # hub_strategy="checkpoint": the whole latest checkpoint, resumable, and nothing of an earlier one.
    ckpt = {p[len("last-checkpoint/"):] for p in files if p.startswith("last-checkpoint/")}
    local = {os.path.relpath(os.path.join(d, f), os.path.join(out, "checkpoint-2")).replace(os.sep, "/")
             for d, _, fs in os.walk(os.path.join(out, "checkpoint-2")) for f in fs}
    assert ckpt == local and "trainer_state.json" in ckpt and any(p.startswith("state/") for p in ckpt)
    assert json.loads(hub.read(repo, "last-checkpoint/trainer_state.json"))["global_step"] == 2
    titles = [t for _, t in hub.history(repo)]
    assert titles[0] == "End of training"
    assert "Training in progress, step 2, checkpoint" in titles
    assert [w for w, _ in trained["uploader"].commits][-1] == "the final model"
    assert not [n for n in os.listdir(out) if n.startswith(".hub-upload-")]  # staging cleaned up


def test_pushed_model_loads_by_repo_id_in_stcore_jax_and_pytorch(hub, trained, reference, tmp_path):
    ours = SentenceTransformer(trained["repo"], cache_folder=str(tmp_path / "cache"))
    assert not os.path.exists(os.path.join(ours.model_path, "last-checkpoint"))  # the model's files only
    np.testing.assert_allclose(ours.encode(TEXTS), trained["embeddings"], rtol=0, atol=1e-6)
    # The PyTorch reference loads the same repo id through HF_ENDPOINT: equal embeddings.
    np.testing.assert_allclose(reference["st"], trained["embeddings"], rtol=0, atol=1e-5)
    # Control: checkpoint-1's push (an earlier commit) is a different model, so the comparison can fail.
    assert np.abs(reference["st_step1"] - trained["embeddings"]).max() > 1e-3


def test_revision_loads_an_earlier_commit(hub, trained, reference, tmp_path):
    first = trained["uploader"].commits[0][1].rsplit("/", 1)[1]
    earlier = SentenceTransformer(trained["repo"], revision=first, cache_folder=str(tmp_path / "c"))
    np.testing.assert_allclose(earlier.encode(TEXTS), reference["st_step1"], rtol=0, atol=1e-5)
    ckpt1 = SentenceTransformer(os.path.join(trained["out"], "checkpoint-1"))  # the local checkpoint it came from
    np.testing.assert_allclose(earlier.encode(TEXTS), ckpt1.encode(TEXTS), rtol=0, atol=1e-6)


def test_local_files_only_after_download_makes_no_request(hub, trained, tmp_path):
    cache = str(tmp_path / "cache")
    SentenceTransformer(trained["repo"], cache_folder=cache)
    before = len(hub.requests)
    offline = SentenceTransformer(trained["repo"], cache_folder=cache, local_files_only=True)
    assert len(hub.requests) == before
    np.testing.assert_allclose(offline.encode(TEXTS), trained["embeddings"], rtol=0, atol=1e-6)
    with pytest.raises(OSError, match="local_files_only"):
        SentenceTransformer(trained["repo"], cache_folder=str(tmp_path / "empty"), local_files_only=True)


# -- push_to_hub on every family ---------------------------------------------------------------------------
def test_cross_encoder_push_private_and_load(hub, others, reference, tmp_path):
    url = others["ce_url"]
    assert url == f"{hub.endpoint}/test-org/tiny-ce/commit/{hub.history('test-org/tiny-ce')[0][0]}"
    assert hub.history("test-org/tiny-ce")[0][1] == "Add new CrossEncoder model"
    files = hub.repo_files("test-org/tiny-ce")
    assert files["model.safetensors"]["lfs"] is not None and "README.md" in files
    loaded = CrossEncoder("test-org/tiny-ce", cache_folder=str(tmp_path / "c"))
    np.testing.assert_allclose(loaded.predict(CE_PAIRS), others["ce_scores"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(reference["ce"], others["ce_scores"], rtol=0, atol=1e-5)
    # Private: without the owner's token the repo is not found (token reaches the download).
    with pytest.raises(OSError, match="could not be fetched"):
        CrossEncoder("test-org/tiny-ce", cache_folder=str(tmp_path / "anon"), token=False)


def test_sparse_encoder_push_and_load(hub, others, tmp_path):
    files = hub.repo_files("test-org/tiny-sparse")
    assert files["model.safetensors"]["lfs"] and "1_SpladePooling/config.json" in files and "tokenizer.json" in files
    loaded = SparseEncoder("test-org/tiny-sparse", cache_folder=str(tmp_path / "c"))
    assert [type(m).__name__ for m in loaded] == [type(m).__name__ for m in others["sparse"]]
    np.testing.assert_allclose(loaded.encode(TEXTS), others["sparse_emb"], rtol=0, atol=1e-6)


def test_push_to_hub_branch_pr_and_model_card(hub, trained, tiny, tmp_path):
    repo = trained["repo"]
    untrained = SentenceTransformer(tiny["st"])
    with pytest.raises(Exception, match="409|already"):  # an existing repo needs exist_ok, as the reference
        untrained.push_to_hub(repo)
    readme, main_weights = hub.read(repo, "README.md"), hub.repo_files(repo)["model.safetensors"]
    untrained.push_to_hub(repo, revision="untrained", exist_ok=True)
    assert hub.read(repo, "README.md", revision="untrained") == readme  # the repo's card is kept...
    untrained.push_to_hub(repo, revision="untrained", exist_ok=True, replace_model_card=True)
    assert hub.read(repo, "README.md", revision="untrained") != readme  # ...unless replace_model_card
    assert hub.repo_files(repo)["model.safetensors"] == main_weights  # main is untouched
    branch = SentenceTransformer(repo, revision="untrained", cache_folder=str(tmp_path / "c"))
    np.testing.assert_allclose(branch.encode(TEXTS), untrained.encode(TEXTS), rtol=0, atol=1e-6)
    assert np.abs(branch.encode(TEXTS) - trained["embeddings"]).max() > 1e-3  # the branch holds another model
    pr = untrained.push_to_hub(repo, create_pr=True, commit_message="Try the untrained one")
    assert pr.startswith(f"{hub.endpoint}/{repo}/discussions/")
    number = pr.rsplit("/", 1)[1]
    via_pr = SentenceTransformer(repo, revision=f"refs/pr/{number}", cache_folder=str(tmp_path / "c"))
    np.testing.assert_allclose(via_pr.encode(TEXTS), untrained.encode(TEXTS), rtol=0, atol=1e-6)
    assert hub.history(repo)[0][1] == "End of training"  # a pull request does not touch main
    # local_model_path: that directory, as it is (train_datasets: accepted and ignored, as sentence-transformers 6).
    untrained.push_to_hub(repo, local_model_path=tiny["st"], revision="as-saved", exist_ok=True, train_datasets=["x"])
    assert hub.read(repo, "model.safetensors", revision="as-saved") == open(
        os.path.join(tiny["st"], "model.safetensors"), "rb").read()


# -- failures ----------------------------------------------------------------------------------------------
def test_failed_push_keeps_local_checkpoint_and_names_it(hub, tiny, tmp_path):
    out = str(tmp_path / "tiny-st-fail")
    args = Args(output_dir=out, max_steps=2, per_device_train_batch_size=1, learning_rate=5e-2, save_steps=1,
                disable_tqdm=True, push_to_hub=True, hub_model_id="test-org/tiny-st-fail",
                hub_strategy="all_checkpoints")
    hub.fail("POST", r"^/api/models/test-org/tiny-st-fail/commit/", status=500, times=1)  # checkpoint-1's commit
    trainer = SentenceTransformerTrainer(model=SentenceTransformer(tiny["st"]), args=args, train_dataset=_train_data())
    with pytest.raises(HubUploadError, match=r"test-org/tiny-st-fail.*\n.*checkpoint-1 \(step 1\).*500") as err:
        trainer.train()
    assert os.path.join(out, "checkpoint-1") in str(err.value)
    assert trainer.state.global_step == 2  # the failure did not stop training
    assert checkpoint.is_checkpoint(os.path.join(out, "checkpoint-1"))  # the local checkpoint is intact
    assert os.path.isfile(os.path.join(out, "final", "model.safetensors"))  # and the final model is written
    files = hub.repo_files("test-org/tiny-st-fail")
    assert "checkpoint-2/trainer_state.json" in files and not any(p.startswith("checkpoint-1/") for p in files)
    assert "model.safetensors" in files  # the later pushes went through
    assert not [n for n in os.listdir(out) if n.startswith(".hub-upload-")]


def test_hub_arguments_are_validated(tmp_path):
    for bad, match in [({"hub_strategy": "sometimes"}, "hub_strategy"), ({"hub_model_id": "a/b/c"}, "hub_model_id"),
                       ({"hub_private_repo": "yes"}, "hub_private_repo"), ({"push_to_hub": "true"}, "push_to_hub"),
                       ({"hub_token": ""}, "hub_token")]:
        with pytest.raises(ValueError, match=match):
            Args(output_dir=str(tmp_path), **bad)
    args = Args(output_dir=str(tmp_path), push_to_hub=True, hub_token="hf_secret")
    assert args.hub_strategy == "every_save" and args.to_dict()["hub_token"] == "<HUB_TOKEN>"


def test_bad_token_fails_before_the_first_step(hub, tiny, tmp_path):
    args = Args(output_dir=str(tmp_path / "o"), max_steps=1, per_device_train_batch_size=1, disable_tqdm=True,
                push_to_hub=True, hub_token="hf_not_a_token", save_strategy="no")
    trainer = SentenceTransformerTrainer(model=SentenceTransformer(tiny["st"]), args=args, train_dataset=_train_data())
    with pytest.raises(HubUploadError, match="hub_token"):
        trainer.train()
    assert trainer.state.global_step == 0


# -- a training config that names Hub repos ------------------------------------------------------------------
CONFIG_RUN = textwrap.dedent("""
    import json, sys
    from stcore_jax.config import load_config
    from stcore_jax.config.build import build_datasets, build_model
    cfg = load_config(sys.argv[1])
    model = build_model(cfg)
    train, _ = build_datasets(cfg)
    print(json.dumps({"model": type(model).__name__, "path": model.model_path, "rows": train.to_dict()}))
""")


def test_config_names_a_hub_model_and_a_hub_parquet_dataset(hub, trained, tmp_path):
    """``model.name_or_path`` and ``data.train`` as repo ids, resolved through HF_ENDPOINT by a fresh process (what
    ``stcore-jax train`` builds before training): the model snapshot and the dataset's parquet rows."""
    from huggingface_hub import HfApi

    rows = {"sentence1": [a for a, _ in PAIRS], "sentence2": [b for _, b in PAIRS], "score": SCORES}
    data = tmp_path / "data"
    os.makedirs(data / "data")
    Dataset.from_dict(rows).to_parquet(str(data / "data" / "train-00000-of-00001.parquet"))
    api = HfApi()
    api.create_repo("test-org/tiny-pairs", repo_type="dataset")
    api.upload_folder(repo_id="test-org/tiny-pairs", repo_type="dataset", folder_path=str(data),
                      commit_message="Add data")
    assert hub.repo_files("test-org/tiny-pairs", repo_type="dataset")[
        "data/train-00000-of-00001.parquet"]["lfs"] is not None
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {{name_or_path: {trained['repo']}, max_seq_length: 32}}\n"
                      "data: {train: test-org/tiny-pairs}\nloss: {name: CoSENTLoss}\n"
                      f"arguments: {{output_dir: {tmp_path / 'out'}, max_steps: 1}}\n")
    env = {**os.environ, **client_env(hub, str(tmp_path / "home"))}
    proc = subprocess.run([sys.executable, "-c", CONFIG_RUN, str(config)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["model"] == "SentenceTransformer" and "models--test-user--tiny-st-hub" in out["path"]
    assert out["rows"] == rows
