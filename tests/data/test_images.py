"""Image files: scan, checks, decoding and the decoded cache, on real files."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from asl_sweep.data import images as images_mod
from asl_sweep.data.images import load_image_set
from asl_sweep.runtime.errors import DataError
from asl_sweep.settings.config import DataConfig


def load(folder, cache, **kw):
    return load_image_set(DataConfig(root=folder, image_size=16, **kw), 16, cache)


def test_folder_loads_as_rgb_uint8(data_config, tmp_path):
    s = load_image_set(data_config, 16, tmp_path / "cache")
    assert s.images.dtype == torch.uint8 and s.images.shape == (18, 3, 16, 16)
    assert s.classes == ["A", "B", "C"] and s.labels.tolist().count(0) == 6


def test_grayscale_rgba_and_palette_images_become_rgb(image_folder, tmp_path):
    Image.new("L", (20, 20), 128).save(image_folder / "A" / "p1_A_gray.png")
    Image.new("RGBA", (20, 20), (255, 0, 0, 128)).save(image_folder / "A" / "p1_A_rgba.png")
    Image.new("P", (20, 20), 3).save(image_folder / "B" / "p1_B_pal.gif")
    s = load(image_folder, tmp_path / "cache")
    assert s.images.shape == (21, 3, 16, 16)
    gray = s.names.index("A/p1_A_gray.png")
    assert s.images[gray].float().mean() == pytest.approx(128, abs=1)


def test_a_16_bit_image_is_scaled_to_8_bits_not_clipped(image_folder, tmp_path):
    ramp = np.linspace(0, 65535, 16 * 16).astype(np.uint16).reshape(16, 16)
    Image.fromarray(ramp).save(image_folder / "A" / "p1_A_16bit.png")
    s = load(image_folder, tmp_path / "cache")
    pixels = s.images[s.names.index("A/p1_A_16bit.png")][0].float()
    assert (pixels == 255).float().mean() < 0.05  # before the fix 94% became white
    assert pixels.min() <= 2 and pixels.max() >= 250
    expected = torch.from_numpy(ramp.astype(np.float64) / 257).float()
    assert (pixels - expected).abs().mean() < 3


def test_a_32_bit_integer_image_above_16_bits_is_scaled_not_white(image_folder, tmp_path):
    """A 32-bit integer TIFF (Pillow's mode I, as scientific cameras write) whose pixels go
    above 65535 was read as 16 bits: everything above became white."""
    ramp = np.linspace(0, 2**31 - 1, 16 * 16).astype(np.int32).reshape(16, 16)
    Image.fromarray(ramp, mode="I").save(image_folder / "A" / "p1_A_32bit.tiff")
    s = load(image_folder, tmp_path / "cache")
    pixels = s.images[s.names.index("A/p1_A_32bit.tiff")][0].float()
    expected = torch.from_numpy(ramp.astype(np.float64) * (255.0 / (2**31 - 1))).float()
    assert (pixels - expected).abs().mean() < 3 and (pixels == 255).float().mean() < 0.05
    assert pixels.min() <= 2 and pixels.max() >= 250


def test_a_floating_point_image_from_0_to_1_is_scaled_not_black(image_folder, tmp_path):
    """A single-channel float TIFF (scikit-image's and numpy's 0-1 pixels): Pillow's own
    conversion to RGB clipped every value to 0 or 1, a black image."""
    ramp = np.linspace(0, 1, 16 * 16, dtype=np.float32).reshape(16, 16)
    Image.fromarray(ramp, mode="F").save(image_folder / "A" / "p1_A_float.tiff")
    s = load(image_folder, tmp_path / "cache")
    pixels = s.images[s.names.index("A/p1_A_float.tiff")][0].float()
    expected = torch.from_numpy(ramp * 255.0)
    assert (pixels - expected).abs().mean() < 3 and pixels.max() >= 250


@pytest.mark.parametrize("name, content, reason", [
    ("p1_A_corrupt.jpg", b"\xff\xd8\xff\xe0 definitely not a jpeg", "cannot be decoded"),
    ("notes.txt", b"hello", "not an image file"),
])
def test_bad_files_are_named_or_skipped(image_folder, tmp_path, name, content, reason):
    bad = image_folder / "A" / name
    bad.write_bytes(content)
    with pytest.raises(DataError) as e:
        load(image_folder, tmp_path / "c1")
    assert str(bad) in str(e.value) and reason in str(e.value)
    messages = []
    s = load_image_set(DataConfig(root=image_folder, image_size=16, on_bad_image="skip"), 16,
                       tmp_path / "c2", log=messages.append)
    assert len(s) == 18
    assert "skipped 1 bad file" in messages[0] and name in messages[0]


def test_a_decompression_bomb_is_a_named_error_or_skipped(image_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # 20x20 = 400 pixels is "too large"
    with pytest.raises(DataError, match="p1_A_0.png: cannot be decoded .*decompression bomb"):
        load(image_folder, tmp_path / "c1")
    messages = []
    bigger = image_folder / "A" / "p1_A_big.png"
    Image.new("RGB", (40, 40)).save(bigger)  # 1600 pixels: beyond twice the limit as well
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    s = load_image_set(DataConfig(root=image_folder, image_size=16, on_bad_image="skip"), 16,
                       tmp_path / "c2", log=messages.append)
    assert len(s) == 18 and "p1_A_big.png" in messages[0] and "decompression bomb" in messages[0]


def test_a_jpeg_counts_the_pixels_it_decodes_against_the_bomb_limit(tmp_path, monkeypatch):
    """A 108-megapixel phone photo (12000x9000, above Pillow's 89 million) decodes at 1/8
    scale, 1.7 million pixels at 224, in 50 ms: it was refused as a decompression bomb by
    Pillow's check of the full size at open. Here at a small limit: a 96x96 JPEG decoded at
    12x12 passes a 1,000-pixel limit, the same pixels as PNG (decoded whole) do not."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    pixels = np.full((96, 96, 3), 90, dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", quality=95)
    Image.fromarray(pixels).save(tmp_path / "scan.png")
    assert images_mod.decode_image(tmp_path / "phone.jpg", 12).mean() == pytest.approx(90, abs=3)
    with pytest.raises(DataError, match="larger than 1,000 pixels"):
        images_mod.decode_image(tmp_path / "scan.png", 12)
    assert Image.MAX_IMAGE_PIXELS == 1000  # the limit is the user's again


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_an_unreadable_file_is_named_like_a_corrupt_one(image_folder, tmp_path):
    locked = image_folder / "B" / "p1_B_0.png"
    locked.chmod(0)
    with pytest.raises(DataError, match="p1_B_0.png: cannot be read"):
        load(image_folder, tmp_path / "c")
    messages = []
    load_image_set(DataConfig(root=image_folder, image_size=16, on_bad_image="skip"), 16,
                   tmp_path / "c2", log=messages.append)
    assert "p1_B_0.png: cannot be read" in messages[0]


def test_an_unreadable_file_as_root_sees_it_is_named(image_folder, tmp_path, monkeypatch):
    # As root every file is readable, so the check itself is exercised through os.access.
    real_access = os.access
    monkeypatch.setattr(images_mod.os, "access",
                        lambda p, mode: not str(p).endswith("p1_B_0.png") and real_access(p, mode))
    with pytest.raises(DataError, match="p1_B_0.png: cannot be read"):
        load(image_folder, tmp_path / "c")


def test_dangling_links_are_counted_in_the_skip_summary(image_folder, tmp_path):
    (image_folder / "C" / "p9_C_gone.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(DataError, match="p9_C_gone.png: a dangling symbolic link"):
        load(image_folder, tmp_path / "c1")
    messages = []
    s = load_image_set(DataConfig(root=image_folder, image_size=16, on_bad_image="skip"), 16,
                       tmp_path / "c2", log=messages.append)
    assert len(s) == 18 and "skipped 1 bad file" in messages[0] and "dangling" in messages[0]


def test_a_link_to_a_folder_in_a_class_folder_is_named_not_passed_over(image_folder, tmp_path):
    """The scan does not follow a link to a folder (one back up to the root would take in
    the other classes' photos as this class's); it was 'not an image file (unknown
    extension)', or its photos left out without a word."""
    (image_folder / "A" / "more").symlink_to(image_folder)
    with pytest.raises(DataError, match="more: a link to a folder, which is not followed"):
        load(image_folder, tmp_path / "c1")


def test_truncated_image_is_named(image_folder, tmp_path):
    good = image_folder / "B" / "p1_B_0.png"
    truncated = image_folder / "B" / "p1_B_trunc.jpg"
    Image.open(good).convert("RGB").resize((64, 64)).save(truncated, quality=95)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(DataError, match="p1_B_trunc.jpg: cannot be decoded"):
        load(image_folder, tmp_path / "c")


def test_empty_class_folder_is_named(image_folder, tmp_path):
    (image_folder / "D").mkdir()
    with pytest.raises(DataError, match=r"/D: empty class folder"):
        load(image_folder, tmp_path / "c")


def test_what_a_mac_zip_or_a_notebook_leaves_beside_the_photos_is_not_data(image_folder,
                                                                          tmp_path):
    """Unzipped on a Mac: __MACOSX/<class>/._x.png beside the classes, ._x.png and .DS_Store
    in them; a notebook's .ipynb_checkpoints/ copy inside a class; what Windows leaves. None
    is a class or an image (a copy would count one photo twice, maybe across the split)."""
    (image_folder / "__MACOSX" / "A").mkdir(parents=True)
    (image_folder / "__MACOSX" / "A" / "._p1_A_0.png").write_bytes(b"\x00\x05\x16\x07")
    (image_folder / "A" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (image_folder / "A" / "._p1_A_0.png").write_bytes(b"\x00\x05\x16\x07")
    (image_folder / "A" / ".ipynb_checkpoints").mkdir()
    (image_folder / "A" / ".ipynb_checkpoints" / "p1_A_0.png").write_bytes(
        (image_folder / "A" / "p1_A_0.png").read_bytes())
    # Windows: Explorer's thumbnail cache and folder settings in a class, and a USB drive's
    # recycle bin and system folder beside the classes (each was "not an image file", or a
    # class of its own)
    (image_folder / "B" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (image_folder / "B" / "desktop.ini").write_text("[.ShellClassInfo]\n")
    (image_folder / "$RECYCLE.BIN" / "S-1-5-21").mkdir(parents=True)
    (image_folder / "$RECYCLE.BIN" / "S-1-5-21" / "$R0.png").write_bytes(
        (image_folder / "A" / "p1_A_0.png").read_bytes())
    (image_folder / "System Volume Information").mkdir()
    (image_folder / "System Volume Information" / "IndexerVolumeGuid").write_text("{x}")
    s = load(image_folder, tmp_path / "c")
    assert s.classes == ["A", "B", "C"] and len(s) == 18 and not s.skipped


@pytest.mark.parametrize("orientation, white", [(1, "left"), (6, "top"), (8, "bottom"),
                                                 (3, "right")])
def test_a_phone_photo_is_decoded_upright_as_its_exif_orientation_says(tmp_path, orientation,
                                                                      white):
    """A phone stores a portrait photo as landscape pixels and an EXIF orientation that every
    viewer applies; the model must see it as the person did, not turned 90 degrees. Stored: a
    white left half. Shown: as stored (1), turned 90 degrees clockwise (6), counter-clockwise
    (8) or 180 degrees (3)."""
    pixels = np.zeros((40, 80, 3), dtype=np.uint8)
    pixels[:, :40] = 255
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = orientation
    path = tmp_path / "phone.jpg"
    image.save(path, exif=exif, quality=95)
    decoded = images_mod.decode_image(path, 16).astype(float)
    halves = {"top": decoded[:8], "bottom": decoded[8:], "left": decoded[:, :8],
              "right": decoded[:, 8:]}
    opposite = {"top": "bottom", "bottom": "top", "left": "right", "right": "left"}[white]
    assert halves[white].mean() > 200 and halves[opposite].mean() < 50


def test_a_phones_heic_a_browsers_jfif_and_avif_are_read_heic_upright(image_folder, tmp_path):
    """An iPhone's photos are HEIC, a JPEG saved from a browser on Windows is often .jfif:
    each was refused as 'not an image file (unknown extension)', so a folder of phone photos
    could not be read at all. With pillow-heif (the dev and heic extras) HEIC is read and
    turned upright once (white left half, EXIF orientation 6: white on top)."""
    pytest.importorskip("pillow_heif")
    pixels = np.zeros((40, 80, 3), dtype=np.uint8)
    pixels[:, :40] = 255
    phone = Image.fromarray(pixels)
    exif = phone.getexif()
    exif[0x0112] = 6
    # as a phone writes it: the turn in the container (pillow-heif makes it of the EXIF
    # bytes) and EXIF orientation 6 beside it, for readers that know only EXIF
    phone.save(image_folder / "B" / "p1_B_phone.heic", exif=exif.tobytes(), quality=95)
    Image.new("RGB", (20, 20), (200, 10, 10)).save(image_folder / "A" / "p1_A_web.jfif",
                                                   format="JPEG")
    Image.new("RGB", (20, 20), (10, 200, 10)).save(image_folder / "C" / "p1_C_new.avif")
    s = load(image_folder, tmp_path / "cache")
    assert len(s) == 21 and not s.skipped
    decoded = s.images[s.names.index("B/p1_B_phone.heic")].float().mean(0)
    assert decoded[:8].mean() > 200 and decoded[8:].mean() < 50
    web = s.images[s.names.index("A/p1_A_web.jfif")].float().mean((1, 2))
    assert web[0] > 150 and web[1] < 60


def test_a_heic_photo_without_pillow_heif_says_what_it_needs(image_folder):
    """Where pillow-heif is not installed a HEIC photo is named as one, with the package to
    install (it said 'not an image file')."""
    Image.new("RGB", (20, 20)).save(image_folder / "A" / "IMG_0001.HEIC", format="PNG")
    code = ("import sys; sys.modules['pillow_heif'] = None\n"
            "from asl_sweep.data.images import load_image_set\n"
            "from asl_sweep.settings.config import DataConfig\n"
            f"load_image_set(DataConfig(root={str(image_folder)!r}, image_size=16), 16, "
            f"{str(image_folder.parent / 'cache')!r})")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].endswith(
        f"{image_folder / 'A' / 'IMG_0001.HEIC'}: a HEIC/HEIF photo (a phone's format), which "
        "needs pillow-heif: pip install pillow-heif (or convert it to JPEG) (set "
        "data.on_bad_image: skip to leave such files out)")


def test_a_name_in_another_encoding_is_one_line_naming_it(image_folder, tmp_path):
    """A file, a class folder or a folder inside one named in Latin-1 (a zip made on
    Windows, unpacked here) was a UnicodeEncodeError traceback from the folder's digest; now
    one line, its byte shown escaped, saying how to rename; with on_bad_image: skip the file
    is left out."""
    bad = os.fsdecode(bytes(image_folder) + b"/A/caf\xe9.png")
    Image.new("RGB", (20, 20)).save(bad)
    with pytest.raises(DataError) as e:
        load(image_folder, tmp_path / "c1")
    assert str(e.value).startswith(f"{image_folder}/A/caf\\xe9.png: its name is not UTF-8 "
                                   "text (a zip made on another system?): rename it")
    messages = []
    s = load_image_set(DataConfig(root=image_folder, image_size=16, on_bad_image="skip"), 16,
                       tmp_path / "c2", log=messages.append)
    assert len(s) == 18 and "A/caf\\xe9.png: its name is not UTF-8" in messages[0]
    os.remove(bad)  # a sub-folder of a class folder so named: a traceback until now
    os.makedirs(os.fsdecode(bytes(image_folder) + b"/A/caf\xe9"))
    Image.new("RGB", (20, 20)).save(os.fsdecode(bytes(image_folder) + b"/A/caf\xe9/p9.png"))
    with pytest.raises(DataError) as e:
        load(image_folder, tmp_path / "c4")
    assert str(e.value).startswith(f"{image_folder}/A/caf\\xe9/p9.png: its folder is not "
                                   "UTF-8 text (a zip made on another system?): rename it")
    os.rename(os.fsdecode(bytes(image_folder) + b"/B"),
              os.fsdecode(bytes(image_folder) + b"/B\xe9"))
    with pytest.raises(DataError, match=r"B\\xe9: a class folder whose name is not UTF-8"):
        load(image_folder, tmp_path / "c3")


def test_missing_root_is_named(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="data.root: .* is not a folder"):
        load(tmp_path / "nope", tmp_path / "c")
    # It says what is there, and where a relative path was read from (a study file's
    # relative root is not read from the study file's folder).
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photo.png").write_bytes(b"")
    for given, what in (("nope", "does not exist"), ("photo.png", "is a file")):
        with pytest.raises(DataError) as caught:
            load(tmp_path / given, tmp_path / "c")
        assert str(caught.value) == (
            f"data.root: {tmp_path / given} is not a folder ({what}); give the folder that "
            "holds one sub-folder per class (a relative data.root or --data is read from the "
            f"folder the command runs in, here {tmp_path})")


def test_an_archive_given_as_the_folder_says_to_unpack_it(image_folder, tmp_path):
    """The photos as they were downloaded, photos.zip or photos.tar.gz, given as data.root:
    'is not a folder (is a file)'; now it says how to unpack it."""
    import shutil

    for kind, said in (("zip", "unzip {a} -d {f}"),
                       ("gztar", "mkdir {f} && tar -xf {a} -C {f}")):
        archive = Path(shutil.make_archive(str(tmp_path / "photos"), kind, image_folder))
        with pytest.raises(DataError) as caught:
            load(archive, tmp_path / "c")
        assert str(caught.value) == (
            f"data.root: {archive} is an archive, not a folder: unpack it first (e.g. "
            + said.format(a=archive, f=tmp_path / "photos")
            + ") and give the folder that holds one sub-folder per class")


def test_second_load_comes_from_the_cache_without_decoding(data_config, tmp_path, monkeypatch):
    first = load_image_set(data_config, 16, tmp_path / "cache")

    def no_decoding(*args):
        raise AssertionError("decoded again")

    monkeypatch.setattr(images_mod, "_decode_or_reason", no_decoding)
    second = load_image_set(data_config, 16, tmp_path / "cache")
    assert torch.equal(first.images, second.images) and first.names == second.names


def test_cache_invalidates_when_an_image_changes(data_config, image_folder, tmp_path):
    first = load_image_set(data_config, 16, tmp_path / "cache")
    Image.new("RGB", (20, 20), (255, 255, 255)).save(image_folder / "A" / "p1_A_0.png")
    second = load_image_set(data_config, 16, tmp_path / "cache")
    assert first.digest != second.digest
    assert not torch.equal(first.images, second.images)


def test_an_unchanged_file_is_not_read_again_a_changed_one_is(data_config, image_folder,
                                                                tmp_path, monkeypatch):
    """Every command read every byte of the folder for its digest (4 s for 5.6 GB of phone
    photos, each worker, report, evaluate, export): a file whose stat is unchanged is now not
    read. One rewritten with the same size and its modification time set back (what a copy
    tool preserving times does) still changes the digest: its change time moved. A file
    changed in the last 2 s is not kept (a write in the same tick of a coarse clock)."""
    first = load_image_set(data_config, 16, tmp_path / "cache")
    read = []
    real_read = type(image_folder).read_bytes

    def counted(path):
        read.append(path.name)
        return real_read(path)

    monkeypatch.setattr(type(image_folder), "read_bytes", counted)
    assert load_image_set(data_config, 16, tmp_path / "cache").digest == first.digest
    assert len(read) == 18  # written just now: not kept
    time.sleep(2.1)
    assert load_image_set(data_config, 16, tmp_path / "cache").digest == first.digest
    read.clear()
    assert load_image_set(data_config, 16, tmp_path / "cache").digest == first.digest
    assert read == []
    target = image_folder / "A" / "p1_A_0.png"
    before = target.stat()
    data = bytearray(real_read(target))
    data[-20] ^= 0xFF  # one byte inside the image data: the same size
    target.write_bytes(bytes(data))
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert target.stat().st_size == before.st_size
    assert target.stat().st_mtime_ns == before.st_mtime_ns
    assert images_mod.folder_digest(
        image_folder, *images_mod.scan_folder(image_folder, "error")[:2], "error",
        memo=tmp_path / "cache" / "file-digests.json") != first.digest
    assert read == ["p1_A_0.png"]
    # a damaged memo, or a damaged entry in it, is read past: the files read again, the
    # same digest
    memo = tmp_path / "cache" / "file-digests.json"
    files, labels = images_mod.scan_folder(image_folder, "error")[:2]
    plain = images_mod.folder_digest(image_folder, files, labels, "error")
    entries = json.loads(memo.read_text())
    entries[str(files[1].absolute())][5] = "not hex"
    entries[str(files[2].absolute())][5] = "abcd"
    memo.write_text(json.dumps(entries))
    read.clear()
    assert images_mod.folder_digest(image_folder, files, labels, "error", memo=memo) == plain
    assert sorted(read) == sorted([files[1].name, files[2].name, target.name])
    memo.write_text("{not json")
    read.clear()
    assert images_mod.folder_digest(image_folder, files, labels, "error", memo=memo) == plain
    assert len(read) == len(files) == 18
    # a file deleted from the folder leaves the memo (it kept every file ever read); another
    # folder's entries stay
    elsewhere = str(tmp_path / "other" / "A" / "x.png")
    memo.write_text(json.dumps(json.loads(memo.read_text())
                               | {elsewhere: [1, 2, 3, 4, 5, "00" * 32]}))
    deleted, kept = str(files[5].absolute()), str(files[6].absolute())
    assert {deleted, kept} <= set(json.loads(memo.read_text()))
    files[5].unlink()
    files, labels = images_mod.scan_folder(image_folder, "error")[:2]
    images_mod.folder_digest(image_folder, files, labels, "error", memo=memo)
    assert deleted not in json.loads(memo.read_text())
    assert {kept, elsewhere} <= set(json.loads(memo.read_text()))


STOPPING = """
import os, signal, sys
from pathlib import Path
from asl_sweep.data.images import decode_folder, folder_digest, scan_folder
from asl_sweep.runtime import signals

root = Path(sys.argv[1])
files, labels, classes, skipped = scan_folder(root, "error")
signals.install()
os.kill(os.getpid(), signal.SIGTERM)  # a scheduler's one SIGTERM, as every file is read
try:
    digest = folder_digest(root, files, labels, "error")
    print("digest ran to the end")
except KeyboardInterrupt:
    print("digest stopped")
signals.install()
digest = folder_digest(root, files, labels, "error")
os.kill(os.getpid(), signal.SIGTERM)  # and as they are decoded
try:
    decode_folder(root, files, labels, classes, 16, "error", digest, skipped, log=print)
    print("decode ran to the end")
except KeyboardInterrupt:
    print("decode stopped")
"""


@pytest.mark.slow
def test_a_stop_while_a_folder_is_read_or_decoded_is_taken_there(tmp_path):
    """Reading every file for the digest and decoding them (in worker processes, from 128
    files) take minutes on a large folder: a stop is taken between files, not after them
    all (it was taken at the first trial)."""
    import subprocess
    import sys

    from tests.conftest import make_image_folder

    folder = make_image_folder(tmp_path / "images", per_class=50)  # 150 files: two decoders
    out = subprocess.run([sys.executable, "-c", STOPPING, str(folder)], capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.split()[:4] == ["digest", "stopped", "decode", "stopped"], out.stderr

def test_a_set_larger_than_this_machines_memory_is_refused_before_decoding(image_folder, tmp_path,
                                                                          monkeypatch):
    """Every image is decoded into memory at once: beyond the machine's memory the system
    kills the run after the decoding, so it is one line before it."""
    monkeypatch.setattr(images_mod, "total_memory", lambda: 10_000)  # 18 x 3 x 16 x 16 > it
    with pytest.raises(DataError, match=r"data.root: .*images: 18 images at 16 px decode to "
                                        r"0.0 GiB, more than the 0.0 GiB of memory this "
                                        r"process may use \(the machine's, or its job's or "
                                        r"container's limit\): lower data.image_size or point "
                                        r"data.root at fewer"):
        load(image_folder, tmp_path / "c")
    assert not (tmp_path / "c").exists() or not list((tmp_path / "c").iterdir())
    synthetic = DataConfig(synthetic={"per_class": 100_000_000})  # 2.6 TB at 32 px: real RAM
    monkeypatch.undo()
    with pytest.raises(DataError, match=r"data.synthetic.per_class: 100,000,000 of each of 9 "
                                        r"letters at 32 px decode to 2,574.9 GiB"):
        load_image_set(synthetic, 32, tmp_path / "c")


def test_byte_for_byte_copies_are_said_once_with_the_files_and_classes(image_folder, tmp_path):
    """A copy of a photo under another name (or another letter) is a test image the model
    may train on: said in one line, naming the copies; the set still loads."""
    import shutil

    shutil.copy(image_folder / "A" / "p1_A_0.png", image_folder / "A" / "p2_A_copy.png")
    shutil.copy(image_folder / "A" / "p1_A_0.png", image_folder / "B" / "p3_B_copy.png")
    said = []
    s = load_image_set(DataConfig(root=image_folder, image_size=16), 16, tmp_path / "c",
                       log=said.append)
    assert len(s) == 20
    (line,) = [m for m in said if m.startswith("warning:")]
    assert line.startswith("warning: 2 file(s) are byte-for-byte copies of another "
                           "(A/p1_A_0.png = A/p2_A_copy.png = B/p3_B_copy.png); 1 photo(s) "
                           "filed under two letters: a copy in training of a test image")
    said.clear()
    (image_folder / "A" / "p2_A_copy.png").unlink()
    (image_folder / "B" / "p3_B_copy.png").unlink()
    load_image_set(DataConfig(root=image_folder, image_size=16), 16, tmp_path / "c",
                   log=said.append)
    assert not [m for m in said if m.startswith("warning:")]  # distinct files: nothing said


def test_a_root_whose_folders_are_splits_not_classes_is_refused(tmp_path):
    """A downloaded set kept as train/A/..., test/A/...: pointed at its top, the study would
    learn train folder against test folder."""
    from tests.conftest import make_image_folder

    make_image_folder(tmp_path / "set" / "train")
    make_image_folder(tmp_path / "set" / "Test")
    with pytest.raises(DataError, match=r"holds Test, train, which look like a data set's "
                                        r"own splits, not classes: point data.root at"):
        load(tmp_path / "set", tmp_path / "c")
    assert len(load(tmp_path / "set" / "train", tmp_path / "c")) == 18


def test_a_root_with_one_folder_of_classes_inside_says_where_to_point(tmp_path):
    """A zip that unpacks to set/set/A/...: the classes are one level down."""
    from tests.conftest import make_image_folder

    make_image_folder(tmp_path / "set" / "asl_alphabet_train")
    with pytest.raises(DataError, match=r"needs one sub-folder per class \(found 1\); its one "
                                        r"folder holds folders: point data.root at .*set/"
                                        r"asl_alphabet_train$"):
        load(tmp_path / "set", tmp_path / "c")


def test_a_root_of_loose_images_says_to_sort_them_into_class_folders(tmp_path, image_folder):
    flat = tmp_path / "flat"
    flat.mkdir()
    for n, photo in enumerate(sorted((image_folder / "A").iterdir())[:3]):
        (flat / f"{n}.png").write_bytes(photo.read_bytes())
    with pytest.raises(DataError, match=r"needs one sub-folder per class \(found 0\); its 3 "
                                        r"image\(s\) lie in it directly: move each into a "
                                        r"folder named for its class"):
        load(flat, tmp_path / "c")
