"""A tiny study registers its models and sets ``champion`` and ``base``; the champion, loaded by alias, segments
new images from Python, ``segft predict`` and ``mlflow models serve`` exactly as its run evaluated them."""

from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
import tifffile
import torch
from mlflow import MlflowClient

from conftest import free_port, loopback_process
from segft import cli
from segft.config import ModelConfig, SplitConfig, StudyConfig, TrainConfig
from segft.data.readers import read_images, read_masks
from segft.data.synthetic import make_microtube_study, write_study
from segft.champion import candidates_of, choose_champion
from segft.plan import PlannedRun
from segft.study import run_study, selection_tables

pytestmark = pytest.mark.slow

CHAMPION = "models:/segft-finetuned@champion"
SIZES = (1, 2)  # a pool of 3: every run is scored on all 3, and on Dataset 1's 3 training images


@pytest.fixture(scope="module")
def study(tmp_path_factory, empty_sqlite_store):
    """Base model + finetune arm at 1 and 2 images (1 repeat) on 4 synthetic images per dataset; 3 epochs at a high
    learning rate, so that the masks compared below have foreground and background (1 epoch predicts nothing)."""
    work = tmp_path_factory.mktemp("registered")
    data = write_study(make_microtube_study(n_images=4), work / "data")
    shutil.copyfile(empty_sqlite_store, work / "mlflow.db")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    train = TrainConfig(
        data_dir=str(data), epochs=3, batch_size=8, lr=1e-2, patch_size=64,
        model=ModelConfig(encoder="resnet18", encoder_depth=3, decoder_channels=(16, 8, 4)),
        split=SplitConfig(dataset1_train_images=3, dataset2_pool_images=3),
    )
    config = StudyConfig(train=train, sizes=SIZES, repeats=1, arms=("finetune",), report_dir=str(work / "report"))
    mlflow.set_tracking_uri(uri)
    previous_cwd, threads = os.getcwd(), torch.get_num_threads()
    os.chdir(work)  # nothing may land in the checkout
    torch.set_num_threads(1)
    try:
        result = run_study(config)
        yield work, data, uri, config, result, MlflowClient(uri)
    finally:
        torch.set_num_threads(threads)
        os.chdir(previous_cwd)
        mlflow.set_tracking_uri(None)


def _version(client, alias):
    return client.get_model_version_by_alias("segft-finetuned" if alias == "champion" else "segft-base", alias)


def test_each_finetune_run_validates_on_the_whole_pool_and_dataset1_training_images(study):
    _, _, _, _, result, client = study
    for n in SIZES:
        run = client.get_run(result.runs[f"finetune/n{n}/r0"].run_id)
        params = run.data.params
        assert params["split_dataset2_validation"] == params["split_dataset1_validation"] == "001,002,003"
        assert run.data.params["split_dataset2_test"] == "004"  # never among the validation images
        assert all(0 <= run.data.metrics[f"val_dice_{dataset}"] <= 1 for dataset in ("dataset1", "dataset2"))


def test_champion_is_the_rule_s_pick_and_base_is_the_study_base(study):
    _, _, _, _, result, client = study
    runs = {key: client.get_run(r.run_id) for key, r in result.runs.items()}
    plan = [PlannedRun("finetune", n, 0, tuple(range(n))) for n in SIZES]
    choice = choose_champion(candidates_of(plan, result.runs, selection_tables(plan, result.runs)))
    champion = _version(client, "champion")
    assert champion.run_id == runs[choice.champion.key].info.run_id
    assert client.get_run(result.parent_run_id).data.tags["segft.champion_reason"] == choice.reason
    assert result.champion == f"models:/segft-finetuned/{champion.version}"
    assert _version(client, "base").run_id == runs["base/r0"].info.run_id
    assert champion.tags["segft.arm"] == "finetune" and _version(client, "base").tags["segft.arm"] == "raw"
    assert {"n_images", "test_dice_dataset1", "val_dice_dataset2"} <= set(champion.tags)
    assert client.get_run(result.parent_run_id).data.tags["segft.champion"] == result.champion


def test_a_resumed_study_sets_the_aliases_again(study):
    work, _, _, config, result, client = study
    client.delete_registered_model_alias("segft-finetuned", "champion")
    client.delete_registered_model_alias("segft-base", "base")
    previous_cwd = os.getcwd()
    os.chdir(work)
    try:
        again = run_study(config)
    finally:
        os.chdir(previous_cwd)
    assert set(again.reused) == set(result.runs)
    assert again.champion == result.champion
    assert _version(client, "champion").run_id == client.get_model_version(
        "segft-finetuned", result.champion.rsplit("/", 1)[1]).run_id
    assert _version(client, "base").run_id == result.runs["base/r0"].run_id


def test_champion_by_alias_predicts_what_its_run_evaluated(study):
    _, data, _, _, result, client = study
    model = mlflow.pyfunc.load_model(CHAMPION)
    run_id = _version(client, "champion").run_id
    for dataset in ("dataset1", "dataset2"):
        image = read_images(data / dataset / "images" / "004.png")[0]
        logged = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"predictions/{dataset}/004.png")
        evaluated = read_masks(logged)[0]
        assert 0 < evaluated.mean() < 1  # not a trivial all-background (or all-foreground) mask
        np.testing.assert_array_equal(model.predict(image), evaluated.astype(np.uint8))


def test_odd_sizes_from_python_and_a_16_bit_stack_from_the_command_line(study, tmp_path):
    model = mlflow.pyfunc.load_model(CHAMPION)
    image = read_images(study[1] / "dataset2" / "images" / "004.png")[0]
    odd = np.pad(image, ((0, 0), (0, 517 - image.shape[1])), mode="reflect")[:300]  # 300 x 517, uint8
    assert model.predict(odd).shape == (300, 517)
    stack = np.stack([odd.astype(np.uint16) * 257, odd[::-1].astype(np.uint16) * 200, odd.astype(np.uint16)])
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    assert cli.main(["predict", "--model", CHAMPION, "--input", str(tmp_path / "stack.tif"),
                     "--output", str(tmp_path / "masks")]) == 0
    masks = read_masks(tmp_path / "masks" / "stack_mask.tif")
    assert [m.shape for m in masks] == [(300, 517)] * 3
    np.testing.assert_array_equal(masks[1], model.predict(stack[1]) > 0)
    np.testing.assert_array_equal(masks[0], masks[2])  # 8 and 16 bit of the same scene normalize alike


def test_mlflow_models_serve_answers_with_a_mask(study, tmp_path):
    work, data, uri, _, _, _ = study
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", CHAMPION, "--env-manager", "local",
               "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri,  # the server runs `uvicorn` from the environment's bin/
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    with loopback_process(command, f"http://127.0.0.1:{port}/ping", tmp_path / "serve.log", cwd=work, env=env):
        image = read_images(data / "dataset2" / "images" / "004.png")[0]
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=json.dumps({"inputs": image.tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            mask = np.array(json.loads(response.read())["predictions"])
        assert mask.shape == image.shape
        np.testing.assert_array_equal(mask, mlflow.pyfunc.load_model(CHAMPION).predict(image))

        # a client's mistake comes back as MLflow's invalid-parameter error with segft's one line at the top
        for body, message in (({"inputs": [1, 2, 3]}, "expected an image"),
                              ({"inputs": image[:64, :64].tolist(), "params": {"batch_size": 0}}, "batch_size >= 1")):
            bad = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(bad, timeout=120)
            answer = json.loads(caught.value.read())
            assert caught.value.code == 400
            assert answer["error_code"] == "INVALID_PARAMETER_VALUE"
            assert answer["message"].startswith("segft: ") and message in answer["message"], answer["message"]
