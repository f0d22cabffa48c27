import matplotlib.pyplot as plt
from conftest import run_pipeline

from multimodal_doubleloop.models import ModelConfig, build_model, resolve_model_config
from multimodal_doubleloop.pipelines.evaluation import create_pipeline


def _untrained(tokenized, model_params):
    from tokenizers import Tokenizer

    config = resolve_model_config(
        model_params,
        Tokenizer.from_str(tokenized["tokenizer"]).get_vocab_size(),
        tokenized["encoded_texts"]["input_ids"].shape[1],
        len(tokenized["answer_vocab"]),
    )
    return {"config": config, "state_dict": build_model(ModelConfig.from_dict(config)).state_dict()}


def test_evaluation_pipeline_reports_per_question_type(
    samples, images, tokenized, model_params, training_params, tasks_params
):
    catalog = run_pipeline(
        create_pipeline(),
        {
            "trained_model": _untrained(tokenized, model_params),
            "samples": samples,
            "images": images,
            "encoded_texts": tokenized["encoded_texts"],
            "answer_vocab": tokenized["answer_vocab"],
            "params:training": training_params,
            "tokenizer": tokenized["tokenizer"],
            "params:tasks": tasks_params,
        },
    )
    metrics = catalog.load("metrics")
    test = samples[samples.split == "test"]
    assert metrics["test_samples"] == len(test)
    # overall accuracy is the question-count-weighted mean of the per-type accuracies
    weighted = sum(
        metrics["test_answer_accuracy_" + q.replace("/", "_")] * n for q, n in test["question_type"].value_counts().items()
    ) / len(test)
    assert abs(weighted - metrics["test_accuracy"]) < 1e-9
    # one key shape whatever the number of tasks: test_<task>_<metric>, test_loss, test_accuracy
    assert metrics["test_accuracy"] == metrics["test_answer_accuracy"]
    assert {"test_answer_loss", "test_answer_macro_f1", "test_loss"} <= set(metrics)
    assert not {"test_macro_f1", "test_accuracy_color"} & set(metrics)
    assert catalog.load("mlflow_metrics")["test_accuracy"]["value"] == metrics["test_accuracy"]
    assert isinstance(catalog.load("confusion_matrix"), plt.Figure)
