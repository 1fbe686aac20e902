"""Fetching datasets from their official sources: resumable, checksummed, with progress.

- BloodMNIST: MedMNIST's Zenodo record (URLs and MD5s as the ``medmnist`` package lists them).
- PBC: the Mendeley Data archive (Acevedo et al. 2020), turned into our layout: MedMNIST's recipe
  (centre 200x200 of the 360x363 original, bicubic resize to 128) and our shipped split.
- Malaria: NIH's ``cell_images.zip`` (Rajaraman et al. 2018), checked against the SHA-256 that
  TensorFlow Datasets pins for it, unpacked as ``malaria/cell_images/{Parasitized,Uninfected}``;
  the loader splits it by patient.
- Kaggle's blood-cells set needs the user's own account: we print the steps.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import zipfile
from pathlib import Path

import requests
from PIL import Image
from tqdm.auto import tqdm

from bloodviz.data import (
    PBC_CLASSES,
    PBC_FIELD_CROP_FRACTION,
    bloodmnist_filename,
    read_pbc_split_list,
)
from bloodviz.paths import REPO_ROOT
from bloodviz.preprocess import center_square

ZENODO_BLOODMNIST = "https://zenodo.org/records/10519652/files"
BLOODMNIST_MD5 = {
    28: "7053d0359d879ad8a5505303e11de1dc",
    64: "2b94928a2ae4916078ca51e05b6b800b",
    128: "adace1e0ed228fccda1f39692059dd4c",
    224: "b718ff6835fcbdb22ba9eacccd7b2601",
}
PBC_URL = (
    "https://data.mendeley.com/public-files/datasets/snkd93bnjr/files/"
    "2fc38728-2ae7-4a62-a857-032af82334c3/file_downloaded"
)
PBC_ARCHIVE = "PBC_dataset_normal_DIB.zip"
MALARIA_URL = "https://data.lhncbc.nlm.nih.gov/public/Malaria/cell_images.zip"
MALARIA_ARCHIVE = "cell_images.zip"
# the size and SHA-256 TensorFlow Datasets pins for NIH's archive (url_checksums/malaria.txt)
MALARIA_SHA256 = "0a949556b2414159b5100192609805376654c4266d8d187be9b1922fad43c668"
MALARIA_BYTES = 353_452_851
MALARIA_FOLDERS = ("Parasitized", "Uninfected")

KAGGLE_STEPS = """\
The Kaggle "Blood Cell Images" set needs your own Kaggle account; bloodviz cannot fetch it for you.
  1. Sign in at kaggle.com, open Account > API > "Create New Token"; save kaggle.json to
     ~/.kaggle/kaggle.json (chmod 600).
  2. pip install kaggle
  3. kaggle datasets download -d paultimothymooney/blood-cells -p {root}/blood-cells --unzip
  4. Check: {root}/blood-cells/dataset2-master/images/TRAIN/EOSINOPHIL/*.jpeg exists, then run
     python -m bloodviz datasets --data-root {root}
"""


class DownloadError(RuntimeError):
    pass


def file_digest(path: Path, algorithm: str = "md5", chunk: int = 1 << 20) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    return file_digest(path, "md5", chunk)


def download_file(
    url: str,
    dest: Path,
    md5: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
    chunk: int = 1 << 20,
    sha256: str | None = None,
) -> Path:
    """Download ``url`` to ``dest``, resuming a ``.part`` file left by an interrupted run.

    The bytes go to ``dest.part`` and are renamed to ``dest`` only after the checksum (MD5 or
    SHA-256, when known) matches, so ``dest`` is never a partial or corrupt file.
    """
    dest = Path(dest)
    algorithm, expected = ("sha256", sha256) if sha256 else ("md5", md5)
    if dest.exists() and (expected is None or file_digest(dest, algorithm) == expected):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        response = requests.get(url, headers=headers, stream=True, timeout=timeout)
    except requests.RequestException as exc:
        raise DownloadError(f"cannot reach {url}: {exc}") from exc
    with response:
        if response.status_code == 416:  # the part file already holds everything
            response.close()
        elif response.status_code == 206:
            pass
        elif response.status_code == 200:
            have = 0  # the server ignored the range request: start over
        else:
            raise DownloadError(f"{url} answered HTTP {response.status_code}")
        if response.status_code != 416:
            total = response.headers.get("Content-Length")
            total = int(total) + have if total is not None else None
            mode = "ab" if have else "wb"
            with (
                open(part, mode) as handle,
                tqdm(
                    total=total,
                    initial=have,
                    unit="B",
                    unit_scale=True,
                    desc=dest.name,
                    disable=not progress,
                ) as bar,
            ):
                for block in response.iter_content(chunk):
                    handle.write(block)
                    bar.update(len(block))
    if expected is not None:
        got = file_digest(part, algorithm)
        if got != expected:
            part.unlink()
            raise DownloadError(
                f"{dest.name}: {algorithm.upper()} {got} does not match the published "
                f"{expected}; the partial file was removed, run the command again"
            )
    os.replace(part, dest)
    return dest


def download_bloodmnist(
    root: Path,
    sizes: list[int] | None = None,
    base_url: str = ZENODO_BLOODMNIST,
    md5s: dict[int, str] | None = None,
    progress: bool = True,
) -> list[Path]:
    """Fetch the official ``bloodmnist*.npz`` files into ``root/bloodmnist``."""
    md5s = md5s or BLOODMNIST_MD5
    paths = []
    for size in sizes or [64]:
        if size not in BLOODMNIST_MD5:
            raise ValueError(f"BloodMNIST sizes are {sorted(BLOODMNIST_MD5)}, not {size}")
        name = bloodmnist_filename(size)
        url = f"{base_url.rstrip('/')}/{name}?download=1"
        paths.append(download_file(url, Path(root) / "bloodmnist" / name, md5s[size], progress))
    return paths


def prepare_pbc_from_archive(archive: Path, out_dir: Path, progress: bool = True) -> dict:
    """Lay a PBC zip out as our ``pbc`` folder: MedMNIST-style 128 px crops and manifest.csv.

    Images the shipped split list does not name are left out (counted in the result), so the
    split is exactly ours.
    """
    split_of = read_pbc_split_list()
    out_dir = Path(out_dir)
    written, skipped = [], 0
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        raise DownloadError(f"{archive} is not a zip archive ({exc})") from exc
    with zf:
        broken = zf.testzip()
        if broken is not None:
            raise DownloadError(f"{archive}: member {broken} fails its CRC check; download again")
        members = [m for m in zf.infolist() if not m.is_dir()]
        for member in tqdm(members, desc="prepare pbc", disable=not progress):
            parts = Path(member.filename).parts
            if len(parts) < 2 or parts[-2] not in PBC_CLASSES:
                continue
            cls, name = parts[-2], Path(parts[-1]).name  # basename only: no path traversal
            rel = f"{cls}/{Path(name).stem}.jpg"
            split = split_of.get(rel)
            if split is None:
                skipped += 1
                continue
            with Image.open(io.BytesIO(zf.read(member))) as image:
                crop = center_square(image.convert("RGB"), PBC_FIELD_CROP_FRACTION)
                crop = crop.resize((128, 128), Image.BICUBIC)
                target = out_dir / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                crop.save(target, quality=95)
            written.append((rel, cls, split))
    with open(out_dir / "manifest.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        writer.writerows(sorted(written))
    return {"written": len(written), "not_in_split_list": skipped, "listed": len(split_of)}


def download_pbc(root: Path, url: str = PBC_URL, md5: str | None = None, progress: bool = True):
    archive = download_file(url, Path(root) / ".downloads" / PBC_ARCHIVE, md5, progress)
    return prepare_pbc_from_archive(archive, Path(root) / "pbc", progress)


def unpack_malaria_archive(archive: Path, out_dir: Path, progress: bool = True) -> dict:
    """Unpack NIH's ``cell_images.zip`` as ``out_dir/cell_images/{Parasitized,Uninfected}``.

    Only the two class folders' images are written, under their base names (no path from the
    archive is trusted), each atomically; a member already unpacked with the right size is
    skipped, so an interrupted unpack resumes.
    """
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        raise DownloadError(f"{archive} is not a zip archive ({exc})") from exc
    counts = {name: 0 for name in MALARIA_FOLDERS}
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        for member in tqdm(members, desc="unpack malaria", disable=not progress):
            parts = Path(member.filename).parts
            name = Path(parts[-1]).name
            if len(parts) < 2 or parts[-2] not in MALARIA_FOLDERS:
                continue  # NIH's archive also holds Thumbs.db files
            if Path(name).suffix.lower() not in {".png", ".jpg", ".jpeg"}:
                continue
            target = Path(out_dir) / "cell_images" / parts[-2] / name
            counts[parts[-2]] += 1
            if target.exists() and target.stat().st_size == member.file_size:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                data = zf.read(member)
            except zipfile.BadZipFile as exc:
                raise DownloadError(f"{archive}: {member.filename} is damaged ({exc})") from exc
            tmp = target.with_name(target.name + ".part")
            tmp.write_bytes(data)
            os.replace(tmp, target)
    if not all(counts.values()):
        raise DownloadError(
            f"{archive} holds no {' / '.join(k for k, v in counts.items() if not v)} images: "
            "not NIH's cell_images.zip"
        )
    return counts


def download_malaria(
    root: Path, url: str = MALARIA_URL, sha256: str | None = MALARIA_SHA256, progress: bool = True
) -> dict:
    archive = download_file(
        url, Path(root) / ".downloads" / MALARIA_ARCHIVE, progress=progress, sha256=sha256
    )
    return unpack_malaria_archive(archive, Path(root) / "malaria", progress)


def download_command(
    name: str, data_root: str | None, sizes: list[int] | None, url: str | None
) -> int:
    root = Path(data_root or os.environ.get("BLOODVIZ_DATA") or REPO_ROOT / "data")
    if name == "blood-cells":
        print(KAGGLE_STEPS.format(root=root))
        return 0
    if name == "bloodmnist":
        for path in download_bloodmnist(root, sizes, base_url=url or ZENODO_BLOODMNIST):
            print(f"ok: {path} (MD5 verified)")
        return 0
    if name == "malaria":
        counts = download_malaria(root, url=url or MALARIA_URL)
        print(
            f"ok: {counts['Parasitized']} parasitized and {counts['Uninfected']} uninfected cells "
            f"in {root / 'malaria' / 'cell_images'} (SHA-256 verified); bloodviz splits them by "
            "patient: python -m bloodviz datasets"
        )
        return 0
    result = download_pbc(root, url=url or PBC_URL)
    print(
        f"ok: {result['written']} images in {root / 'pbc'} ({result['not_in_split_list']} not in "
        f"our split list left out). Mendeley publishes no MD5 we could pin: the archive was "
        f"checked by its zip CRCs."
    )
    return 0
