"""The pretrained backbone shipped for cifar10-pretrained: present, intact, and loadable into its model."""

import torch

from unlearnkit.bench.config import load_bench_config
from unlearnkit.models import create_model
from unlearnkit.pretraining import apply_init, file_sha256, init_record, read_provenance, resolve_weights


def test_cifar10_pretrained_weights_ship_and_load_into_resnet20(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the package's copy, not a checkout's
    config = load_bench_config("cifar10-pretrained")
    path = resolve_weights(config.init["weights"])
    provenance = read_provenance(path)
    assert provenance["sha256"] == file_sha256(path)  # the file its sidecar describes
    assert provenance["excluded"] == {"subset": 10000, "subset_seed": 0} and provenance["num_images"] == 40000
    record = init_record(config.init, dataset=config.dataset, dataset_args=config.dataset_args,
                         model=config.model, model_kwargs=config.model_kwargs)
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10)
    head_before = model.fc.weight.clone() if hasattr(model, "fc") else model.head.weight.clone()
    body_before = next(model.parameters()).clone()
    apply_init(model, record)
    head_after = model.fc.weight if hasattr(model, "fc") else model.head.weight
    assert torch.equal(head_before, head_after)  # reset_head: the head keeps its fresh draw
    assert not torch.equal(body_before, next(model.parameters()))  # the body is the pretrained one
