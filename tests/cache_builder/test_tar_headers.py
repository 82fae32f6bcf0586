"""``tar_members``: the regular files of a tar from its headers, equal to what ``tarfile`` reads,
for every header format, and an error (not a short index) for a corrupt or cut-short tar."""

from __future__ import annotations

import io
import tarfile

import pytest

from cache_builder.tar_headers import TarHeaderError, tar_members


def _archive(fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        def add(name: str, payload: bytes = b"", kind: bytes = tarfile.REGTYPE) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.size = kind, len(payload) if kind == tarfile.REGTYPE else 0
            if kind == tarfile.SYMTYPE:
                info.linkname = "a.jpg"
            tar.addfile(info, io.BytesIO(payload) if kind == tarfile.REGTYPE else None)

        add("dir/", kind=tarfile.DIRTYPE)
        add("a.jpg", b"x" * 700)
        add("a.cls", b"3")
        add("link.jpg", kind=tarfile.SYMTYPE)
        add("empty.jpg")
        add("d" * 60 + "/" + "e" * 80 + ".jpg", b"long" * 300)  # > 100 chars: ustar prefix, GNU 'L' or pax 'path'
        add("ü" * 70 + ".png", b"unicode name")  # non-ASCII and long (pax, GNU)
        add("z.jpg", b"\0" * 512)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_members_equal_tarfiles_for_every_header_format(fmt) -> None:
    data = _archive(fmt) if fmt != tarfile.USTAR_FORMAT else None
    if data is None:  # ustar cannot hold the non-ASCII 140-byte name: leave it out
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
            for name, payload in (("a.jpg", b"x" * 700), ("p" * 120 + "/q.jpg", b"prefixed"), ("b.cls", b"1")):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
        data = buf.getvalue()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        expected = [(m.name, m.offset_data, m.size) for m in tar if m.isfile()]
    got = []
    stream = io.BytesIO(data)
    for name, offset, size in tar_members(stream):
        stream.seek(offset)
        assert len(stream.read(size)) == size
        got.append((name, offset, size))
    assert got == expected and len(got) >= 3


def test_a_corrupt_or_cut_short_tar_is_an_error_naming_the_byte() -> None:
    data = bytearray(_archive(tarfile.GNU_FORMAT))
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tar:
        second = [m for m in tar if m.isfile()][1].offset  # the header of a.cls
    broken = bytearray(data)
    broken[second + 10] ^= 0xFF  # a flipped byte in a later header: tarfile would stop there silently
    with pytest.raises(TarHeaderError, match=f"bad header checksum at byte {second}"):
        list(tar_members(io.BytesIO(bytes(broken))))
    with pytest.raises(TarHeaderError, match="ends inside the member 'a.jpg'"):
        list(tar_members(io.BytesIO(bytes(data[:1024]))))  # a.jpg's 700 bytes cut at 512
    with pytest.raises(TarHeaderError, match="bad header checksum at byte 0"):
        list(tar_members(io.BytesIO(b"not a tar at all" * 64)))
    assert list(tar_members(io.BytesIO(b""))) == []
