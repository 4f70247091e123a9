"""Data loaders against the real files in ../shared/datasets, label maps, splits and augmentation."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from fer_demo.labels import CONTEMPT, EXPRESSIONS
from fer_demo.models import get_card
from fer_demo.preprocess import prepare
from tests.conftest import needs_data
from training.augment import AugmentConfig, random_similarity
from training.data import (
    CKPLUS_CLASSES,
    POSED_FACE_BOX,
    ckplus_folds,
    ferplus_majority,
    identity_probe_split,
    load_ckplus,
    load_cross,
    load_fer2013,
    load_ferplus,
    load_posed,
    load_posed_like_ckplus,
    prepare_in_chunks,
    to_ckplus_head,
)


def test_ferplus_majority_rules():
    votes = np.array(
        [
            [0, 10, 0, 0, 0, 0, 0, 0, 0, 0],  # happiness -> happy
            [4, 0, 0, 1, 3, 0, 0, 0, 1, 0],  # single votes dropped: 4 of 7 -> neutral
            [3, 3, 2, 0, 0, 0, 0, 0, 1, 1],  # no strict majority -> -1
            [0, 0, 0, 0, 0, 0, 0, 6, 3, 0],  # contempt
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 10],  # not a face -> -1
        ]
    )
    assert ferplus_majority(votes).tolist() == [3, 6, -1, CONTEMPT, -1]


def test_ckplus_head_labels():
    assert to_ckplus_head(np.array([0, 5, CONTEMPT])).tolist() == [0, 5, 6]
    assert CKPLUS_CLASSES[6] == "contempt" and CKPLUS_CLASSES[:6] == EXPRESSIONS[:6]
    with pytest.raises(ValueError, match="neutral"):
        to_ckplus_head(np.array([6]))


def test_augment_identity_when_ranges_are_zero():
    x = torch.randn(4, 3, 16, 16)
    same = random_similarity(x, AugmentConfig(flip=False, rotation=0, scale=0, translate=0))
    assert torch.allclose(same, x, atol=1e-5)
    flipped = random_similarity(
        x, AugmentConfig(flip=True, rotation=0, scale=0, translate=0), torch.Generator().manual_seed(0)
    )
    for original, out in zip(x, flipped, strict=True):
        assert torch.allclose(out, original, atol=1e-5) or torch.allclose(out, original.flip(-1), atol=1e-5)


@needs_data
def test_fer2013_split_counts_match_the_published_numbers():
    counts = {
        "Training": [3995, 436, 4097, 7215, 4830, 3171, 4965],
        "PublicTest": [467, 56, 496, 895, 653, 415, 607],
        "PrivateTest": [491, 55, 528, 879, 594, 416, 626],
    }
    for split, expected in counts.items():
        faces = load_fer2013(split)
        assert faces.images.shape[1:] == (48, 48) and faces.images.dtype == np.uint8
        assert faces.class_counts()[:7].tolist() == expected
    assert len(load_fer2013("Training", drop_inexact=True)) < 28709


@needs_data
def test_ferplus_test_has_seven_expressions_only():
    faces = load_ferplus("PrivateTest")
    assert 3000 < len(faces) < 3589
    assert set(np.unique(faces.labels)) <= set(range(7))


@needs_data
def test_ckplus_subject_folds_never_share_a_subject():
    faces = load_ckplus()
    assert len(faces) == 981 and len(np.unique(faces.subjects)) == 118
    assert faces.class_counts()[CONTEMPT] == 54 and faces.class_counts()[6] == 0
    folds = ckplus_folds(faces)
    assert len(folds) == 10
    assert sorted(np.concatenate([test for _, test in folds]).tolist()) == list(range(981))
    for train, test in folds:
        assert not set(faces.subjects[train]) & set(faces.subjects[test])


@needs_data
def test_identity_probe_split_holds_out_other_sequences_of_the_same_subjects():
    faces = load_ckplus()
    train, test = identity_probe_split(faces)
    assert set(faces.subjects[test]) <= set(faces.subjects[train])
    train_pairs = set(zip(faces.subjects[train], faces.sequences[train], strict=True))
    assert not train_pairs & set(zip(faces.subjects[test], faces.sequences[test], strict=True))


@needs_data
@pytest.mark.parametrize("name", ["ckplus", "jaffe", "rafd_subset", "nimstim_subset", "yale_faces"])
def test_cross_datasets_load_in_the_seven_expression_space(name):
    faces = load_cross(name)
    assert len(faces) > 0 and faces.subjects is not None
    assert faces.labels.min() >= 0 and faces.labels.max() <= 6


@needs_data
def test_posed_faces_join_ckplus_framed_like_it_without_neutral():
    names = ["jaffe", "nimstim_subset", "yale_faces"]
    faces = load_posed_like_ckplus(names)
    expressive = [load_posed(name) for name in names]
    expressive = [posed.subset(posed.labels != EXPRESSIONS.index("neutral")) for posed in expressive]
    assert faces.images.shape == (sum(map(len, expressive)), 48, 48) == (183 + 73 + 44, 48, 48)
    assert set(faces.labels.tolist()) == set(range(6))  # the six basic expressions, no neutral
    assert (
        np.bincount(faces.labels).tolist()
        == np.sum([np.bincount(s.labels, minlength=6) for s in expressive], 0).tolist()
    )
    box = expressive[0].images[0][POSED_FACE_BOX]
    assert box.shape == (107, 106)  # the Haar box: 128 / 1.2 pixels
    assert np.abs(faces.images[0].astype(int) - cv2.resize(box, (48, 48), interpolation=cv2.INTER_AREA)).max() == 0
    assert len(load_posed_like_ckplus([])) == 0


@needs_data
def test_prepare_in_chunks_equals_prepare():
    faces = load_fer2013("PublicTest").images[:50]
    card = get_card("dacl")
    assert torch.equal(prepare_in_chunks(faces, card, chunk=16), prepare(faces, card))
