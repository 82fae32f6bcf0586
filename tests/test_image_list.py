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


def test_a_symlink_loop_is_skipped_not_multiplied(tmp_path, caplog) -> None:
    """The defect: ``ln -s .. train/bag/loop`` turned 24 images into 984 rows, most relabelled."""
    from tests.images import write_image_folder

    written = write_image_folder(str(tmp_path), ("bag", "cat", "dog"), 8, splits=("train",), size=4)
    os.symlink("..", tmp_path / "train" / "bag" / "loop")  # -> train/: a loop through every class
    os.symlink("../dog", tmp_path / "train" / "cat" / "alias")  # a second name for a class folder
    with caplog.at_level("WARNING", logger="cache_builder.image_list"):
        listing = discover_splits(str(tmp_path))["train"]
    assert len(listing) == 24 and listing.paths == tuple(p.removeprefix("train/") for p in written)
    assert listing.labels == tuple(c for c in range(3) for _ in range(8))
    assert listing.skipped_links == ("bag/loop", "cat/alias")
    assert "bag/loop" in caplog.text and "symlink loop" in caplog.text and "cat/alias" in caplog.text
    # a data root that is itself a symlink (with images directly in it) is listed as usual
    os.symlink(tmp_path / "train" / "dog", tmp_path / "linked")
    assert scan_image_folder(str(tmp_path / "linked")).paths == tuple(p.removeprefix("train/dog/") for p in written[16:])


def test_symlinks_outside_the_root_are_followed_and_recorded(tmp_path) -> None:
    from tests.images import write_image_folder

    outside = tmp_path / "elsewhere"
    write_image_folder(str(outside), ("x",), 2, size=4)
    os.symlink(outside / "x" / "000.png", tmp_path / "extra.png")
    root = tmp_path / "data"
    write_image_folder(str(root), ("a", "b"), 1, size=4)
    os.symlink(tmp_path / "extra.png", root / "a" / "linked.png")  # a file outside the root, via two links
    os.symlink(outside / "x", root / "b" / "more")  # a folder outside the root
    os.symlink(outside / "x", root / "b" / "same")  # ... and a second name for it: listed once
    os.symlink(root / "b" / "more", outside / "x" / "back")  # a loop outside the root
    listing = scan_image_folder(str(root))
    assert listing.paths == ("a/000.png", "a/linked.png", "b/000.png", "b/more/000.png", "b/more/001.png")
    assert listing.labels == (0, 0, 1, 1, 1)
    assert listing.outside_links == ("a/linked.png", "b/more")
    assert sorted(listing.skipped_links) == ["b/more/back", "b/same"]


def test_file_identities_follow_content_changes(tmp_path) -> None:
    from cache_builder.image_list import content_fingerprint, file_identities, first_changed
    from tests.images import write_image_folder

    write_image_folder(str(tmp_path), ("a", "b"), 2, size=4)
    listing = scan_image_folder(str(tmp_path))
    ids = file_identities(listing)
    assert ids.shape == (4, 2) and ids.dtype.name == "int64"
    assert ids[2, 0] == os.path.getsize(listing.absolute(2)) and ids[2, 1] == os.stat(listing.absolute(2)).st_mtime_ns
    before = content_fingerprint(listing)
    assert first_changed(listing, ids) is None
    st = os.stat(listing.absolute(2))
    os.utime(listing.absolute(2), ns=(st.st_atime_ns, st.st_mtime_ns + 1000))
    row, recorded, current = first_changed(listing, ids)
    assert row == 2 and recorded == tuple(ids[2]) and current == (ids[2, 0], ids[2, 1] + 1000)
    assert content_fingerprint(listing) != before
    os.remove(listing.absolute(3))
    assert first_changed(listing, ids)[0] == 2 and tuple(file_identities(listing)[3]) == (-1, -1)
