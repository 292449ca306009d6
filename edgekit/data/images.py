"""Image folders: walked safely (regular files only), decoded through the model's preprocessing,
cached by content."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import stat
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgekit.core import limits
from edgekit.core.files import file_kind, open_regular, shown_path
from edgekit.core.errors import BadInput, one_line
from edgekit.data.preprocessing import Preprocessing
from edgekit.data.tensors import read_npz_member

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
DEFAULT_CALIBRATION_DIR = Path(__file__).resolve().parents[2] / "calibration"
CACHE_DIR_ENV = "EDGEKIT_CACHE_DIR"


@dataclass
class ImageSet:
    """Preprocessed images from a folder, with what was passed over and why."""

    tensors: np.ndarray  # (N, 3, crop, crop) float32
    files: list[Path]
    corrupt: list[tuple[Path, str]] = field(default_factory=list)
    not_images: list[Path] = field(default_factory=list)
    source: Path | None = None
    sha256: str = ""
    from_cache: bool = False
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # not regular files: (path, what it is)
    notes: list[str] = field(default_factory=list)  # e.g. a damaged cache entry that was rebuilt

    def __len__(self) -> int:
        return len(self.files)


@dataclass
class FolderScan:
    """What a folder holds: image files, other files, and entries that are not regular files."""

    folder: Path
    images: list[Path]
    others: list[Path]
    skipped: list[tuple[Path, str]]  # FIFOs, sockets, devices, broken or looping symlinks, unreadable folders

    def skipped_note(self) -> str | None:
        return skipped_note(self.folder, self.skipped)


def skipped_note(folder: Path, skipped: list[tuple[Path, str]]) -> str | None:
    """One line naming the entries of a folder that were skipped (up to three), or None when there are none."""
    if not skipped:
        return None
    one = len(skipped) == 1
    shown = ", ".join(f"{shown_path(p.name)} ({why})" for p, why in skipped[:3])
    more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
    return (
        f"skipped {len(skipped)} entr{'y' if one else 'ies'} in {shown_path(folder)} that {'is' if one else 'are'} "
        f"not (a link to) a regular file: {shown}{more}"
    )


def _is_ignored(name: str) -> bool:
    """Hidden files and a folder's own documentation are not data."""
    return name.startswith(".") or name.upper().startswith(("README", "LICENSE"))


def scan_image_folder(folder: Path) -> FolderScan:
    """The files under `folder`, recursively, sorted for determinism; only regular files are listed.

    Nothing is opened: each entry is stat()ed. FIFOs, sockets, devices, dangling or looping
    symlinks and sub-folders that cannot be listed are skipped and counted; symlinks to regular
    files are followed, symlinks to folders are not (no loops). Hidden files and folders and a
    folder's README/LICENSE files are not data and are passed over silently. File names that are
    not valid UTF-8 are kept as the OS gives them (os.fsdecode; artifact.shown_path prints them).
    More than limits.MAX_IMAGES_IN_FOLDER entries is BadInput, raised while listing, before the
    listing grows any further.
    """
    folder = Path(folder)
    shown = shown_path(folder)
    try:
        st = os.stat(folder)
    except OSError as exc:
        if os.path.lexists(folder):
            raise BadInput(f"image folder {shown} is a broken symlink ({exc.strerror})", hint="check the path") from None
        raise BadInput(f"image folder {shown} does not exist", hint="check the path") from None
    if not stat.S_ISDIR(st.st_mode):
        raise BadInput(f"{shown} is not a folder of images", hint="name a folder, or a .npz/.npy of tensors")
    cap = limits.MAX_IMAGES_IN_FOLDER
    images: list[Path] = []
    others: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    pending = [str(folder)]
    while pending:
        current = pending.pop()
        try:
            with os.scandir(current) as listing:
                for entry in listing:
                    _classify(entry, images, others, skipped, pending)
                    if len(images) + len(others) + len(skipped) > cap:
                        raise BadInput(
                            f"{shown} holds more than {cap:,} files, over edgekit's limit for one folder",
                            hint="point to a smaller folder: copy or link a sample of the images into one",
                        )
        except OSError as exc:
            if current == str(folder):
                raise BadInput(f"cannot list image folder {shown}: {exc.strerror or exc}", hint="check its permissions") from None
            skipped.append((Path(current), f"a folder that cannot be listed: {exc.strerror or exc}"))
    return FolderScan(folder, sorted(images), sorted(others), sorted(skipped))


def _classify(entry: os.DirEntry, images: list, others: list, skipped: list, pending: list) -> None:
    """File one directory entry under images, others, skipped (not a regular file) or pending (a sub-folder)."""
    name = entry.name
    path = Path(entry.path)
    try:
        if entry.is_dir(follow_symlinks=False):
            if not name.startswith("."):  # hidden folders (.git, .cache) hold no data
                pending.append(entry.path)
            return
        if _is_ignored(name):
            return
        mode = entry.stat(follow_symlinks=True).st_mode
    except OSError as exc:
        if entry.is_symlink():
            skipped.append((path, "a symlink loop" if exc.errno == errno.ELOOP else "a broken symlink"))
        else:
            skipped.append((path, f"cannot be read: {exc.strerror or exc}"))
        return
    if stat.S_ISREG(mode):
        (images if path.suffix.lower() in IMAGE_SUFFIXES else others).append(path)
    elif stat.S_ISDIR(mode):
        skipped.append((path, "a symlink to a folder (not followed)"))
    else:
        skipped.append((path, file_kind(mode)))


def scan_folder(folder: Path) -> tuple[list[Path], list[Path]]:
    """(image files, other files) under `folder`, recursively, sorted for determinism (scan_image_folder)."""
    scan = scan_image_folder(folder)
    return scan.images, scan.others


@contextlib.contextmanager
def open_image(path: Path, draft: tuple[int, int] | None = None):
    """A PIL image of the file at `path`, decoded: only a regular file is opened (a FIFO that appeared since the
    folder was scanned never blocks), and an image of more pixels than PIL's bound (a decompression bomb) is
    refused before it is decoded. Every reason it cannot be used is ValueError with that reason in words."""
    from PIL import Image, UnidentifiedImageError

    try:
        handle = open_regular(path)
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    except OSError as exc:
        raise ValueError(f"cannot open: {exc.strerror or exc}") from None
    with handle, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(handle)
            if draft is not None:  # JPEG can decode at a reduced scale: much faster for huge photos
                image.draft("RGB", draft)
            image.load()
        except UnidentifiedImageError:
            raise ValueError("cannot decode: not an image file PIL can identify") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ValueError(f"too large to decode safely ({one_line(exc, 200)})") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ValueError(f"cannot decode: {one_line(exc)}") from None
        with image:
            yield image


def decode_image(path: Path, preprocessing: Preprocessing) -> np.ndarray:
    """Decode and preprocess one image (open_image); raises ValueError with the reason when it cannot."""
    with open_image(path, preprocessing.draft_size) as image:
        try:
            return preprocessing.apply(image)
        except (OSError, SyntaxError, ValueError) as exc:
            raise ValueError(f"cannot decode: {one_line(exc)}") from None


def decode_chunks(paths: list, preprocessing: Preprocessing, chunk: int = 64):
    """`paths` decoded and preprocessed `chunk` at a time, for scoring a labelled set. Yields (the end of the chunk,
    the positions in `paths` of the images that decoded, their float32 batch or None when none did, and (path,
    reason) for each that did not)."""
    for start in range(0, len(paths), chunk):
        arrays, decoded, failed = [], [], []
        for i in range(start, min(start + chunk, len(paths))):
            try:
                arrays.append(decode_image(Path(paths[i]), preprocessing))
                decoded.append(i)
            except ValueError as exc:
                failed.append((Path(paths[i]), str(exc)))
        yield start + chunk, decoded, np.stack(arrays).astype(np.float32) if arrays else None, failed


def pick_samples(files: list[Path], samples: int | None, seed: int = 0) -> list[Path]:
    """`samples` files chosen deterministically (seeded), in sorted order; all when there are fewer."""
    if samples is None or samples >= len(files):
        return list(files)
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(files), size=samples, replace=False))
    return [files[i] for i in chosen]


def _cache_dir() -> Path:
    from edgekit.core.files import cache_dir

    return cache_dir()


def _content_key(files: list[Path], preprocessing: Preprocessing) -> str:
    digest = hashlib.sha256(json.dumps(preprocessing.to_dict(), sort_keys=True).encode())
    for path in files:
        digest.update(os.fsencode(Path(path).resolve()))  # the paths are part of the cached result
        try:
            with open_regular(path) as f:
                content = hashlib.sha256()
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    content.update(chunk)
            digest.update(content.digest())
        except (OSError, ValueError):
            digest.update(b"\0unreadable")  # decoding will say why; the key still changes when it is fixed
    return digest.hexdigest()


def load_image_folder(
    folder: Path,
    preprocessing: Preprocessing,
    samples: int | None = None,
    seed: int = 0,
    use_cache: bool = True,
    on_progress: Callable[[int, int], None] | None = None,
    *,
    scan: FolderScan | None = None,
) -> ImageSet:
    """Decode the images of a folder through `preprocessing`; corrupt files are skipped and named.

    Zero usable images is BadInput naming the folder and what was found there. The decoded
    tensors must fit limits.MAX_TENSOR_BYTES (checked before decoding). A cache entry is
    validated on read; a damaged one is deleted and rebuilt, and `notes` says so.
    """
    scan = scan if scan is not None else scan_image_folder(folder)  # (a caller that scanned already passes it)
    images, others = scan.images, scan.others
    chosen = pick_samples(images, samples, seed)
    shown = shown_path(folder)
    if chosen:
        limits.check_tensor_budget(
            (len(chosen), *preprocessing.chw), 4, f"the images of {shown}:",
            hint="point to a smaller folder, or ask for fewer samples",
        )
    key = _content_key(chosen, preprocessing)
    cache_file = _cache_dir() / f"images-{key}.npz"
    notes: list[str] = []
    if use_cache:
        cached, problem = _read_cache(cache_file, chosen, preprocessing)
        if cached is not None:
            tensors, kept, corrupt = cached
            return ImageSet(tensors, kept, corrupt, others, Path(folder), key, from_cache=True, skipped=scan.skipped)
        if problem is not None:
            with contextlib.suppress(OSError):
                os.unlink(cache_file)
            notes.append(
                f"the cached images for {shown} ({shown_path(cache_file)}) were damaged ({problem}); "
                "dropped and rebuilt from the images"
            )
    arrays, kept, corrupt = [], [], []
    for i, path in enumerate(chosen):
        try:
            arrays.append(decode_image(path, preprocessing))
            kept.append(path)
        except ValueError as exc:
            corrupt.append((path, str(exc)))
        if on_progress:
            on_progress(i + 1, len(chosen))
    if not arrays:
        found = f"{len(images)} image file(s), {len(corrupt)} of them unreadable, {len(others)} other file(s)"
        if scan.skipped:
            found += f", {len(scan.skipped)} entr{'y' if len(scan.skipped) == 1 else 'ies'} that are not regular files"
        raise BadInput(
            f"no usable images in {shown}: found {found}",
            hint=f"point to a folder of {'/'.join(sorted(s[1:] for s in IMAGE_SUFFIXES))} images",
        )
    tensors = np.stack(arrays).astype(np.float32)
    result = ImageSet(tensors, kept, corrupt, others, Path(folder), key, skipped=scan.skipped, notes=notes)
    if use_cache:
        _write_cache(cache_file, result)
    return result


def _read_cache(
    cache_file: Path, chosen: list[Path], preprocessing: Preprocessing
) -> tuple[tuple[np.ndarray, list[Path], list[tuple[Path, str]]] | None, str | None]:
    """((tensors, kept files, corrupt files), None) from a valid cache entry; (None, None) when there is
    none; (None, why) when the entry is damaged or does not answer this request."""
    try:
        handle = open_regular(cache_file)
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as exc:
        return None, f"cannot be read: {exc}"
    try:
        with handle, zipfile.ZipFile(handle) as archive:
            members = set(archive.namelist())
            missing = sorted({"tensors.npy", "files.npy", "corrupt.npy"} - members)
            if missing:
                return None, f"it lacks {', '.join(missing)}"
            tensors = read_npz_member(archive, "tensors.npy", "cache entry")
            files = read_npz_member(archive, "files.npy", "cache entry")
            corrupt = read_npz_member(archive, "corrupt.npy", "cache entry")
    except BadInput as exc:
        return None, exc.message
    except Exception as exc:  # a truncated or garbled zip: BadZipFile, zlib.error, EOFError, ...
        return None, f"{type(exc).__name__}: {one_line(exc, 200)}"
    chw = tuple(preprocessing.chw)
    if tensors.dtype != np.float32 or tensors.ndim != 4 or tuple(tensors.shape[1:]) != chw:
        return None, f"its tensors are {tensors.dtype} {tuple(tensors.shape)}, not float32 (N, {', '.join(map(str, chw))})"
    if files.dtype.kind != "U" or files.ndim != 1 or len(files) != len(tensors) or len(files) == 0:
        return None, f"it lists {files.shape} file names for {len(tensors)} tensors"
    if corrupt.size and (corrupt.dtype.kind != "U" or corrupt.ndim != 2 or corrupt.shape[1] != 2):
        return None, f"its list of unreadable files has shape {corrupt.shape}"
    kept = [Path(p) for p in files.tolist()]
    bad = [(Path(p), str(r)) for p, r in corrupt.tolist()] if corrupt.size else []
    wanted = {str(p) for p in chosen}
    if len(kept) + len(bad) != len(chosen) or any(str(p) not in wanted for p in kept + [b for b, _ in bad]):
        return None, "its files are not the ones asked for"
    if not np.isfinite(tensors).all():
        return None, "its tensors hold NaN or Inf"
    return (np.ascontiguousarray(tensors), kept, bad), None


def _write_cache(cache_file: Path, images: ImageSet) -> None:
    tmp = cache_file.with_suffix(f".{os.getpid()}.tmp.npz")
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            tmp,
            tensors=images.tensors,
            files=np.array([str(p) for p in images.files]),
            corrupt=np.array([(str(p), r) for p, r in images.corrupt]).reshape(-1, 2),
        )
        os.replace(tmp, cache_file)
    except (OSError, ValueError):
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # caching is an optimisation; a read-only home must not fail the command
