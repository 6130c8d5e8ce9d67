"""The quickstart's embedded data. The job itself runs in CI after the tests (``.ci/run``), where
``quickstart_check.py`` checks its numbers and model card: the suite does not run it a second time."""


def test_embedded_data_is_held_out():
    """Evaluation sentences never appear in training, and every score level is present in both splits."""
    from stcore_jax.quickstart.data import pairs

    train, held_out = pairs("train"), pairs("eval")
    train_sentences = {s for a, b, _ in train for s in (a, b)}
    assert not train_sentences & {s for a, b, _ in held_out for s in (a, b)}
    assert {s for *_, s in train} == {s for *_, s in held_out} == {0.0, 0.2, 1.0}
    assert len(train) > 300 and len(held_out) > 200
