"""Training recipes: one step per method, resume from a checkpoint, DDP (gloo, 2 CPU processes), export."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from fer_demo.embedding import ReferenceMap, reference_map_file
from fer_demo.hub import WeightsError, default_weights_dir, load_manifest, sha256_file, write_manifest_entry
from fer_demo.models import create_model
from tests.conftest import make_weight_store, needs_data
from training import export as export_module
from training.augment import AugmentConfig
from training.calibrate import MIN_NLL_GAIN, calibration_report, fit_pool, fit_temperature
from training.checkpoint import load_checkpoint, save_checkpoint
from training.data import FaceSet, load_fer2013
from training.methods import build_recipe
from training.metrics import expected_calibration_error, negative_log_likelihood
from training.trainer import batch_seed, fit, init_distributed, learning_rate, load_config, train

METHODS = ("dacl", "ed2l", "baseline")


def synthetic_faces(n: int, seed: int = 0, name: str = "synthetic") -> FaceSet:
    """Random 48x48 gray faces with balanced labels 0-6."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 48, 48), dtype=np.uint8)
    return FaceSet(name, images, np.arange(n, dtype=np.int64) % 7)


def small_config(method: str, **overrides) -> dict:
    config = load_config(method, "cpu")
    config.update(epochs=1, batch_size=8, threads=1, eval_batch_size=16, **overrides)
    return config


def batch_for(recipe, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    height, width = recipe.model.card.input_size
    torch.manual_seed(0)
    return torch.randn(n, recipe.model.card.channels, height, width), torch.arange(n) % 7


@pytest.mark.parametrize("method", METHODS)
def test_one_training_step_updates_the_model(method):
    torch.manual_seed(0)
    recipe = build_recipe(small_config(method))
    before = {key: value.clone() for key, value in recipe.state_tensors().items()}
    terms = recipe.training_step(*batch_for(recipe))
    assert all(np.isfinite(value) for value in terms.values())
    after = recipe.state_tensors()
    changed = [key for key in before if not torch.equal(before[key], after[key])]
    assert any(key.endswith("weight") for key in changed)
    if method in ("dacl", "baseline"):
        assert "centers" in changed and {"softmax", "sparse_center"} <= terms.keys()
    else:
        assert {"am_softmax", "dispeller", "dispelling"} <= terms.keys()


def test_ed2l_step_routes_gradients_as_the_paper():
    recipe = build_recipe(small_config("ed2l"))
    x, y = batch_for(recipe)
    out = recipe.model(x)
    from training.losses import dispeller_loss, dispelling_loss

    dispeller_loss(recipe.model.dispeller, out.dispel_embedding, y).backward(retain_graph=True)
    assert recipe.model.dispeller.weight.grad is not None
    assert all(p.grad is None for p in recipe.model.dispel.parameters())
    recipe.model.zero_grad(set_to_none=True)
    dispelling_loss(recipe.model.dispeller, out.dispel_embedding).backward()
    assert recipe.model.dispeller.weight.grad is None
    assert all(p.grad is not None for p in recipe.model.dispel.parameters())
    assert all(p.grad is not None for p in recipe.model.base.parameters())
    assert all(p.grad is None for p in recipe.model.distill.parameters())


def test_learning_rate_schedules():
    cosine = {"name": "cosine", "warmup_epochs": 1}
    assert learning_rate(cosine, 0.1, 9, 10, 5) == pytest.approx(0.1)
    assert learning_rate(cosine, 0.1, 49, 10, 5) == pytest.approx(0.0, abs=1e-3)
    step = {"name": "step", "milestones": [2, 4], "gamma": 0.1}
    assert learning_rate(step, 1.0, 25, 10, 6) == pytest.approx(0.1)
    assert learning_rate({"name": "constant"}, 0.3, 99, 10, 6) == 0.3


def test_checkpoint_round_trip_restores_optimizer_state(tmp_path):
    recipe = build_recipe(small_config("ed2l"))
    recipe.training_step(*batch_for(recipe))
    save_checkpoint(tmp_path, "last", recipe.state_tensors(), recipe.optimizer, {"epoch": 1})
    fresh = build_recipe(small_config("ed2l"))
    tensors, info = load_checkpoint(tmp_path, "last", fresh.optimizer)
    fresh.load_state_tensors(tensors)
    assert info["epoch"] == 1
    for (key, a), b in zip(recipe.model.state_dict().items(), fresh.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    old, new = recipe.optimizer.state_dict(), fresh.optimizer.state_dict()
    assert old["state"].keys() == new["state"].keys()
    for index, values in old["state"].items():
        for name, value in values.items():
            assert torch.equal(value, new["state"][index][name])


def test_resume_continues_from_the_last_epoch(tmp_path):
    config = small_config("dacl")
    faces, val = synthetic_faces(16), synthetic_faces(8, seed=1)
    first = train(config, tmp_path, train_set=faces, val_set=val)
    assert [row["epoch"] for row in first] == [1]
    with pytest.raises(FileExistsError, match="--resume"):
        train(config, tmp_path, train_set=faces, val_set=val)
    saved = load_file(tmp_path / "last.safetensors")
    resumed = train({**config, "epochs": 2}, tmp_path, train_set=faces, val_set=val, resume=True)
    assert [row["epoch"] for row in resumed] == [1, 2]
    assert resumed[0] == first[0]
    after = load_file(tmp_path / "last.safetensors")
    assert not torch.equal(saved["centers"], after["centers"])
    assert json.loads((tmp_path / "last.json").read_text())["epoch"] == 2
    assert (tmp_path / "curves.html").is_file() and (tmp_path / "best.safetensors").is_file()
    assert not list(tmp_path.glob("*.pt")) and not list(tmp_path.glob("*.pth"))


def test_init_starts_a_fresh_run_from_a_weight_file(tmp_path):
    faces, val = synthetic_faces(16), synthetic_faces(8, seed=1)
    train(small_config("dacl"), tmp_path / "first", train_set=faces, val_set=val)
    start = tmp_path / "start.safetensors"
    save_file({key: value.half() for key, value in load_file(tmp_path / "first" / "best.safetensors").items()}, start)
    config = small_config("dacl", init=str(start))
    config["optimizer"] = {**config["optimizer"], "lr": 0.0}  # no step moves a parameter: they stay the start's
    history = train(config, tmp_path / "second", train_set=faces, val_set=val)
    assert [row["epoch"] for row in history] == [1]
    trained, initial = load_file(tmp_path / "second" / "last.safetensors"), load_file(start)
    parameters = [name for name, _ in create_model("dacl").named_parameters()]
    for name in parameters:
        torch.testing.assert_close(trained[name], initial[name].float())
    state = json.loads((tmp_path / "second" / "last.json").read_text())
    assert state["config"]["init"] == str(start)
    assert state["batch_seed"] == batch_seed(config, tmp_path / "second", resume=False) != config["seed"]


def test_a_warm_restart_draws_batches_of_its_own(tmp_path):
    faces = synthetic_faces(16)
    first, second = tmp_path / "first.safetensors", tmp_path / "second.safetensors"
    save_file({"w": torch.zeros(3)}, first)
    save_file({"w": torch.ones(3)}, second)
    config = small_config("dacl")
    assert batch_seed(config, tmp_path, resume=False) == config["seed"]
    seeds = [batch_seed({**config, "init": str(path)}, tmp_path, resume=False) for path in (first, second, first)]
    assert seeds[0] == seeds[2] and len({config["seed"], *seeds}) == 3
    run = tmp_path / "run"
    train({**config, "seed": seeds[0]}, run, train_set=faces, val_set=synthetic_faces(8, seed=1))
    save_file({"w": torch.full((3,), 2.0)}, first)  # the start file overwritten (a later export): resume keeps the seed
    assert batch_seed({**config, "init": str(first)}, run, resume=True) == seeds[0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, folder: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    distributed = init_distributed()
    torch.manual_seed(0)
    recipe = build_recipe(small_config("dacl"))
    recipe.distribute()
    faces = synthetic_faces(16)
    inputs = torch.randn(16, 3, 64, 64)
    val = (inputs[:8], faces.labels[:8]) if distributed.main else None
    fit(
        recipe,
        inputs,
        faces.labels,
        epochs=1,
        batch_size=8,
        optimizer=recipe.config["optimizer"],
        schedule={"name": "constant"},
        augment=AugmentConfig(),
        seed=0,
        val=val,
        distributed=distributed,
    )
    from training.checkpoint import save_tensors

    save_tensors(recipe.state_tensors(), f"{folder}/rank{rank}.safetensors")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_gloo_two_processes_keep_replicas_in_sync(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (load_file(tmp_path / f"rank{rank}.safetensors") for rank in (0, 1))
    torch.manual_seed(0)
    initial = build_recipe(small_config("dacl")).state_tensors()
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        if "running" in key or "num_batches" in key:
            continue  # BatchNorm statistics are per process (no SyncBatchNorm)
        assert torch.allclose(rank0[key], rank1[key], atol=1e-6), key
    assert not torch.equal(rank0["fc.weight"], initial["fc.weight"])
    assert not torch.equal(rank0["centers"], initial["centers"])


def _fake_run(folder, method: str) -> None:
    torch.manual_seed(0)
    recipe = build_recipe(small_config(method))
    info = {"config": recipe.config, "train_data": "synthetic", "val_data": "synthetic", "train_size": 16, "epoch": 1}
    save_checkpoint(folder, "best", recipe.state_tensors(), None, info)


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["dacl", "ed2l"])
def test_export_then_pretrained_load_round_trip(tmp_path, monkeypatch, use_store, model_name):
    repo = tmp_path / "repo"  # a clean checkout that holds the weight store, as this repository does
    repo.mkdir()
    for command in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "start"]):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *command], cwd=repo, check=True)
    run, store = tmp_path / "run", use_store(repo / "weights")
    _fake_run(run, model_name)
    small = {
        split: synthetic_faces(120, seed=seed, name=split) for seed, split in enumerate(["PublicTest", "PrivateTest"])
    }
    monkeypatch.setattr(export_module, "load_fer2013", lambda split, data_dir=None: small[split])
    entry = export_module.export(run, weights_dir=store, repo=repo)
    assert entry["git_dirty"] is False  # the files the export writes do not make the source look modified
    assert entry["config"]["overrides"] == {"epochs": 1, "batch_size": 8, "eval_batch_size": 16}

    path = store / f"{model_name}.safetensors"
    assert entry["sha256"] == sha256_file(path) and entry["size"] == path.stat().st_size
    assert entry["model"] == model_name and "research-only" in entry["license"]
    manifest = load_manifest(store)
    map_file = reference_map_file(model_name)
    assert manifest["files"][map_file]["sha256"] == sha256_file(store / map_file)
    exported = load_file(path)
    if model_name == "dacl":  # the trained class centers ship with the weights
        trained = load_file(run / "best.safetensors")["centers"]
        assert torch.allclose(exported["centers"].float(), trained, atol=1e-2)
    assert {str(value.dtype) for value in exported.values() if value.is_floating_point()} == {f"torch.{entry['dtype']}"}

    model = create_model(model_name, pretrained=True)
    assert model.temperature == entry["calibration"]["temperature"] > 0
    for key, value in model.state_dict().items():
        assert torch.equal(value, exported[key].to(value.dtype)), key
    private = small["PrivateTest"]
    accuracy = (export_module.predict_faces(model, private.images)["logits"].argmax(1) == private.labels).mean()
    assert accuracy == pytest.approx(entry["metrics"]["fer2013_private_test"]["accuracy"])

    reference = ReferenceMap.load(model_name)
    assert reference.coords.shape == (len(reference.labels), 2)
    new = export_module.predict_faces(model, private.images[:3])["embedding"]
    assert reference.place(new).shape == (3, 2)


def test_config_overrides_name_every_value_that_differs_from_the_named_config():
    config = small_config("dacl", init="weights/dacl.safetensors")
    config["optimizer"] = {**config["optimizer"], "lr": 0.02}
    assert export_module.config_overrides(config) == {
        "epochs": 1,
        "batch_size": 8,
        "eval_batch_size": 16,
        "init": "weights/dacl.safetensors",
        "optimizer.lr": 0.02,
    }


def test_metrics_only_adds_later_protocols_to_the_exported_entry(tmp_path, monkeypatch):
    run, store = tmp_path / "run", tmp_path / "weights"  # `run` holds only eval/, as after `evaluate --weights`
    store.mkdir()
    weights = store / "dacl.safetensors"
    torch.manual_seed(0)
    model = create_model("dacl").eval()
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, weights)
    stale = {"fer2013_private_test": {"accuracy": 0.99, "mean_class_accuracy": 0.99}}  # e.g. before a card change
    write_manifest_entry(weights.name, weights, weights_dir=store, model="dacl", dtype="float32", metrics=stale)
    small = {split: synthetic_faces(28, seed=i, name=split) for i, split in enumerate(["PublicTest", "PrivateTest"])}
    monkeypatch.setattr(export_module, "load_fer2013", lambda split, data_dir=None: small[split])
    fold = {"accuracy": 0.9, "mean_class_accuracy": 0.8, "fold_accuracy_std": 0.04, "confusion": [[1]]}
    fold["finetune"] = {"epochs": 12}
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "ckplus.json").write_text(json.dumps({"ckplus7": fold}))
    neutral = {"eval_identity": {"generated_rank1": 0.4}, "grid": "neutral_grid.png", "subjects": 17}
    (run / "eval" / "neutral.json").write_text(json.dumps(neutral))

    entry = export_module.record_metrics("dacl", run, weights_dir=store)
    private = small["PrivateTest"]  # the stored weights are measured again, as the app runs them
    accuracy = (export_module.predict_faces(model, private.images)["logits"].argmax(1) == private.labels).mean()
    recorded = entry["metrics"]["fer2013_private_test"]["accuracy"]
    assert recorded == pytest.approx(accuracy) and recorded != 0.99
    assert entry["metrics"]["ckplus7_10fold"]["accuracy"] == 0.9 and entry["dtype"] == "float32"
    assert entry["metrics"]["ckplus7_10fold"]["finetune"] == {"epochs": 12}
    assert entry["metrics"]["neutral_reference"] == {"eval_identity": {"generated_rank1": 0.4}, "subjects": 17}
    assert load_manifest(store)["files"]["dacl.safetensors"] == entry

    save_file({"w": torch.zeros(2)}, weights)  # weights that are not the recorded ones get no metrics
    with pytest.raises(WeightsError, match="changed since"):
        export_module.record_metrics("dacl", run, weights_dir=store)


def test_cli_offers_every_method_and_the_generator_pretraining():
    from training.__main__ import build_parser

    parser = build_parser()
    for method in ("dacl", "ed2l", "idferm", "gcnet", "baseline"):
        assert parser.parse_args(["train", method]).method == method
    args = parser.parse_args(["pretrain", "gcnet", "--set", "pretrain.steps=10"])
    assert args.handler.__name__ == "_pretrain" and args.set == ["pretrain.steps=10"]
    with pytest.raises(SystemExit):
        parser.parse_args(["pretrain", "dacl"])  # only the generative methods have a generator


def test_calibration_metrics_on_a_hand_computed_example():
    probs = np.array([[0.8, 0.2], [0.6, 0.4], [0.1, 0.9]])
    labels = np.array([0, 1, 1])
    assert negative_log_likelihood(probs, labels) == pytest.approx(-(np.log(0.8) + np.log(0.4) + np.log(0.9)) / 3)
    # 15 bins: 0.8 (right) and 0.9 (right) and 0.6 (wrong) fall in three different bins
    assert expected_calibration_error(probs, labels) == pytest.approx((0.2 + 0.6 + 0.1) / 3)


def test_fit_temperature_recovers_the_temperature_labels_were_drawn_with():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, (20000, 7))
    for true_t in (0.5, 3.0):
        p = torch.as_tensor(logits / true_t).softmax(-1).numpy()
        labels = (p.cumsum(1) > rng.random((len(p), 1))).argmax(1)
        assert fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.05)


def test_calibration_keeps_raw_probabilities_when_a_temperature_barely_helps():
    rng = np.random.default_rng(2)
    logits = {split: rng.normal(0, 3, (20000, 7)) for split in ("fit", "other")}
    labels = {}
    for split, values in logits.items():  # labels drawn from softmax(logits): calibrated as they are
        p = torch.as_tensor(values).softmax(-1).numpy()
        labels[split] = (p.cumsum(1) > rng.random((len(p), 1))).argmax(1)
    report = calibration_report(logits, labels, "fit")
    assert report["fitted_temperature"] == pytest.approx(1.0, abs=0.05) and report["nll_gain"] < MIN_NLL_GAIN
    assert report["temperature"] == 1.0 and report["other"]["nll"][0] == report["other"]["nll"][1]
    over_confident = calibration_report({split: 2 * values for split, values in logits.items()}, labels, "fit")
    assert over_confident["temperature"] == pytest.approx(2.0, rel=0.05) and over_confident["nll_gain"] > MIN_NLL_GAIN


def test_fit_pool_recovers_the_weights_labels_were_drawn_with():
    rng = np.random.default_rng(1)
    first, second = rng.normal(0, 2, (2, 20000, 7))
    p = torch.as_tensor(2.0 * first + 0.5 * second).softmax(-1).numpy()
    labels = (p.cumsum(1) > rng.random((len(p), 1))).argmax(1)
    assert fit_pool([first, second], labels) == pytest.approx([2.0, 0.5], rel=0.08)


def test_calibrating_several_models_fits_the_ensemble_the_predictor_uses(tmp_path, monkeypatch, use_store):
    from fer_demo import Predictor

    store = use_store(make_weight_store(tmp_path / "weights", ["dacl", "ed2l"]))
    small = {split: synthetic_faces(70, seed=i, name=split) for i, split in enumerate(["PublicTest", "PrivateTest"])}
    monkeypatch.setattr(export_module, "load_fer2013", lambda split, data_dir=None: small[split])

    updated = export_module.calibrate(["dacl", "ed2l"], weights_dir=store)
    ensemble = load_manifest(store)["ensemble"]
    assert ensemble == updated["ensemble"] and ensemble["fitted_on"] == "PublicTest"
    assert ensemble["sha256"] == {name: sha256_file(store / f"{name}.safetensors") for name in ("dacl", "ed2l")}
    accuracy = ensemble["accuracy"]["PrivateTest"]
    assert {"pool", "geometric_mean", "dacl", "ed2l"} <= accuracy.keys()

    predictor = Predictor.load()
    assert predictor.ensemble_weights == pytest.approx(ensemble["weights"])
    probs = predictor.predict_crops(small["PrivateTest"].images)
    pooled = predictor.ensemble(probs)
    assert (pooled.argmax(1) == small["PrivateTest"].labels).mean() == pytest.approx(accuracy["pool"])
    # weights fitted for other weight files are not used: every model then weighs the same
    assert Predictor.load(["dacl"]).ensemble_weights == {"dacl": 1.0}


def test_calibrate_records_the_temperature_without_touching_the_weights(tmp_path, monkeypatch, use_store):
    store = use_store(tmp_path / "weights")
    store.mkdir()
    torch.manual_seed(0)
    weights = store / "ed2l.safetensors"
    save_file(create_model("ed2l").state_dict(), weights)
    metrics = {"fer2013_private_test": {"accuracy": 0.6, "mean_class_accuracy": 0.5}}
    write_manifest_entry(weights.name, weights, weights_dir=store, model="ed2l", dtype="float32", metrics=metrics)
    assert create_model("ed2l", pretrained=True).temperature == 1.0  # nothing recorded yet
    small = {split: synthetic_faces(70, seed=i, name=split) for i, split in enumerate(["PublicTest", "PrivateTest"])}
    monkeypatch.setattr(export_module, "load_fer2013", lambda split, data_dir=None: small[split])
    digest = sha256_file(weights)

    entry = export_module.calibrate(["ed2l"], weights_dir=store)["ed2l"]
    report = entry["calibration"]
    assert sha256_file(weights) == digest == entry["sha256"] and entry["metrics"] == metrics
    assert report["fitted_on"] == "PublicTest" and report["temperature"] > 0
    nll_raw, nll_scaled = report["PublicTest"]["nll"]
    assert nll_scaled <= nll_raw  # the fit minimises it on PublicTest
    model = create_model("ed2l", pretrained=True)
    assert model.temperature == report["temperature"]
    logits = torch.randn(4, 7) * 30
    assert torch.allclose(model.probabilities(logits), (logits / report["temperature"]).softmax(-1))

    save_file({"w": torch.zeros(2)}, weights)  # weights that are not the recorded ones are not calibrated
    with pytest.raises(WeightsError, match="changed since"):
        export_module.calibrate(["ed2l"], weights_dir=store)


@needs_data
@pytest.mark.parametrize("name", ["dacl", "ed2l", "idferm", "gcnet"])
def test_shipped_temperatures_calibrate_held_out_faces(name, use_store):
    """On all PrivateTest faces (T was fitted on PublicTest): the same predicted classes; ED²L's over-confident
    AM-softmax becomes far better calibrated, and the models that were already close to calibrated do not get worse
    (a sample would not do: for an IDFERM with T = 1.07, 15-bin ECE on every sixth face moved by 2 points)."""
    from fer_demo import Predictor

    use_store(default_weights_dir())
    predictor = Predictor.load([name])
    model = predictor.models[name]
    entry = load_manifest(default_weights_dir())["files"][f"{name}.safetensors"]
    assert "calibration" in entry, "the manifest entry has no calibration: run `python -m training calibrate`"
    assert model.temperature == entry["calibration"]["temperature"]
    faces = load_fer2013("PrivateTest")
    images, labels = faces.images, faces.labels
    probs = predictor.predict_crops(images)[name]
    logits = export_module.predict_faces(model, images)["logits"]
    raw = torch.as_tensor(logits).softmax(-1).numpy()
    assert np.allclose(probs, torch.as_tensor(logits / model.temperature).softmax(-1).numpy(), atol=1e-5)
    assert (probs.argmax(1) == raw.argmax(1)).all()
    nll = negative_log_likelihood(probs, labels), negative_log_likelihood(raw, labels)
    ece = expected_calibration_error(probs, labels), expected_calibration_error(raw, labels)
    assert nll[0] <= nll[1] + 0.01 and ece[0] <= ece[1] + 0.01
    if name == "ed2l":
        assert model.temperature > 2 and nll[0] < nll[1] - 0.3 and ece[0] < ece[1] / 2


@needs_data
def test_ckplus_folds_are_reused_only_for_the_same_weights_and_settings(tmp_path, monkeypatch):
    """A stored fold is reused when nothing it depends on changed, and fine-tuned again when the recipe did."""
    from training import evaluate as evaluate_module

    config = small_config("dacl")
    config["finetune"] = {**config["finetune"], "epochs": 0}  # the FER2013 head as fine-tuned for zero epochs
    tensors = build_recipe(config).state_tensors()
    first = evaluate_module.ckplus_cross_validation(config, tensors, tmp_path, n_splits=2)
    stored = json.loads((tmp_path / "fold_00.json").read_text())
    assert stored["signature"] == evaluate_module.fold_signature(config, tensors, 2, 0)
    assert stored["signature"]["flip_average"] is True

    def refuse(*args, **kwargs):
        raise AssertionError("a finished fold with the same signature was fine-tuned again")

    monkeypatch.setattr(evaluate_module, "fit", refuse)
    again = evaluate_module.ckplus_cross_validation(config, tensors, tmp_path, n_splits=2)
    assert again["fold_accuracy"] == first["fold_accuracy"]

    changed = {**config, "finetune": {**config["finetune"], "batch_size": 16}}
    with pytest.raises(AssertionError, match="fine-tuned again"):
        evaluate_module.ckplus_cross_validation(changed, tensors, tmp_path, n_splits=2)


@needs_data
def test_ckplus_fine_tuning_adds_the_named_posed_sets_to_the_training_folds_only(tmp_path, monkeypatch):
    """``finetune.extra_sets`` appends the posed faces to every fold's training faces; the tests stay CK+ alone."""
    from training import evaluate as evaluate_module
    from training.data import load_ckplus, load_posed_like_ckplus

    config = small_config("dacl")
    config["finetune"] = {**config["finetune"], "epochs": 0, "extra_sets": ["nimstim_subset"]}
    seen = []
    monkeypatch.setattr(evaluate_module, "fit", lambda recipe, inputs, labels, **kwargs: seen.append(labels))
    report = evaluate_module.ckplus_cross_validation(config, build_recipe(config).state_tensors(), tmp_path, n_splits=2)
    posed = load_posed_like_ckplus(["nimstim_subset"])
    assert len(posed) == 73 and report["n"] == len(load_ckplus())
    for fold, labels in enumerate(seen):
        test = json.loads((tmp_path / f"fold_{fold:02d}.json").read_text())["test"]
        assert len(labels) == len(load_ckplus()) - len(test) + len(posed)
        assert labels[-len(posed) :].tolist() == posed.labels.tolist()
    signature = evaluate_module.fold_signature(config, build_recipe(config).state_tensors(), 2, 0)
    assert signature["finetune"]["extra_sets"] == ["nimstim_subset"]


@needs_data
def test_ckplus_folds_shared_between_calls_pool_as_one_run(tmp_path):
    """Calls that fine-tune disjoint folds into one folder report once all are stored, as a single call would."""
    from training import evaluate as evaluate_module

    config = small_config("dacl")
    config["finetune"] = {**config["finetune"], "epochs": 0}
    tensors = build_recipe(config).state_tensors()
    single = evaluate_module.ckplus_cross_validation(config, tensors, tmp_path / "single", n_splits=3)
    shared = tmp_path / "shared"
    assert evaluate_module.ckplus_cross_validation(config, tensors, shared, n_splits=3, folds=[2]) is None
    assert sorted(path.name for path in shared.iterdir()) == ["fold_02.json"]
    assert evaluate_module.ckplus_cross_validation(config, tensors, shared, n_splits=3, folds=range(1)) is None
    pooled = evaluate_module.ckplus_cross_validation(config, tensors, shared, n_splits=3, folds=[1])
    assert pooled["fold_accuracy"] == single["fold_accuracy"] and pooled["confusion"] == single["confusion"]


@needs_data
def test_calibrate_pools_the_ckplus_folds_of_exactly_the_weight_files(tmp_path, monkeypatch, use_store):
    """The ensemble record holds the app's pool over the models fine-tuned per fold: each face pooled from the
    models that did not see its fold, each model's accuracy that of its own folds; folds of other weights, of
    another fold assignment or without logits are refused."""
    from fer_demo.ensemble import log_linear_pool
    from training import evaluate as evaluate_module

    names = ["dacl", "ed2l"]
    store = use_store(make_weight_store(tmp_path / "weights", names))
    small = {split: synthetic_faces(70, seed=i, name=split) for i, split in enumerate(["PublicTest", "PrivateTest"])}
    monkeypatch.setattr(export_module, "load_fer2013", lambda split, data_dir=None: small[split])
    folders, reports = {}, {}
    for name in names:
        config = small_config(name)
        config["finetune"] = {**config["finetune"], "epochs": 0}
        tensors = evaluate_module.float_tensors(store / f"{name}.safetensors")
        folders[name] = tmp_path / name
        reports[name] = evaluate_module.ckplus_cross_validation(config, tensors, folders[name], n_splits=2)

    with pytest.raises(ValueError, match="two or more"):
        export_module.calibrate(names, weights_dir=store, ckplus_folds={"dacl": folders["dacl"]})
    swapped = {"dacl": folders["ed2l"], "ed2l": folders["dacl"]}
    with pytest.raises(ValueError, match="other weights"):
        export_module.calibrate(names, weights_dir=store, ckplus_folds=swapped)

    record = export_module.calibrate(names, weights_dir=store, ckplus_folds=folders)["ensemble"]
    assert load_manifest(store)["ensemble"] == record
    pooled = record["ckplus7_10fold"]
    assert pooled["n"] == 981 and len(pooled["fold_accuracy"]) == 2
    assert pooled["models"] == pytest.approx({name: reports[name]["accuracy"] for name in names})
    stored = {name: evaluate_module.stored_fold_logits(folders[name], store / f"{name}.safetensors") for name in names}
    temperatures = {
        name: load_manifest(store)["files"][f"{name}.safetensors"]["calibration"]["temperature"] for name in names
    }
    probs = {name: torch.as_tensor(stored[name]["logits"] / temperatures[name]).softmax(-1).numpy() for name in names}
    expected = log_linear_pool(probs, record["weights"]).argmax(1) == stored["dacl"]["labels"]
    assert pooled["accuracy"] == pytest.approx(expected.mean())

    fold = json.loads((folders["ed2l"] / "fold_01.json").read_text())
    del fold["logits"]
    (folders["ed2l"] / "fold_01.json").write_text(json.dumps(fold))
    with pytest.raises(ValueError, match="no logits"):
        export_module.calibrate(names, weights_dir=store, ckplus_folds=folders)


def test_evaluate_folds_option_takes_one_based_ranges():
    from training.__main__ import build_parser

    parser = build_parser()
    assert parser.parse_args(["evaluate", "dacl", "--folds", "6-10"]).folds == range(5, 10)
    assert parser.parse_args(["evaluate", "dacl", "--folds", "3"]).folds == range(2, 3)
    for bad in ("0-4", "7-2", "a-b", "9-11"):
        with pytest.raises(SystemExit):
            parser.parse_args(["evaluate", "dacl", "--folds", bad])


def test_calibrate_ckplus_folds_option_names_a_folder_per_model():
    from training.__main__ import build_parser

    parser = build_parser()
    args = parser.parse_args(["calibrate", "dacl", "ed2l", "--ckplus-folds", "dacl=a/b", "--ckplus-folds", "ed2l=c"])
    assert dict(args.ckplus_folds) == {"dacl": Path("a/b"), "ed2l": Path("c")}
    for bad in ("dacl", "=a", "dacl="):
        with pytest.raises(SystemExit):
            parser.parse_args(["calibrate", "dacl", "ed2l", "--ckplus-folds", bad])


@needs_data
def test_evaluate_set_changes_the_ckplus_fine_tuning_and_records_it(tmp_path):
    """``evaluate --set finetune...`` fine-tunes the CK+ folds with the changed recipe and says so in ckplus.json."""
    from training.__main__ import main

    run = tmp_path / "run"
    _fake_run(run, "dacl")
    trained = json.loads((run / "best.json").read_text())
    assert trained["config"]["finetune"]["epochs"] > 0
    main(["evaluate", "dacl", "--run", str(run), "--protocol", "ckplus", "--set", "finetune.epochs=0"])
    report = json.loads((run / "eval" / "ckplus.json").read_text())["ckplus7"]
    assert report["finetune"]["epochs"] == 0 and len(report["fold_accuracy"]) == 10
    last_fold = json.loads((run / "eval" / "ckplus_folds" / "fold_09.json").read_text())
    assert last_fold["signature"]["finetune"]["epochs"] == 0
    assert json.loads((run / "best.json").read_text()) == trained  # the run's own config is left as trained


@needs_data
def test_evaluate_runs_on_exported_weights_without_their_run_folder(tmp_path):
    """A fresh clone has the exported weights and no run folders: `evaluate --weights` takes the config from the
    manifest and reproduces the manifest's FER2013 numbers; a file that differs from its SHA-256 is refused."""
    from training.__main__ import main

    weights = default_weights_dir() / "gcnet.safetensors"
    entry = load_manifest(default_weights_dir())["files"]["gcnet.safetensors"]
    config = export_module.shipped_config(weights)
    assert config["method"] == "gcnet" and config["config_name"] == entry["config"]["name"]
    for key, value in entry["config"]["overrides"].items():
        target = config
        for part in key.split("."):
            target = target[part]
        assert target == value

    main(["evaluate", "gcnet", "--weights", str(weights), "--run", str(tmp_path / "shipped"), "--protocol", "fer2013"])
    report = json.loads((tmp_path / "shipped" / "eval" / "fer2013.json").read_text())
    assert report["PrivateTest"]["accuracy"] == pytest.approx(entry["metrics"]["fer2013_private_test"]["accuracy"])

    store = tmp_path / "store"
    store.mkdir()
    (store / "manifest.json").write_bytes((default_weights_dir() / "manifest.json").read_bytes())
    tensors = load_file(weights)
    tensors["classifier.bias"] = tensors["classifier.bias"] + 1
    save_file(tensors, store / "gcnet.safetensors")
    with pytest.raises(WeightsError, match="SHA-256"):
        export_module.shipped_config(store / "gcnet.safetensors")
    with pytest.raises(SystemExit, match="not a training run"):
        main(["evaluate", "gcnet", "--run", str(tmp_path / "missing"), "--protocol", "fer2013"])


@needs_data
def test_expression_probe_reads_every_representation_of_the_model(monkeypatch):
    """The probe covers each per-face vector GCNet outputs (codes, contrast, embedding), not its logits, and its
    `classifier` entry is the model's own accuracy on the test faces (here every 20th PrivateTest face)."""
    from training import evaluate as evaluate_module

    def every_20th(split, data_dir=None, **kwargs):
        faces = load_fer2013(split, data_dir, **kwargs)
        return FaceSet(faces.name, faces.images[::20], faces.labels[::20])

    monkeypatch.setattr(evaluate_module, "load_fer2013", every_20th)
    torch.manual_seed(0)
    model = create_model("gcnet").eval()
    result = evaluate_module.expression_probe(model, per_class=20)
    assert {"query_code", "reference_code", "delta", "embedding", "pixels"} <= set(result)
    assert not any(key.endswith("logits") for key in result)
    sampled = np.minimum(np.bincount(every_20th("Training", drop_inexact=True).labels), 20).sum()
    assert f"({sampled} faces, up to 20 per class)" in result["train"] and result["test"] == "fer2013/PrivateTest"
    test = every_20th("PrivateTest")
    assert result["classifier"] == pytest.approx(evaluate_module.evaluate_faces(model, test)["accuracy"])
    assert all(0 <= value <= 1 for value in result.values() if isinstance(value, float))
