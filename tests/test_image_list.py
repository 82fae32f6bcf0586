from __future__ import annotations

import os

import pytest

from cache_builder.image_list import ImageListError, discover_splits, read_file_list, scan_image_folder


def _touch(path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()


def test_split_folders_are_listed_in_sorted_order_with_labels(tmp_path) -> None:
    for split in ("train", "val"):
        for cls in ("dog", "cat"):
            for name in ("b.png", "a.jpg", "notes.txt"):
                _touch(str(tmp_path / split / cls / name))
    splits = discover_splits(str(tmp_path))
    assert list(splits) == ["train", "val"]
    tr = splits["train"]
    assert tr.classes == ("cat", "dog")
    assert tr.paths == ("cat/a.jpg", "cat/b.png", "dog/a.jpg", "dog/b.png")
    assert tr.labels == (0, 0, 1, 1)
    assert tr.fingerprint() == splits["val"].fingerprint()


def test_single_class_root_is_one_train_split(tmp_path) -> None:
    _touch(str(tmp_path / "x" / "1.png"))
    assert list(discover_splits(str(tmp_path))) == ["train"]


def test_file_list_with_and_without_labels(tmp_path) -> None:
    lst = tmp_path / "list.txt"
    lst.write_text("# comment\nimgs/a b.png 3\nimgs/c.png\n\n")
    il = read_file_list(str(lst), root=str(tmp_path))
    assert il.paths == ("imgs/a b.png", "imgs/c.png")
    assert il.labels == (3, -1)
    assert il.absolute(0) == os.path.join(str(tmp_path), "imgs", "a b.png")


def test_errors_name_the_culprit(tmp_path) -> None:
    with pytest.raises(ImageListError, match="no images found"):
        scan_image_folder(str(tmp_path))
    with pytest.raises(ImageListError, match="no such data"):
        discover_splits(str(tmp_path / "missing"))
    bad = tmp_path / "l.txt"
    bad.write_text("a.png -4\n")
    with pytest.raises(ImageListError, match=r"l.txt:1: label -4"):
        read_file_list(str(bad))


def test_evaluation_listing_has_the_cache_order_and_images(tmp_path) -> None:
    """evaluate's split listing is stage 1's (same images, same order), with split-prefixed paths:
    class "a-b" sorts after "a" as a class but before it as a path prefix ('-' < '/')."""
    from PIL import Image

    from evaluate.image_folder import list_split

    for split in ("train", "val"):
        for cls in ("a", "a-b"):
            os.makedirs(tmp_path / split / cls)
            for name in ("x.png", "y.gif"):
                Image.new("RGB", (4, 4)).save(tmp_path / split / cls / name)
    os.makedirs(tmp_path / "val" / ".cache")  # hidden folders are not classes
    for split in ("train", "val"):
        stage1 = discover_splits(str(tmp_path))[split]
        listing = list_split(str(tmp_path), split)
        assert listing.paths == tuple(f"{split}/{p}" for p in stage1.paths)
        assert listing.labels == stage1.labels and listing.classes == stage1.classes == ("a", "a-b")
    assert list_split(str(tmp_path), "train").paths[:2] == ("train/a/x.png", "train/a/y.gif")
