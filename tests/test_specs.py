"""The frozen configuration records of ``arith.specs``: what they refuse and how they round-trip through JSON."""

import pytest

from arith.specs import FinetuneConfig, ModelSpec, TaskInfo


@pytest.mark.parametrize("field", ["steps", "batch_size"])
@pytest.mark.parametrize("value", [0, -1])
def test_finetune_config_refuses_a_non_positive_count(field, value):
    with pytest.raises(ValueError, match="steps and batch_size must be positive"):
        FinetuneConfig(**{field: value})


def test_model_spec_needs_exactly_one_of_name_and_config():
    with pytest.raises(ValueError, match="exactly one of"):
        ModelSpec()
    with pytest.raises(ValueError, match="exactly one of"):
        ModelSpec(name="ViT-B-32", config={"embed_dim": 8, "vision_cfg": {}})


def test_model_spec_label_names_the_pretrained_tag():
    assert ModelSpec(name="ViT-B-32", pretrained="openai").label == "ViT-B-32/openai"
    assert ModelSpec(name="ViT-B-32").label == "ViT-B-32"
    cfg = {"embed_dim": 8, "vision_cfg": {"width": 16, "layers": 2, "patch_size": 4}}
    assert ModelSpec(config=cfg).label == "inline ViT w16 L2 p4"


def test_task_info_round_trips_through_json_with_tuples():
    info = TaskInfo("digits", ("zero", "one"), templates=("a {}.", "the {}."), description="d")
    back = TaskInfo.from_json(info.to_json())  # JSON turns the tuples into lists; from_dict turns them back
    assert back == info and isinstance(back.classnames, tuple) and isinstance(back.templates, tuple)
    hash(back)  # a frozen record of tuples stays hashable
    assert back.num_classes == 2
