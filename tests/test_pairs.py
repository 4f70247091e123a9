"""Pairs data for the neutral-face generators, checked against the real files of ../shared/datasets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import requires_pairs_data
from training.augment import AugmentConfig
from training.data import DEFAULT_DATA_DIR
from training.pairs import (
    FACE_SIZE,
    NEUTRAL,
    PAIR_SETS,
    PairBatches,
    frame_faces,
    guiding_faces,
    load_pair_data,
)


@pytest.fixture(scope="module")
def data():
    return load_pair_data()


@requires_pairs_data
def test_counts_per_set(data):
    faces = data.faces
    # Yale: 164 files minus 9 byte-identical duplicates (the neutral copy is kept).
    assert np.bincount(faces.sources).tolist() == [213, 155, 117, 110]
    assert len(np.unique(faces.subjects)) == 10 + 15 + 39 + 37
    assert faces.images.shape == (595, FACE_SIZE, FACE_SIZE) and faces.images.dtype == np.uint8
    assert np.bincount(faces.sources[faces.labels == NEUTRAL]).tolist() == [30, 15, 39, 37]
    yale = faces.filenames[faces.sources == PAIR_SETS.index("yale_faces")]
    assert "subject04.sad" not in yale and "subject02.noglasses" not in yale and "subject08.glasses" not in yale
    assert sum(name.endswith(".normal") for name in yale) == 15
    # 17 of 101 subjects held out: ceil(15%) of each set.
    assert len(data.train_subjects) == 84 and len(data.val_subjects) == 17
    assert len(data.train_pairs) + len(data.val_pairs) == 991


@requires_pairs_data
def test_split_is_subject_disjoint_complete_and_deterministic(data):
    assert not set(data.train_subjects) & set(data.val_subjects)
    assert set(data.train_subjects) | set(data.val_subjects) == set(data.faces.subjects)
    held_out_sets = set(data.val_subjects // 1000)
    assert held_out_sets == set(range(len(PAIR_SETS)))  # every source set is represented in validation
    again = load_pair_data()
    assert np.array_equal(again.val_subjects, data.val_subjects)
    other = load_pair_data(seed=1)
    assert not np.array_equal(other.val_subjects, data.val_subjects)


@requires_pairs_data
def test_pairs_are_same_subject_with_neutral_targets(data):
    faces = data.faces
    for pairs, subjects in ((data.train_pairs, data.train_subjects), (data.val_pairs, data.val_subjects)):
        inputs, targets = pairs[:, 0], pairs[:, 1]
        assert np.array_equal(faces.subjects[inputs], faces.subjects[targets])
        assert np.all(faces.labels[targets] == NEUTRAL)
        assert set(faces.subjects[inputs]) == set(subjects)
        # Every face of the side is an input; a face is its own target only when it is its subject's one neutral.
        assert set(inputs) == set(data.rows(subjects))
        for row in inputs[inputs == targets]:
            assert np.sum((faces.subjects == faces.subjects[row]) & (faces.labels == NEUTRAL)) == 1
    # JAFFE: each expressive face pairs with all three neutrals of its subject.
    jaffe = data.train_pairs[faces.sources[data.train_pairs[:, 0]] == 0]
    expressive = jaffe[faces.labels[jaffe[:, 0]] != NEUTRAL]
    assert np.all(np.unique(expressive[:, 0], return_counts=True)[1] == 3)


@requires_pairs_data
def test_guiding_set_is_the_training_neutrals(data):
    guiding = guiding_faces(data)
    train_neutral = np.isin(data.faces.subjects, data.train_subjects) & (data.faces.labels == NEUTRAL)
    assert np.array_equal(guiding, data.faces.images[train_neutral])
    if (DEFAULT_DATA_DIR / "fer2013.npz").is_file():
        assert len(guiding_faces(data, fer2013=True)) > len(guiding) + 4000


def test_frame_faces_crops_the_centre():
    image = np.zeros((1, 10, 10), np.uint8)
    image[0, 1:9, 1:9] = 200  # the centre 80% is uniform
    framed = frame_faces(image, fraction=0.8, size=4)
    assert framed.shape == (1, 4, 4) and np.all(framed == 200)


def test_batches_warp_input_and_target_together_and_balance_subjects():
    images = torch.rand(4, 1, 16, 16)
    subjects = np.array([1, 1, 2, 2])
    labels = np.array([3, 6, 0, 6])
    # Subject 1 has 9 pairs (all on face 0), subject 2 one pair; input = target in every pair.
    pairs = np.array([[0, 0]] * 9 + [[2, 2]])
    augment = AugmentConfig(flip=True, rotation=10.0, scale=0.1, translate=0.1)
    batches = PairBatches(images, labels, subjects, pairs, 400, augment, seed=0, guiding=images, guiding_size=3)
    batch = next(batches)
    assert batch.inputs.shape == (400, 1, 16, 16) and batch.guiding.shape == (3, 1, 16, 16)
    assert torch.equal(batch.inputs, batch.targets)  # the same warp for both images of a pair
    assert not any(torch.equal(face, images[0]) for face in batch.inputs[batch.labels == 3])  # warped
    share = (batch.labels == 3).float().mean().item()
    assert 0.4 < share < 0.6  # subjects equally likely despite 9:1 pairs
