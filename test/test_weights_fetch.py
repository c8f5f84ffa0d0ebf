"""`cmdr weights fetch` / `check` against a loopback HTTP server: verified, resumable, atomic downloads of small
files, and identification of files with the real DINO ViT-B/8 and Point-MAE layouts (stride-0 tensors keep
them a few kB)."""
import hashlib
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import timm
import torch

from cmdr_ros import CmdrError
from cmdr_ros.cli import weights as weights_cli
from cmdr_ros.cli.main import main
from cmdr_ros.model.pointmae import PointMAEEncoder
from cmdr_ros.model.weights import DINO_FILENAME, POINTMAE_FILENAME, POINTMAE_SHA256
from cmdr_ros.model.weights_fetch import SPECS, WeightsSpec, check_file, fetch

DATA = bytes(range(256)) * 1200  # 300 kB: several read blocks of the server's socket, one of ours
SHA = hashlib.sha256(DATA).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.files[path] = (bytes, mode)``; records ``(path, Range header)`` of every GET.

    mode ``range``: honours Range; ``norange``: always the whole file (200); ``cut``: the first GET sends half
    the bytes announced by Content-Length and closes the connection, later GETs are ``range``."""

    def do_GET(self):
        files, log = self.server.files, self.server.requests
        rng = self.headers.get("Range")
        first = all(p != self.path for p, _ in log)
        log.append((self.path, rng))
        if self.path not in files:
            self.send_error(404)
            return
        data, mode = files[self.path]
        start = int(rng[len("bytes="):].split("-")[0]) if rng and mode != "norange" else 0
        if start >= len(data) and rng and mode != "norange":
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if rng and mode != "norange" else 200)
        if rng and mode != "norange":
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        self.wfile.write(body[:len(body) // 2] if mode == "cut" and first else body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    """A loopback server; ``url(name)`` serves ``server.files['/' + name]``."""
    monkeypatch.setenv("no_proxy", "*")  # never through a proxy of the environment
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.requests = {}, []
    srv.url = lambda name: f"http://127.0.0.1:{srv.server_address[1]}/{name}"
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _spec(server, mode="range", data=DATA, sha=SHA, identify=lambda path: None):
    server.files["/w.pth"] = (data, mode)
    return WeightsSpec("Fake", "w.pth", server.url("w.pth"), sha, identify)


def test_clean_download(server, tmp_path):
    info, downloaded = fetch(_spec(server), tmp_path / "models")
    assert downloaded and info.path == tmp_path / "models" / "w.pth"
    assert info.path.read_bytes() == DATA and (info.size, info.sha256) == (len(DATA), SHA)
    assert sorted(p.name for p in info.path.parent.iterdir()) == ["w.pth"]
    assert server.requests == [("/w.pth", None)]


def test_existing_file_is_verified_not_downloaded(server, tmp_path):
    (tmp_path / "w.pth").write_bytes(DATA)
    info, downloaded = fetch(_spec(server), tmp_path)
    assert not downloaded and info.sha256 == SHA and server.requests == []
    (tmp_path / "w.pth").write_bytes(DATA[:-1])  # someone else's file: refused, never deleted
    with pytest.raises(CmdrError, match=f"w.pth: SHA-256 is .*, expected {SHA}.*move it away"):
        fetch(_spec(server), tmp_path)
    assert (tmp_path / "w.pth").read_bytes() == DATA[:-1] and server.requests == []


def test_wrong_checksum_is_refused_and_deleted(server, tmp_path):
    with pytest.raises(CmdrError) as e:
        fetch(_spec(server, data=DATA[::-1]), tmp_path)
    got = hashlib.sha256(DATA[::-1]).hexdigest()
    assert f"SHA-256 is {got}, expected {SHA}" in str(e.value) and "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_truncated_download_keeps_part_then_resumes(server, tmp_path):
    spec = _spec(server, mode="cut")
    with pytest.raises(CmdrError, match=f"stopped at {len(DATA) // 2} of {len(DATA)} bytes; rerun to resume"):
        fetch(spec, tmp_path)
    part = tmp_path / "w.pth.part"
    assert part.read_bytes() == DATA[:len(DATA) // 2] and not (tmp_path / "w.pth").exists()
    info, downloaded = fetch(spec, tmp_path)
    assert downloaded and info.path.read_bytes() == DATA and not part.exists()
    assert server.requests[-1] == ("/w.pth", f"bytes={len(DATA) // 2}-")


def test_server_ignoring_range_restarts(server, tmp_path):
    (tmp_path / "w.pth.part").write_bytes(b"garbage from another file")
    info, _ = fetch(_spec(server, mode="norange"), tmp_path)
    assert info.path.read_bytes() == DATA and not (tmp_path / "w.pth.part").exists()
    assert server.requests == [("/w.pth", f"bytes={len(b'garbage from another file')}-")]


def test_complete_part_is_verified_and_stored(server, tmp_path):
    (tmp_path / "w.pth.part").write_bytes(DATA)  # interrupted between the last byte and the rename
    info, downloaded = fetch(_spec(server), tmp_path)
    assert downloaded and info.path.read_bytes() == DATA and server.requests == [("/w.pth", f"bytes={len(DATA)}-")]


def test_without_checksum_the_file_must_identify(server, tmp_path):
    def identify(path):
        if path.read_bytes()[:1] != b"\x00":
            raise CmdrError(f"{path} is not a fake checkpoint")

    with pytest.raises(CmdrError, match="is not a fake checkpoint; deleted the download"):
        fetch(_spec(server, data=DATA[1:], sha=None, identify=identify), tmp_path)
    assert list(tmp_path.iterdir()) == []
    assert fetch(_spec(server, sha=None, identify=identify), tmp_path)[0].sha256 == SHA


def test_http_error(server, tmp_path):
    spec = WeightsSpec("Fake", "w.pth", server.url("missing.pth"), SHA, lambda path: None)
    with pytest.raises(CmdrError, match="cannot download .*missing.pth: HTTP 404"):
        fetch(spec, tmp_path)


# --- the real layouts, through the CLI --------------------------------------------------------------------

def _layout_file(path, layout, wrap=lambda sd: sd):
    """A checkpoint with ``layout``'s keys and shapes whose tensors are stride-0 views of one zero."""
    torch.save(wrap({k: torch.zeros(()).expand(v.shape) for k, v in layout.items()}), path)
    return path


@pytest.fixture(scope="module")
def layouts():
    with torch.device("meta"):
        return {"dino": timm.create_model("vit_base_patch8_224", pretrained=False, num_classes=0).state_dict(),
                "dino_b16": timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0).state_dict(),
                "pointmae": PointMAEEncoder().state_dict()}


def test_cli_backbone_names_are_the_specs():
    assert weights_cli.BACKBONES == tuple(SPECS)
    assert SPECS["dino"].url == "https://dl.fbaipublicfiles.com/dino/dino_vitbase8_pretrain/dino_vitbase8_pretrain.pth"
    assert SPECS["pointmae"].url == "https://github.com/Pang-Yatian/Point-MAE/releases/download/main/pretrain.pth"
    assert SPECS["pointmae"].sha256 == POINTMAE_SHA256 and SPECS["dino"].sha256 is None


def test_cli_fetch_dino_from_env_mirror(server, tmp_path, layouts, monkeypatch, capsys):
    served = _layout_file(tmp_path / "served.pth", layouts["dino"]).read_bytes()
    server.files["/mirror/dino.pth"] = (served, "range")
    monkeypatch.setenv("CMDR_WEIGHTS_URL_DINO", server.url("mirror/dino.pth"))
    out_dir = tmp_path / "models"
    assert main(["weights", "fetch", "--dir", str(out_dir), "--only", "dino"]) == 0
    sha = hashlib.sha256(served).hexdigest()
    assert capsys.readouterr().out == f"stored: {out_dir / DINO_FILENAME} ({len(served)} bytes, sha256 {sha})\n"
    assert (out_dir / DINO_FILENAME).read_bytes() == served

    # a ViT-B/16 is refused (no checksum is published: the layout is the check) and not kept
    server.files["/b16.pth"] = (_layout_file(tmp_path / "b16.pth", layouts["dino_b16"]).read_bytes(), "range")
    assert main(["weights", "fetch", "--dir", str(tmp_path / "other"), "--only", "dino",
                 "--url-dino", server.url("b16.pth")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cmdr: error: ") and err.count("\n") == 1
    assert "is not a DINO ViT-B/8 checkpoint" in err and "deleted the download" in err
    assert list((tmp_path / "other").iterdir()) == []


def test_cli_fetch_wrong_pointmae_checksum(server, tmp_path, capsys):
    server.files["/pretrain.pth"] = (DATA, "range")
    assert main(["weights", "fetch", "--dir", str(tmp_path), "--only", "pointmae",
                 "--url-pointmae", server.url("pretrain.pth")]) == 2
    err = capsys.readouterr().err
    assert err == (f"cmdr: error: {server.url('pretrain.pth')}: SHA-256 is {SHA}, expected {POINTMAE_SHA256} "
                   f"(Point-MAE {POINTMAE_FILENAME}); deleted the download\n")
    assert list(tmp_path.iterdir()) == []


def test_cli_check(tmp_path, layouts, capsys):
    dino = _layout_file(tmp_path / "dino.pth", layouts["dino"])
    assert main(["weights", "check", str(dino)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{dino}: DINO ViT-B/8, ") and out[0].endswith(": OK")
    assert out[1].strip() == "loads as DINO ViT-B/8; no official SHA-256 is published"

    pm = _layout_file(tmp_path / "pm.pth", layouts["pointmae"],
                      lambda sd: {"base_model": {"MAE_encoder." + k: v for k, v in sd.items()}, "epoch": 300})
    junk = tmp_path / "junk.pth"
    junk.write_bytes(DATA)
    assert main(["weights", "check", str(dino), str(pm), str(junk)]) == 2
    out = capsys.readouterr().out
    assert f"{pm}: Point-MAE, {pm.stat().st_size} bytes, sha256 {hashlib.sha256(pm.read_bytes()).hexdigest()}: " \
           f"NOT OK\n  Point-MAE layout, but not the official file (SHA-256 {POINTMAE_SHA256})\n" in out
    assert f"{junk}: unknown, {len(DATA)} bytes, sha256 {SHA}: NOT OK\n" in out
    assert out.count("is not a readable PyTorch checkpoint") == 2  # why: once per backbone

    b16 = _layout_file(tmp_path / "b16.pth", layouts["dino_b16"])
    reasons = check_file(b16).notes
    assert "patch_embed.proj.weight has shape (768, 3, 16, 16), expected (768, 3, 8, 8)" in reasons[0]
    assert "does not fit the Point-MAE encoder" in reasons[1]

    # the official checksum: the Point-MAE spec with this file's SHA-256 standing in for the release's
    official = WeightsSpec("Point-MAE", POINTMAE_FILENAME, "", hashlib.sha256(pm.read_bytes()).hexdigest(),
                           SPECS["pointmae"].identify)
    result = check_file(pm, [SPECS["dino"], official])
    assert result.ok and result.spec is official and result.notes == ("the official SHA-256",)

    assert main(["weights", "check", str(dino), str(tmp_path / "nope.pth")]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"cmdr: error: {tmp_path / 'nope.pth'}: no such file\n" and captured.out == ""


def test_parser_does_not_import_torch():
    code = ("import sys; from cmdr_ros.cli.main import build_parser; build_parser(); "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
