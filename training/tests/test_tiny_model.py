"""The suite's tiny nnU-Net: deterministic, checked before it is cached, keyed on what made it.

These train real (short) nnU-Net runs on 16 LIDC VOI slices: about 4 minutes on 2 cores.
"""
from __future__ import annotations

from dataclasses import replace

import pytest

from lidc_data import LIDC_DIR, needs_voi

pytestmark = needs_voi


def quick_settings(**changes):
    from nodulesam_train.tiny_model import TinySettings

    return replace(TinySettings(n_cases=16, n_check=4, epochs=1, iterations=6, val_iterations=1,
                                min_dice=0.0), **changes)


def weights(packaged):
    import json

    from NoduleSAMLib.detect import load_checkpoint

    card = json.loads((packaged / "model.json").read_text())
    return load_checkpoint(packaged / "fold_0" / card["checkpoint"])["network_weights"]


def test_two_trainings_in_fresh_folders_give_identical_weights(tmp_path):
    import torch

    from nodulesam_train.tiny_model import cached_model

    first = cached_model(tmp_path / "a", LIDC_DIR, quick_settings(), log=lambda *a: None)
    second = cached_model(tmp_path / "b", LIDC_DIR, quick_settings(), log=lambda *a: None)
    a, b = weights(first), weights(second)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "same seed, same machine: bit-identical weights"
    # the cached model is reused as it is: nothing is trained again
    stamp = (first / "fold_0" / "checkpoint_final.pth").stat().st_mtime_ns
    assert cached_model(tmp_path / "a", LIDC_DIR, quick_settings(), log=lambda *a: None) == first
    assert (first / "fold_0" / "checkpoint_final.pth").stat().st_mtime_ns == stamp
    # a cache written by other settings is not reused: they train a model of their own
    other = cached_model(tmp_path / "a", LIDC_DIR, quick_settings(iterations=5), log=lambda *a: None)
    assert other.parent != first.parent and (other / "model.json").is_file()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted([first.parent.name, other.parent.name])


def test_the_cache_key_names_settings_data_and_code():
    from nodulesam_train import tiny_model

    settings = quick_settings()
    train_ids, check_ids = tiny_model.case_ids(LIDC_DIR, settings)
    assert not set(train_ids) & set(check_ids) and len(train_ids) == 16 and len(check_ids) == 4
    key = tiny_model.cache_key(settings, train_ids, check_ids)
    assert tiny_model.cache_key(settings, train_ids, check_ids) == key
    assert tiny_model.cache_key(replace(settings, epochs=2), train_ids, check_ids) != key
    assert tiny_model.cache_key(replace(settings, seed=1), train_ids, check_ids) != key
    assert tiny_model.cache_key(settings, train_ids[:-1], check_ids) != key
    assert tiny_model.case_ids(LIDC_DIR, replace(settings, n_cases=15))[0] != train_ids


def test_an_untrained_model_is_caught_and_never_cached(tmp_path):
    from nodulesam_train.tiny_model import TinyModelError, cached_model

    messages = []
    with pytest.raises(TinyModelError, match="failed its check.*seed 0.*seed 1.*Nothing was cached"):
        cached_model(tmp_path, LIDC_DIR, quick_settings(epochs=0, min_dice=0.5), log=messages.append)
    assert len(messages) == 2  # tried with the next seed once
    assert not list(tmp_path.iterdir()), "no model, finished or partial, is left in the cache"
