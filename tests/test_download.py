"""Download code against a local HTTP server on 127.0.0.1 (the real sites are unreachable here)."""

import csv
import hashlib
import io
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from bloodviz.data import get_dataset
from bloodviz.download import (
    DownloadError,
    download_bloodmnist,
    download_file,
    download_malaria,
    download_pbc,
    prepare_pbc_from_archive,
    unpack_malaria_archive,
)


class _Files(BaseHTTPRequestHandler):
    files: dict = {}
    requests: list = []

    def do_GET(self):  # noqa: N802
        path = self.path.split("?")[0]
        self.requests.append((path, self.headers.get("Range")))
        body = self.files.get(path)
        if body is None:
            self.send_response(404)
            self.end_headers()
            return
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    _Files.files = {}
    _Files.requests = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", _Files
    httpd.shutdown()


def _bloodmnist_bytes(data_root) -> bytes:
    ds = get_dataset("pbc", 28, data_root)
    arrays = {}
    for split in ("train", "val", "test"):
        part = ds.load_split(split, limit=2, progress=False)
        arrays[f"{split}_images"] = part.images
        arrays[f"{split}_labels"] = part.labels.reshape(-1, 1).astype(np.uint8)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def test_bloodmnist_download_resumes_and_checks_md5(tmp_path, server, data_root):
    base, handler = server
    body = _bloodmnist_bytes(data_root)
    handler.files["/files/bloodmnist.npz"] = body
    md5 = hashlib.md5(body).hexdigest()
    # an earlier, interrupted download left the first part of the file
    part = tmp_path / "bloodmnist" / "bloodmnist.npz.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(body[: len(body) // 3])
    (path,) = download_bloodmnist(
        tmp_path, [28], base_url=f"{base}/files", md5s={28: md5}, progress=False
    )
    assert path.read_bytes() == body and not part.exists()
    assert handler.requests[-1] == ("/files/bloodmnist.npz", f"bytes={len(body) // 3}-")
    # the downloaded file is what the loader reads
    ds = get_dataset("bloodmnist", 28, tmp_path)
    assert len(ds.load_split("test", progress=False)) == 16
    # already there and valid: no new request
    count = len(handler.requests)
    download_bloodmnist(tmp_path, [28], base_url=f"{base}/files", md5s={28: md5}, progress=False)
    assert len(handler.requests) == count


def test_checksum_mismatch_and_http_errors(tmp_path, server):
    base, handler = server
    handler.files["/x.bin"] = b"0123456789" * 100
    with pytest.raises(DownloadError, match="does not match"):
        download_file(f"{base}/x.bin", tmp_path / "x.bin", md5="0" * 32, progress=False)
    assert not (tmp_path / "x.bin").exists() and not (tmp_path / "x.bin.part").exists()
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(f"{base}/missing.bin", tmp_path / "m.bin", progress=False)
    with pytest.raises(DownloadError, match="cannot reach"):
        download_file("http://127.0.0.1:9/none", tmp_path / "n.bin", progress=False, timeout=2)


def _pbc_zip(data_root) -> bytes:
    """A miniature PBC archive of real 360x363 originals in Mendeley's layout."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in sorted((data_root / "pbc-originals").glob("*/*.jpg"))[::4]:
            zf.write(path, f"PBC_dataset_normal_DIB/{path.parent.name}/{path.name}")
        zf.writestr(
            "PBC_dataset_normal_DIB/basophil/BA_not_in_list.jpg",
            (data_root / "pbc-originals" / "basophil").iterdir().__next__().read_bytes(),
        )
    return buffer.getvalue()


def test_pbc_download_lays_out_medmnist_crops_and_our_split(tmp_path, server, data_root):
    base, handler = server
    handler.files["/pbc.zip"] = _pbc_zip(data_root)
    result = download_pbc(tmp_path, url=f"{base}/pbc.zip", progress=False)
    assert result["written"] == 20 and result["not_in_split_list"] == 1
    ds = get_dataset("pbc", 64, tmp_path)
    assert ds.has_manifest and len(ds.sample_ids("train")) == 20
    ours = ds.load_split("train", progress=False)
    shared = get_dataset("pbc", 64, data_root)
    position = {sid: i for i, sid in enumerate(shared.sample_ids("train"))}
    reference = shared.load_split("train", progress=False).images[[position[i] for i in ours.ids]]
    assert np.abs(reference.astype(float) - ours.images.astype(float)).mean() < 6


def test_damaged_pbc_archive_is_refused(tmp_path, data_root):
    body = bytearray(_pbc_zip(data_root))
    body[200:260] = b"\0" * 60  # corrupt the first member's data
    archive = tmp_path / "pbc.zip"
    archive.write_bytes(bytes(body))
    with pytest.raises(DownloadError, match="CRC"):
        prepare_pbc_from_archive(archive, tmp_path / "pbc", progress=False)
    archive.write_bytes(b"not a zip")
    with pytest.raises(DownloadError, match="not a zip"):
        prepare_pbc_from_archive(archive, tmp_path / "pbc", progress=False)


def _malaria_zip(data_root, patients: int = 12, per_patient: int = 3) -> tuple[bytes, dict]:
    """A miniature NIH ``cell_images.zip``: real cells of a few patients, enlarged to NIH-like
    original sizes (non-square PNGs), and the Thumbs.db files NIH's archive carries."""
    from PIL import Image

    rows = list(csv.DictReader(open(data_root / "malaria" / "manifest.csv")))
    chosen_patients = sorted({r["patient"] for r in rows})[:patients]
    buffer, names = io.BytesIO(), {}
    with zipfile.ZipFile(buffer, "w") as zf:
        for patient in chosen_patients:
            for row in [r for r in rows if r["patient"] == patient][:per_patient]:
                folder = row["label"].capitalize()
                with Image.open(data_root / "malaria" / row["path"]) as cell:
                    big = cell.convert("RGB").resize((142, 130), Image.BICUBIC)
                png = io.BytesIO()
                big.save(png, format="PNG")
                name = Path(row["path"]).with_suffix(".png").name
                zf.writestr(f"cell_images/{folder}/{name}", png.getvalue())
                names[f"{row['label']}/{name}"] = row
        zf.writestr("cell_images/Parasitized/Thumbs.db", b"\0" * 64)
    return buffer.getvalue(), names


def test_malaria_download_resumes_checks_sha256_and_splits_by_patient(tmp_path, server, data_root):
    base, handler = server
    body, names = _malaria_zip(data_root)
    handler.files["/cell_images.zip"] = body
    sha = hashlib.sha256(body).hexdigest()
    part = tmp_path / ".downloads" / "cell_images.zip.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(body[: len(body) // 2])  # an interrupted earlier download
    counts = download_malaria(tmp_path, url=f"{base}/cell_images.zip", sha256=sha, progress=False)
    assert handler.requests[-1] == ("/cell_images.zip", f"bytes={len(body) // 2}-")
    assert sum(counts.values()) == len(names) and not part.exists()
    assert not list((tmp_path / "malaria").rglob("Thumbs.db"))

    ds = get_dataset("malaria", 64, tmp_path)
    assert not ds.has_manifest
    patients = {s: set(ds.patients(s)) for s in ds.splits}
    assert all(patients.values())  # 12 patients: 8 / 1 / 3 (rounded 70/10/20)
    assert not (patients["train"] & patients["test"] or patients["train"] & patients["val"])
    assert not patients["val"] & patients["test"]
    ids = [i for s in ds.splits for i in ds.sample_ids(s)]
    assert sorted(ids) == sorted(names)
    # the same seed gives the same split; NIH's 142x130 cells are stretched back, not cut
    assert ds.sample_ids("test") == get_dataset("malaria", 64, tmp_path).sample_ids("test")
    test = ds.load_split("test", progress=False)
    assert test.images.shape == (len(test), 64, 64, 3)
    from PIL import Image

    for sid, image in zip(test.ids[:3], test.images):
        original = np.asarray(Image.open(data_root / "malaria" / names[sid]["path"]))
        assert np.abs(original.astype(float) - image.astype(float)).mean() < 6


def test_malaria_archive_with_a_wrong_checksum_or_no_cells_is_refused(tmp_path, server):
    base, handler = server
    handler.files["/cell_images.zip"] = b"not the archive"
    with pytest.raises(DownloadError, match="SHA256 .* does not match"):
        download_malaria(tmp_path, url=f"{base}/cell_images.zip", progress=False)
    assert not (tmp_path / ".downloads" / "cell_images.zip").exists()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("cell_images/Parasitized/a.png", b"x")
    archive = tmp_path / "other.zip"
    archive.write_bytes(buffer.getvalue())
    with pytest.raises(DownloadError, match="no Uninfected images"):
        unpack_malaria_archive(archive, tmp_path / "malaria", progress=False)
