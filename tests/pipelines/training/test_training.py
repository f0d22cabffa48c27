import torch
from conftest import run_pipeline, training_inputs

from multimodal_doubleloop.pipelines.training import create_pipeline
from multimodal_doubleloop.pipelines.training.nodes import train_model


def _inputs(samples, images, tokenized, model_params, training_params, tasks_params=None):
    return training_inputs(samples, images, tokenized, model_params, training_params, **{"params:tasks": tasks_params})


def test_train_model_learns_and_reports(samples, images, tokenized, model_params, training_params, tasks_params):
    inputs = _inputs(samples, images, tokenized, model_params, {**training_params, "epochs": 3}, tasks_params)
    trained, curves, history = train_model(*[inputs[k] for k in inputs])
    assert set(trained) == {"config", "state_dict", "labels"}
    assert trained["labels"] == {"answer": list(tokenized["answer_vocab"])}  # class names per head, for serving
    assert len(history) == 3 and history[-1]["train_loss"] < history[0]["train_loss"]
    assert [p["step"] for p in curves["val_accuracy"]] == [0, 1, 2]
    assert all(torch.isfinite(v).all() for v in trained["state_dict"].values())


def test_the_run_s_checkpoints_record_its_heads_and_augmentation(
    samples, images, tokenized, model_params, training_params, tasks_params
):
    """What `model.init_from=<checkpoint>` needs to hand on heads (their class names),
    and augmentation as part of the run's identity, as the train node writes them."""
    import json
    from pathlib import Path

    augmented = {**images, "augment": {**images["augment"], "hflip": 0.5}}
    inputs = _inputs(samples, augmented, tokenized, model_params, training_params, tasks_params)
    trained, _, _ = train_model(*[inputs[k] for k in inputs])
    (meta_file, *_) = sorted(Path(training_params["checkpoint_dir"]).glob("*/step_*.json"))
    meta = json.loads(meta_file.read_text())
    assert meta["labels"] == trained["labels"] and meta["labels"]["answer"] == list(tokenized["answer_vocab"])
    assert meta["config"]["data"]["augment"]["hflip"] == 0.5


def test_training_pipeline_on_memory_catalog(samples, images, tokenized, model_params, training_params, tasks_params):
    catalog = run_pipeline(
        create_pipeline(), _inputs(samples, images, tokenized, model_params, training_params, tasks_params)
    )
    assert catalog.load("trained_model")["config"]["heads"]["answer"]["num_outputs"] == len(
        tokenized["answer_vocab"]
    )


def test_training_augmentation_is_part_of_the_configuration(
    samples, images, tokenized, model_params, training_params, tasks_params
):
    """A rerun with augmentation turned on must not resume (or reuse) the run without it;
    with it off, the identity is what runs had before augmentation counted."""
    from dataclasses import asdict

    from multimodal_doubleloop.data.images import AugmentConfig
    from multimodal_doubleloop.pipelines.training.nodes import prepare_training
    from multimodal_doubleloop.training.checkpoint import config_digest

    def digest(augment):
        args = (tokenized["encoded_texts"], images["image_ids"], tokenized["answer_vocab"], tokenized["tokenizer"])
        return config_digest(
            prepare_training(samples, *args, model_params, training_params, tasks_params, augment=augment).run_config
        )

    off = asdict(AugmentConfig())
    assert digest(None) == digest(off)
    assert digest({**off, "hflip": 0.5}) != digest(off)


def test_the_same_texts_on_other_images_or_answers_are_another_configuration(
    samples, images, tokenized, model_params, training_params, tasks_params
):
    """The checkpoint folder follows the data's content: a source with the same texts
    (hence the same tokenizer and row count) but other images must not resume."""
    from multimodal_doubleloop.pipelines.training.nodes import prepare_training
    from multimodal_doubleloop.training.checkpoint import config_digest

    def digest(table):
        args = (tokenized["encoded_texts"], images["image_ids"], tokenized["answer_vocab"], tokenized["tokenizer"])
        return config_digest(prepare_training(table, *args, model_params, training_params, tasks_params).run_config)

    moved = samples.assign(image_path="elsewhere/" + samples["image_path"], source="table")
    relabelled = samples.copy()
    relabelled.loc[relabelled.index[0], "answer"] = "no" if relabelled["answer"].iloc[0] != "no" else "yes"
    assert digest(samples) == digest(samples.copy())
    assert len({digest(samples), digest(moved), digest(relabelled)}) == 3
