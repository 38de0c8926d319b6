"""The paper's eight data sets and custom folders, read from generated files in their expected layouts."""

import numpy as np
import open_clip
import pytest
import torch
from fakedata import MAKERS, image, make_folder, make_sun397
from PIL import Image

from arith import datasets as D
from arith import imagedata
from arith.data import get_task
from arith.finetune import finetune
from arith.heads import prototype_head
from arith.realsets import TEMPLATES
from arith.specs import FinetuneConfig

from conftest import tiny_base

SIZE = 16


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("data")
    for make in MAKERS.values():
        make(r)
    return r


@pytest.fixture(autouse=True)
def no_workers(monkeypatch):
    monkeypatch.setenv("ARITH_DATA_WORKERS", "0")
    monkeypatch.delenv("ARITH_DATA_ROOT", raising=False)


@pytest.mark.parametrize("name", D.PAPER_TASKS)
def test_each_paper_dataset_loads_from_its_layout(root, name):
    task = get_task(name).resolve(root)
    assert task.family == "real" and task.templates == TEMPLATES[name] and "{}" in task.templates[0]
    n_classes = {"cars": 3, "sun397": 4}.get(name, {"dtd": 47, "eurosat": 10, "gtsrb": 43, "resisc45": 45}.get(name, 10))
    assert len(task.classnames) == n_classes
    train = task.load("train", size=SIZE, root=root)
    val = task.load("val", size=SIZE, n=3, root=root)
    test = task.load("test", size=SIZE, n=5, root=root)
    assert isinstance(train, imagedata.LazySplit) and train.images.shape[1:] == (3, SIZE, SIZE)
    for s in (val, test):
        assert s.images.dtype == torch.uint8 and s.images.shape[1:] == (3, SIZE, SIZE)
        assert 0 <= int(s.labels.min()) and int(s.labels.max()) < n_classes
    assert int(train.labels.max()) < n_classes and len(set(train.labels.tolist())) > 1
    # the validation hold-out (method.md §7) is disjoint from training and deterministic
    part = task.partition(root)
    pool = len(part.train) + len(part.val)
    assert len(part.val) == imagedata.holdout_size(pool) >= 1
    assert not set(part.val.tolist()) & set(part.train.tolist())
    again = task.load("test", size=SIZE, n=5, root=root)
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)
    # a stored evaluation image is the training catalog's image at that index, with the same label
    cat = task.splits(root)["train"]
    first = int(part.val[0])
    assert int(val.labels[0]) == int(cat.labels[first])
    assert torch.equal(val.images[0], imagedata.to_uint8(imagedata.eval_geometry(cat.read(first), SIZE)))


def test_class_names_read_from_the_data(root):
    assert get_task("cars").resolve(root).classnames[0] == "AM General Hummer SUV 2000"
    sun = get_task("sun397").resolve(root).classnames
    assert sun == ("abbey", "bedroom", "skyscraper", "apartment building outdoor")
    assert D.split_record("sun397", root)["source"]["train"].endswith("(Training_01.txt)")


@pytest.mark.parametrize("name,hint", [("mnist", "MNIST/raw"), ("svhn", "train_32x32.mat"),
                                       ("gtsrb", "GT-final_test.csv"), ("dtd", "labels/{train1,val1,test1}.txt"),
                                       ("eurosat", "eurosat/2750"), ("cars", "cars_meta.mat"),
                                       ("resisc45", "NWPU-RESISC45"), ("sun397", "Training_01.txt")])
def test_a_missing_folder_names_the_expected_layout(tmp_path, name, hint):
    with pytest.raises(FileNotFoundError) as e:
        get_task(name).resolve(tmp_path).load("test", size=SIZE, n=2, root=tmp_path)
    assert hint in str(e.value) and str(tmp_path) in str(e.value)


def test_no_data_root_says_how_to_give_one():
    with pytest.raises(FileNotFoundError, match="--data-root"):
        get_task("mnist").load("train", size=SIZE)


def test_sun397_needs_its_official_partition(tmp_path):
    make_sun397(tmp_path, partitions=False)
    with pytest.raises(FileNotFoundError, match="Training_01.txt"):
        get_task("sun397").load("train", size=SIZE, root=tmp_path)


def test_holdout_rule():
    assert imagedata.holdout_size(100) == 10 and imagedata.holdout_size(60_000) == 5000 and imagedata.holdout_size(1) == 0
    p = imagedata.make_partition("x", 1000, 50)
    assert len(p.val) == 100 and len(p.train) == 900 and sorted(p.test.tolist()) == list(range(50))
    assert np.array_equal(p.val, imagedata.make_partition("x", 1000, 50).val)
    assert not np.array_equal(p.val, imagedata.make_partition("y", 1000, 50).val)


def test_eval_geometry_is_open_clips_preprocessing():
    img = Image.fromarray(image(3, np.random.default_rng(0), (40, 26)))
    ours = imagedata.to_uint8(imagedata.eval_geometry(img, SIZE)).float() / 255
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(3, 1, 1)
    theirs = open_clip.image_transform(SIZE, is_train=False)(img)
    assert torch.allclose((ours - mean) / std, theirs, atol=1e-6)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_train_crops_are_seeded_by_step_and_position(root):
    train = get_task("eurosat").load("train", size=SIZE, root=root)
    batches = [torch.tensor([3, 1, 4, 1]), torch.tensor([5, 9, 2, 6])]

    def run(workers=0, seed=0, augment=True, rank=0, world=1):
        train.workers = workers
        return list(train.stream(iter(batches), rank=rank, world=world, seed=seed, augment=augment))

    a, b = run(), run(workers=2)
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b)), "workers change nothing"
    plain = run(augment=False)
    assert not torch.equal(a[0][0], plain[0][0]) and not torch.equal(a[0][0], run(seed=1)[0][0])
    assert not torch.equal(a[0][0][1], a[0][0][3])  # index 1 twice in one batch: two different crops
    r1 = run(rank=1, world=2)  # rank 1 gets positions 1 and 3 of the same crops
    assert torch.equal(r1[0][0], a[0][0][1::2]) and torch.equal(r1[1][1], a[1][1][1::2])
    assert torch.equal(plain[0][0], train.images[batches[0]])


def test_lazy_split_streams_like_the_in_memory_split(root):
    """Without augmentation, fine-tuning on the lazy view equals fine-tuning on the same images in memory."""
    base = tiny_base()
    lazy = get_task("mnist").load("train", size=SIZE, root=root)
    mem = lazy.materialize()
    assert torch.equal(mem.images[torch.tensor([5, 0, 2])], lazy.images[torch.tensor([5, 0, 2])])
    assert torch.equal(base.encode(lazy.images), base.encode(mem.images))  # prototype heads read lazy splits too
    head = prototype_head(base.encode(mem.images), mem.labels, 10)
    cfg = FinetuneConfig(mode="attn", steps=3, batch_size=8, lr=1e-2, warmup_steps=1)
    assert finetune(base, head, lazy, cfg, task="mnist").vector.uid == finetune(base, head, mem, cfg, task="mnist").vector.uid


def test_custom_image_folders(tmp_path):
    flat = make_folder(tmp_path / "Flowers 1")
    name = D.parse_task(f"folder:{flat}")
    task = get_task(name)
    assert name == "flowers-1" and task.classnames == ("daisy", "red rose", "tulip") and task.family == "folder"
    test = task.load("test", size=SIZE, n=100)
    assert len(test) == 6 and sorted(set(test.labels.tolist())) == [0, 1, 2]  # fixed 20 % of 30 images
    split = make_folder(tmp_path / "presplit", classes=("a", "b"), presplit=True)
    assert D.parse_task(f"mine={split}") == "mine"
    assert len(get_task("mine").splits()["test"]) == 6 and D.split_record("mine")["path"] == str(split.resolve())
    assert D.parse_task(f"mine={split}") == "mine"  # the same folder again is fine
    with pytest.raises(ValueError, match=f"taken by the folder {split.resolve()}"):
        D.parse_task(f"mine={flat}")
    with pytest.raises(ValueError, match="taken by a built-in task"):
        D.parse_task(f"synthetic-stripes={flat}")
    with pytest.raises(FileNotFoundError, match="Expected layout"):
        D.folder_task(tmp_path / "nothing-here", "empty")


def test_folder_mistakes_are_refused_by_name(tmp_path):
    for spec in ("folder:", "nopath=", "blank=  "):
        with pytest.raises(ValueError, match="no folder given"):
            D.parse_task(spec)
    one = make_folder(tmp_path / "one", classes=("only",))
    with pytest.raises(ValueError, match="needs two or more"):
        D.folder_task(one, "one-class")
    twins = make_folder(tmp_path / "twins", classes=("green_square", "green square", "red"))
    with pytest.raises(ValueError, match="read as one class name"):
        D.folder_task(twins, "twins")
    empty = make_folder(tmp_path / "empty-class", classes=("a", "b"))
    (empty / "c").mkdir()
    with pytest.raises(FileNotFoundError, match="c: a class folder with no images"):
        D.folder_task(empty, "empty-class")
    hidden = make_folder(tmp_path / "hidden", classes=("a", "b"))
    for where in (hidden / ".ipynb_checkpoints", hidden / "a" / ".ipynb_checkpoints"):
        where.mkdir()
        Image.new("RGB", (8, 8)).save(where / "x-checkpoint.png")
    task = D.folder_task(hidden, "hidden")
    assert task.classnames == ("a", "b") and len(task.splits()["train"]) + len(task.splits()["test"]) == 20


def test_an_unreadable_image_is_named(tmp_path):
    tree = make_folder(tmp_path / "broken", classes=("a", "b"), per_class=3)
    bad = tree / "a" / "1.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated
    task = D.folder_task(tree, "broken")
    with pytest.raises(OSError, match=f"{bad}: cannot read this image"):
        for split in ("train", "test"):  # wherever the seeded hold-out put it
            task.load(split, size=SIZE).materialize()


def test_loader_workers_are_shared_among_torchrun_processes(monkeypatch):
    monkeypatch.delenv("ARITH_DATA_WORKERS")
    monkeypatch.setattr(imagedata.os, "cpu_count", lambda: 17)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert imagedata._workers() == 4
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert imagedata._workers() == 8
    monkeypatch.setenv("ARITH_DATA_WORKERS", "2")
    assert imagedata._workers() == 2


def test_split_sizes_round_to_the_nearest_image():
    # min(round(10 % of the pool), 5000), at least one image from two on
    assert [imagedata.holdout_size(n) for n in (0, 1, 2, 19, 21, 100, 60000)] == [0, 0, 1, 2, 2, 10, 5000]
    train, test = imagedata.fixed_test_holdout(1, "solo", 0.2)  # one image: it trains, no test image
    assert train.tolist() == [0] and test.tolist() == []
    train, test = imagedata.fixed_test_holdout(13, "t", 0.2)  # round(2.6) = 3
    assert len(test) == 3 and sorted(train.tolist() + test.tolist()) == list(range(13))


def test_a_label_equal_to_the_class_count_is_refused():
    from arith.realsets import _check_labels

    assert _check_labels("t", np.array([0, 9]), 10, "here").tolist() == [0, 9]
    with pytest.raises(FileNotFoundError, match=r"labels outside 0..9 in here"):
        _check_labels("t", np.array([0, 10]), 10, "here")
