"""Image files in, uint8 tensors out: the folder scan and its checks, decoding (once, in
parallel) and the decoded cache keyed by the files' content. A file that cannot serve is
named with its reason, or skipped and counted under `on_bad_image: skip`."""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, features

from asl_sweep.data.imageset import ImageSet
from asl_sweep.data.synthetic import CLASSES, make_synthetic, synthetic_digest, synthetic_names
from asl_sweep.runtime import signals
from asl_sweep.runtime.errors import DataError, WriteError, as_text, is_text
from asl_sweep.runtime.files import atomic_torch_save, atomic_write_text, load_tensors
from asl_sweep.runtime.machine import total_memory, usable_cpus
from asl_sweep.settings.config import DataConfig

# The photo formats Pillow decodes (".jfif": a JPEG saved from a browser on Windows).
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".bmp", ".gif", ".tif",
                  ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm"}
if features.check_module("avif"):
    IMAGE_SUFFIXES.add(".avif")
# A phone's HEIC/HEIF photos (an iPhone's default): Pillow reads them through pillow-heif,
# where it is installed (pip install 'asl-sweep[heic]'); it applies their orientation.
HEIF_SUFFIXES = {".heic", ".heif"}
try:
    import pillow_heif
except ImportError:
    pass
else:
    pillow_heif.register_heif_opener()
    IMAGE_SUFFIXES |= HEIF_SUFFIXES
# Folder names of a data set already split, never classes of it.
SPLIT_NAMES = {"train", "training", "test", "testing", "val", "valid", "validation", "dev"}
# What a zip made on a Mac, or a Windows folder or USB drive, carries beside the photos
# (Explorer's thumbnail caches and folder settings, a drive's recycle bin and system
# folder; Windows names in any case): never a class, never an image.
NOT_DATA = {"__macosx", "thumbs.db", "ehthumbs.db", "ehthumbs_vista.db", "desktop.ini",
            "$recycle.bin", "system volume information"}


def is_data(path: Path, base: Path) -> bool:
    """Whether a file or folder under `base` can be data: no part of its path below `base`
    hidden (.DS_Store, ._IMG.jpg, .ipynb_checkpoints/, .git/), a Mac zip's __MACOSX or
    what Windows leaves (Thumbs.db, desktop.ini, $RECYCLE.BIN/)."""
    return not any(part.startswith(".") or part.lower() in NOT_DATA
                   for part in path.relative_to(base).parts)


CACHE_VERSION = 4  # 3: EXIF orientation applied at decode; 4: 0-1 float images scaled
ORIENTATION = 0x0112  # the EXIF tag a phone sets on a photo held upright or turned


# ---------------------------------------------------------------- loading
def load_image_set(cfg: DataConfig, size: int, cache_dir: Path, log=print) -> ImageSet:
    """The configured data set at `size` pixels, from the decoded cache when its content is
    unchanged. The built-in set is drawn by asl_sweep.data.synthetic."""
    if cfg.root is None:
        s = cfg.synthetic
        _fits_in_memory(cfg, size, s.per_class * len(CLASSES))
        digest = synthetic_digest(s.per_class, s.signers, s.seed, s.kind)
        return _cached(cache_dir, digest, size,
                       lambda: make_synthetic(s.per_class, size, s.seed, s.signers, s.kind), log)
    files, labels, classes, skipped = _scanned(cfg, size)
    digest = folder_digest(cfg.root, files, labels, cfg.on_bad_image, log,
                           Path(cache_dir) / "file-digests.json")
    return _cached(cache_dir, digest, size, lambda: decode_folder(
        cfg.root, files, labels, classes, size, cfg.on_bad_image, digest, skipped, log), log)


def list_image_set(cfg: DataConfig, size: int) -> tuple[list[str], list[int], list[str], int]:
    """The configured data set's image names (CLASS/FILE for photos), labels, classes and
    the count of files skipped, without decoding an image: a photo folder as
    load_image_set scans it (what only decoding finds is not known here), the built-in set
    as it would be drawn; refused where load_image_set would refuse it before decoding.
    What `run --dry-run` checks and splits."""
    if cfg.root is None:
        names, labels = synthetic_names(cfg.synthetic.per_class, cfg.synthetic.signers)
        _fits_in_memory(cfg, size, len(names))
        return names, labels, list(CLASSES), 0
    files, labels, classes, skipped = _scanned(cfg, size)
    return [str(f.relative_to(cfg.root)) for f in files], labels, classes, len(skipped)


def _scanned(cfg: DataConfig, size: int) -> tuple[list[Path], list[int], list[str], list[str]]:
    """The photo folder scanned (scan_folder), refused where its images would not fit in
    memory at `size`."""
    files, labels, classes, skipped = scan_folder(cfg.root, cfg.on_bad_image)
    _fits_in_memory(cfg, size, len(files))
    return files, labels, classes, skipped


def _fits_in_memory(cfg: DataConfig, size: int, n_images: int) -> None:
    """Every image is decoded into memory at once (then cached and mapped): a set larger
    than the memory this process may use can only end in the system killing the run, after
    minutes of decoding, so it is refused before the first image."""
    need, have = n_images * 3 * size * size, total_memory()
    if have and need > have:
        if cfg.root is None:
            what = (f"data.synthetic.per_class: {cfg.synthetic.per_class:,} of each of "
                    f"{len(CLASSES)} letters")
            fewer = "draw fewer (data.synthetic.per_class)"
        else:
            what = f"data.root: {cfg.root}: {n_images:,} images"
            fewer = "point data.root at fewer images"
        raise DataError(f"{what} at {size} px decode to {need / 2**30:,.1f} GiB, more than "
                        f"the {have / 2**30:.1f} GiB of memory this process may use (the "
                        f"machine's, or its job's or container's limit): lower "
                        f"data.image_size or {fewer}")


def _cached(cache_dir: Path, digest: str, size: int, build: Callable[[], ImageSet],
            log) -> ImageSet:
    key = hashlib.sha256(f"v{CACHE_VERSION}|{digest}|{size}".encode()).hexdigest()
    path = Path(cache_dir) / f"images-{key[:24]}.pt"
    if path.exists():
        try:
            stored = load_tensors(path, mmap=True)
            image_set = ImageSet(images=stored["images"], labels=stored["labels"],
                                 classes=list(stored["classes"]), names=list(stored["names"]),
                                 digest=digest, skipped=list(stored["skipped"]))
            _report_skipped(image_set.skipped, log)
            return image_set
        except Exception as e:  # a damaged cache is rebuilt, never trusted
            log(f"decoded cache {path} unreadable ({e}); decoding again")
    image_set = build()
    atomic_torch_save({"images": image_set.images, "labels": image_set.labels,
                       "classes": image_set.classes, "names": image_set.names,
                       "skipped": image_set.skipped}, path)
    return image_set


def scan_folder(root: Path, on_bad: str) -> tuple[list[Path], list[int], list[str], list[str]]:
    """ImageFolder layout: one sub-folder per class. Non-image files, unreadable files and
    dangling links are errors or skipped; returns files, labels, class names and the skipped
    files with their reasons."""
    root = Path(root)
    if not root.is_dir():
        unpack = _unpack(root) if root.is_file() else None
        if unpack:
            raise DataError(f"data.root: {root} is an archive, not a folder: unpack it "
                            f"first (e.g. {unpack}) and give the folder that holds "
                            "one sub-folder per class")
        what = "is a file" if root.exists() else "does not exist"
        raise DataError(f"data.root: {root} is not a folder ({what}); give the folder that "
                        "holds one sub-folder per class (a relative data.root or --data is "
                        f"read from the folder the command runs in, here {Path.cwd()})")
    try:
        class_dirs = _folders_in(root)
    except PermissionError:
        raise DataError(f"data.root: {root} cannot be read (permission denied)") from None
    if len(class_dirs) < 2:
        raise DataError(f"data.root: {root} needs one sub-folder per class (found "
                        f"{len(class_dirs)}){_layout_hint(root, class_dirs)}")
    if all(d.name.lower() in SPLIT_NAMES for d in class_dirs):
        # A downloaded set's layout (train/A/..., test/A/...): read as classes, the study
        # would learn to tell the train folder's photos from the test folder's.
        names = ", ".join(d.name for d in class_dirs)
        raise DataError(f"data.root: {root} holds {names}, which look like a data set's own "
                        "splits, not classes: point data.root at the folder whose sub-folders "
                        "are the classes (e.g. its train folder; asl-sweep splits it itself)")
    for class_dir in class_dirs:
        if not is_text(class_dir.name):
            raise DataError(f"{as_text(class_dir)}: a class folder whose name is not UTF-8 "
                            f"text{_RENAME}")
    files: list[Path] = []
    labels: list[int] = []
    skipped: list[str] = []
    for label, class_dir in enumerate(class_dirs):
        entries = sorted(p for p in class_dir.rglob("*")
                         if (p.is_file() or p.is_symlink()) and is_data(p, class_dir))
        if not entries:
            raise DataError(f"{class_dir}: empty class folder (every sub-folder of "
                            f"{root} is a class): put its images in it, or remove it")
        for p in entries:
            reason = _unusable(p)
            if reason:
                _bad(p, reason, on_bad)
                skipped.append(f"{as_text(p.relative_to(root))}: {reason}")
                continue
            files.append(p)
            labels.append(label)
    return files, labels, [d.name for d in class_dirs], skipped


def _unpack(path: Path) -> str | None:
    """The command that unpacks `path` where it is a zip or tar archive, else None."""
    import tarfile
    import zipfile

    folder = path.with_name(path.name.split(".")[0] or "photos")
    try:
        if zipfile.is_zipfile(path):
            return f"unzip {path} -d {folder}"
        if tarfile.is_tarfile(path):
            return f"mkdir {folder} && tar -xf {path} -C {folder}"
    except OSError:
        pass
    return None


def _folders_in(folder: Path) -> list[Path]:
    """The sub-folders of `folder` that can be data (not hidden, not a Mac zip's)."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and is_data(p, folder))


def _layout_hint(root: Path, class_dirs: list[Path]) -> str:
    """Where a root with fewer than two class folders has its classes, where that shows: one
    folder down (a zip unpacked to set/set/A/...), or not in folders at all."""
    try:
        if len(class_dirs) == 1 and len(_folders_in(class_dirs[0])) >= 2:
            return f"; its one folder holds folders: point data.root at {class_dirs[0]}"
        loose = sum(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in root.iterdir())
    except PermissionError:
        return ""
    if not class_dirs and loose:
        return (f"; its {loose} image(s) lie in it directly: move each into a folder named "
                "for its class (A/, B/, ...)")
    return ""


# A name in another encoding (a zip made on Windows, unpacked here): see errors.is_text.
_RENAME = (" (a zip made on another system?): rename it, e.g. convmv -f cp1252 -t utf8 -r "
           "--notest FOLDER")


def _unusable(path: Path) -> str | None:
    if not is_text(path):  # its own name, or a sub-folder's inside the class folder
        return (f"its {'name' if not is_text(path.name) else 'folder'} is not UTF-8 text"
                f"{_RENAME}")
    if path.is_symlink() and not path.exists():
        return "a dangling symbolic link"
    if path.is_dir():  # a link to a folder: the scan does not follow it (it could lead up
        # into another class's folder); its photos would be left out without a word
        return "a link to a folder, which is not followed: move or copy its images here"
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return not_an_image(path)
    if not os.access(path, os.R_OK):
        return "cannot be read (permission denied)"
    return None


def not_an_image(path: Path) -> str:
    """Why a file whose extension is none of IMAGE_SUFFIXES is not read."""
    if path.suffix.lower() in HEIF_SUFFIXES:
        return ("a HEIC/HEIF photo (a phone's format), which needs pillow-heif: pip install "
                "pillow-heif (or convert it to JPEG)")
    return "not an image file (unknown extension)"


def _bad(path: Path, reason: str, on_bad: str) -> None:
    if on_bad == "error":
        raise DataError(f"{as_text(path)}: {reason} (set data.on_bad_image: skip to leave such "
                        "files out)")


def folder_digest(root: Path, files: list[Path], labels: list[int], on_bad: str,
                  log: Callable[[str], None] = lambda _: None, memo: Path | None = None
                  ) -> str:
    """The content of the folder (every file's bytes, name and class): what the decoded
    cache and a study's record are keyed by. Files that are byte-for-byte copies of one
    another are said to `log`. `memo`: a file of the files' digests by their stat (see
    `_contents`), so that an unchanged file is not read again."""
    h = hashlib.sha256(f"folder|{on_bad}".encode())
    seen: dict[bytes, list[int]] = {}
    for i, (path, label, content) in enumerate(zip(files, labels, _contents(root, files, memo),
                                                   strict=True)):
        h.update(f"{path.relative_to(root)}|{label}|".encode())
        h.update(content)
        seen.setdefault(content, []).append(i)
    _report_copies(root, files, labels, [same for same in seen.values() if len(same) > 1],
                   log)
    return h.hexdigest()


def _contents(root: Path, files: list[Path], memo: Path | None) -> list[bytes]:
    """Each file's sha256. Reading every byte of a folder of phone photos took 4 s a
    command for 5.6 GB (each worker, report, evaluate, export), so a digest is kept in `memo`
    with the file's stat: size, modification and change times, inode and device. Any write
    to a file changes its change time (ctime), which no tool can set back, so a file whose
    stat is the same has the same bytes; a file copied or moved elsewhere is read again.
    The stat is taken before the read, and a file changed in the last 2 s (a coarse clock:
    FAT keeps times to 2 s) is not kept: a file written since is read again next time.
    Entries for files under `root` that are no longer among `files` (deleted, renamed) are
    dropped, so the memo holds what the home's folders hold, not every file they ever held."""
    known: dict[str, list] = {}
    if memo is not None:
        try:
            known = json.loads(memo.read_text())
        except (OSError, ValueError):
            known = {}  # none yet, or damaged: read every file
        if not isinstance(known, dict):
            known = {}
    digests, fresh = [], {}
    settled = time.time_ns() - 2_000_000_000
    for path in files:
        signals.check()  # every file may be read: a large folder takes a while
        key = str(path.absolute())
        try:
            st = path.stat()
            stat = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]
            digest = _known(known.get(key), stat) or hashlib.sha256(path.read_bytes()).digest()
        except OSError as e:  # vanished or became unreadable since the scan
            raise DataError(f"{as_text(path)}: cannot be read ({e.strerror or e})") from None
        if max(st.st_mtime_ns, st.st_ctime_ns) < settled:
            fresh[key] = [*stat, digest.hex()]
        digests.append(digest)
    under = os.path.join(root.absolute(), "")
    gone = {k for k in known if k.startswith(under) and k not in fresh}
    if memo is not None and (gone or any(known.get(k) != v for k, v in fresh.items())):
        try:  # (a home others may only read: the files are read again next time)
            atomic_write_text(memo, json.dumps({k: v for k, v in known.items()
                                                if k not in gone} | fresh))
        except WriteError:
            pass
    return digests


def _known(entry, stat: list[int]) -> bytes | None:
    """The digest `memo` keeps for a file with this stat, or None (none, another stat, or a
    damaged entry: the file is read)."""
    if isinstance(entry, list) and len(entry) == 6 and entry[:5] == stat:
        try:
            digest = bytes.fromhex(entry[5])
        except (TypeError, ValueError):
            return None
        return digest if len(digest) == 32 else None
    return None


def _report_copies(root: Path, files: list[Path], labels: list[int], copies: list[list[int]],
                   log) -> None:
    """One line for files that are the same photo (`copies`: positions in `files`, one list
    per photo): a copy on the other side of the split from its original is a test image the
    model trained on (the test score reads high), and a copy in another class is the same
    photo given two letters."""
    if not copies:
        return
    extra = sum(len(c) - 1 for c in copies)
    two_classes = sum(len({labels[i] for i in c}) > 1 for c in copies)
    shown = "; ".join(" = ".join(as_text(files[i].relative_to(root)) for i in c[:3])
                      + (" ..." if len(c) > 3 else "") for c in copies[:3]) + (
        " ..." if len(copies) > 3 else "")
    log(f"warning: {extra} file(s) are byte-for-byte copies of another ({shown})"
        + (f"; {two_classes} photo(s) filed under two letters" if two_classes else "")
        + ": a copy in training of a test image makes the test score read high; keep one "
        "of each")


def _to_rgb(img: Image.Image) -> Image.Image:
    """Grayscale, 16-bit, 32-bit, floating-point, RGBA and palette images become 8-bit RGB
    (transparency on white); a 32-bit or float image is read at the depth its brightest
    pixel needs (0-1, 8, 16 or 31 bits)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        pixels = np.nan_to_num(np.asarray(img, dtype=np.float64))
        top = pixels.max()
        if img.mode == "F" and top <= 1.0:  # 0-1, as scikit-image and numpy keep them
            peak = 1.0  # (Pillow's own conversion made every such image black)
        elif img.mode.startswith("I;16"):
            peak = 65535.0
        else:  # the least depth holding the brightest pixel: 8, 16 or 31 bits (I is signed)
            peak = next((p for p in (255.0, 65535.0, 2.0**31 - 1) if top <= p), top)
        gray = np.clip(np.rint(pixels * (255.0 / peak)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


def decode_image(path: str | Path, size: int) -> np.ndarray:
    """One file -> uint8 [S, S, 3]. An image with more pixels to decode than PIL's
    decompression-bomb size is an error here, not a warning; a JPEG counts at the reduced
    scale it is decoded at (a 108-megapixel phone photo decodes 1.7 million pixels at
    224: Pillow's own check, on the full size at open, refused it)."""
    limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            Image.MAX_IMAGE_PIXELS = None  # checked below, on what will be decoded
            with Image.open(path) as img:
                img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale, much faster
                if limit is not None and img.size[0] * img.size[1] > limit:
                    raise Image.DecompressionBombError
                img.load()
                # A phone keeps a portrait photo as landscape pixels plus an EXIF orientation
                # that every viewer applies: the model sees it upright, as the person did.
                if img.getexif().get(ORIENTATION, 1) != 1:  # else no copy made
                    img = ImageOps.exif_transpose(img)
                img = _to_rgb(img)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError):
            raise DataError(f"larger than {limit:,} pixels, refused as a possible "
                            "decompression bomb") from None
        finally:
            Image.MAX_IMAGE_PIXELS = limit
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR, reducing_gap=2.0)
    return np.array(img, dtype=np.uint8)  # a writable copy


def _decode_or_reason(args: tuple[str, int]) -> np.ndarray | str:
    # Runs in a worker process: return the failure as text so it reaches the user
    # with the file name, never as a traceback from inside the pool.
    path, size = args
    try:
        return decode_image(path, size)
    except DataError as e:
        return str(e)
    except Exception as e:
        return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def decode_folder(root: Path, files: list[Path], labels: list[int], classes: list[str],
                  size: int, on_bad: str, digest: str, skipped: list[str], log=print) -> ImageSet:
    jobs = [(str(p), size) for p in files]
    workers = min(len(jobs) // 64, usable_cpus())
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    decoded = []
    try:
        for result in (pool.map(_decode_or_reason, jobs, chunksize=32) if pool
                       else map(_decode_or_reason, jobs)):
            decoded.append(result)
            signals.check()  # Ctrl-C / SIGTERM: stop now, nothing is kept half-decoded
    finally:
        if pool is not None:  # on a stop, the files not yet started are not decoded
            pool.shutdown(wait=True, cancel_futures=True)
    arrays, kept_labels, names, skipped = [], [], [], list(skipped)
    for path, label, result in zip(files, labels, decoded, strict=True):
        if isinstance(result, str):
            _bad(path, f"cannot be decoded as an image ({result})", on_bad)
            skipped.append(f"{as_text(path.relative_to(root))}: {result}")
            continue
        arrays.append(result)
        kept_labels.append(label)
        names.append(str(path.relative_to(root)))
    for c, name in enumerate(classes):
        if c not in kept_labels:
            raise DataError(f"{root / name}: no readable image in this class folder")
    _report_skipped(skipped, log)
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return ImageSet(images=images, labels=torch.tensor(kept_labels, dtype=torch.int64),
                    classes=classes, names=names, digest=digest, skipped=skipped)


def _report_skipped(skipped: list[str], log) -> None:
    if skipped:
        log(f"skipped {len(skipped)} bad file(s) (data.on_bad_image: skip): "
            + "; ".join(skipped[:10]) + (" ..." if len(skipped) > 10 else ""))
