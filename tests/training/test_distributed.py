"""Two CPU processes with gloo train like one process at the same global batch."""

from __future__ import annotations

import pytest
import torch

from multimodal_doubleloop.data.batching import encoded_split
from multimodal_doubleloop.models import resolve_model_config
from multimodal_doubleloop.tasks import TaskSet
from multimodal_doubleloop.training.config import TrainConfig
from multimodal_doubleloop.training.fit import fit_any


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(samples, images, tokenized, model_params, tmp_path):
    # No BatchNorm in the tiny model (BatchNorm statistics are per rank under DDP).
    model_params["presets"]["tiny"]["vision"]["stem_channels"] = []
    config = resolve_model_config(model_params, 200, 16, len(tokenized["answer_vocab"]))
    splits = {
        "train": encoded_split(samples, tokenized["encoded_texts"], images["image_ids"], tokenized["answer_vocab"], "train")
    }
    results = {}
    for world_size, per_rank in ((1, 4), (2, 2)):  # global batch: 4 images either way
        cfg = TrainConfig.from_dict(
            {"epochs": 2, "images_per_batch": per_rank, "lr": 3e-3, "warmup_steps": 2, "progress_bar": False,
             "checkpoint_every": 0, "resume": False, "world_size": world_size, "log_every": 1,
             "checkpoint_dir": str(tmp_path / str(world_size))}
        )
        tasks = TaskSet.answer_only("answer", 0.0)
        results[world_size] = fit_any(config, splits, images, cfg, {}, tasks)
    (w1, s1, _), (w2, s2, _) = results[1], results[2]
    assert s1.step == s2.step > 0
    losses1 = torch.tensor([r["loss"] for r in s1.step_log])
    losses2 = torch.tensor([r["loss"] for r in s2.step_log])
    # the logged loss is the global batch's (all-reduced) in both cases
    assert torch.allclose(losses1, losses2, rtol=1e-4)
    for name, tensor in w1.items():
        # same updates up to float summation order (all-reduce vs one big batch)
        assert torch.allclose(tensor, w2[name], atol=2e-4, rtol=1e-3), name


def test_outside_torchrun_the_error_names_the_entry_point_that_exists(monkeypatch):
    import importlib.util

    from multimodal_doubleloop.training import distributed

    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(RuntimeError, match="start this entry point with torchrun") as error:
        distributed.init_from_env()
    module = str(error.value).split(" -m ")[1].rstrip("`")
    assert importlib.util.find_spec(module) is not None, module
