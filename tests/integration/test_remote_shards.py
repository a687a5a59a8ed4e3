"""Shards at a pyarrow filesystem URI (``--shards-uri``) against a real local S3 server.

moto's ``ThreadedMotoServer`` serves the S3 API on 127.0.0.1; pyarrow reaches it through the URI
query (``endpoint_override``, ``scheme=http``) and credentials from the AWS environment variables,
exactly as it would reach a real bucket. The library folder itself stays local. Checked: an S3
library holds the same clips and embeddings as a local one, every reader command works on it, a
rerun is a no-op, a kill between upload and manifest is repaired by the next run, stray objects
are ignored and reported, ``file://`` works, and a bad location is a one-line error before any
decoding starts.

``allow_delayed_open=true`` in the test URIs makes pyarrow send small objects as one PutObject:
moto 5.2 answers pyarrow 26's CompleteMultipartUpload with an error (a test-server limitation;
real S3 accepts both).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from media_tools import TEST_MODEL, lavfi_video
from reliability.invariants import assert_same_library, check_library

from vidsearch.cli import main
from vidsearch.library import CRASH_POINTS, SHARDS_OWNER, Library, LibraryError
from vidsearch.pipeline.runner import IngestOptions, IngestSummary, run_ingest
from vidsearch.schemas.config import IngestCfg

BUCKET = "vids"
CFG = IngestCfg(decode_workers=1, batch_size=4, shard_rows=3)
CLI_COMMON = ("--model", TEST_MODEL, "--executor", "local", "--decode-workers", "1", "--shard-rows", "3",
              "--batch-size", "4", "--no-index")


@dataclass
class S3:
    """A running moto S3 server and a boto3 client of it."""

    port: int
    client: Any

    def uri(self, prefix: str, bucket: str = BUCKET, port: int | None = None) -> str:
        return (f"s3://{bucket}/{prefix}?endpoint_override=127.0.0.1:{port or self.port}&scheme=http"
                "&region=us-east-1&allow_delayed_open=true")

    def keys(self, prefix: str) -> set[str]:
        """Base names of the objects under ``prefix/``."""
        r = self.client.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/")
        # pyarrow's delete_file() leaves a "prefix/" folder marker when it empties a folder: skip it.
        return {o["Key"].rsplit("/", 1)[-1] for o in r.get("Contents", []) if not o["Key"].endswith("/")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    boto3 = pytest.importorskip("boto3")
    server_mod = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access-log line per request otherwise
    port = _free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    with pytest.MonkeyPatch.context() as mp:
        # Subprocess CLIs inherit these; no instance metadata lookups on a machine off EC2.
        for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
            mp.setenv(k, v)
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        try:
            yield S3(port, client)
        finally:
            server.stop()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small videos: 2, 3 and 1 clips of 4 s."""
    d = tmp_path_factory.mktemp("corpus")
    for i, (size, secs) in enumerate([("64x48", 6), ("80x48", 9), ("48x48", 3)]):
        lavfi_video(d / f"v{i}.mp4", size=size, seconds=secs, rate=10)
    return d


def ingest(corpus: Path, lib: Path, shards_uri: str | None = None, executor: str = "local") -> IngestSummary:
    return run_ingest([corpus], lib, CFG, IngestOptions(model=TEST_MODEL, executor=executor, shards_uri=shards_uri,
                                                         build_index=False, progress=False))


@pytest.fixture(scope="module")
def local_lib(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    lib = tmp_path_factory.mktemp("local") / "lib"
    assert ingest(corpus, lib).exit_code == 0
    return lib


@pytest.fixture(scope="module")
def s3_lib(corpus: Path, s3: S3, tmp_path_factory: pytest.TempPathFactory) -> Path:
    lib = tmp_path_factory.mktemp("s3") / "lib"
    s = ingest(corpus, lib, s3.uri("main"))
    assert (s.exit_code, s.videos_done) == (0, 3)
    return lib


def test_s3_library_equals_a_local_one(s3_lib: Path, local_lib: Path, s3: S3) -> None:
    check_library(s3_lib)
    assert_same_library(s3_lib, local_lib)
    m = Library(s3_lib).read_manifest()
    assert (m.format, m.shards_uri) == (2, s3.uri("main"))
    assert m.shards and all("/" not in s.clips_file for s in m.shards)
    # The bucket holds exactly the listed shards and the owner record; the folder holds no shards.
    assert s3.keys("main") == m.shard_file_names | {SHARDS_OWNER}
    assert not (s3_lib / "shards").exists()
    owner = json.loads(s3.client.get_object(Bucket=BUCKET, Key=f"main/{SHARDS_OWNER}")["Body"].read())
    assert owner["library_id"] == m.library_id
    # A local library is unchanged: format 1 and no shards_uri key at all.
    raw = json.loads((local_lib / "manifest.json").read_text())
    assert raw["format"] == 1 and "shards_uri" not in raw
    assert raw["shards"][0]["clips_file"].startswith("shards/part-")


def test_status_index_search_sql_doctor_serve_work_on_s3_shards(s3_lib: Path, s3: S3,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--library", str(s3_lib), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["shards_at"] == s3.uri("main") and st["health"]["ok"] and st["clips"] == 6
    assert main(["index", "--library", str(s3_lib)]) == 0
    capsys.readouterr()
    meta = json.loads((s3_lib / "index" / "index.json").read_text())
    assert meta.get("ntotal", meta.get("n")) == 6
    assert main(["sql", "SELECT count(*) AS n, count(DISTINCT video_id) AS v FROM clips", "--library",
                 str(s3_lib), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0] == {"n": 6, "v": 3}
    lib = Library(s3_lib)
    ids = {i for s in lib.read_manifest().shards for i in lib.read_shard(s, "clips").column("clip_id").to_pylist()}
    assert main(["search", "--like", str(min(ids)), "--library", str(s3_lib), "--json", "-k", "3"]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert hits and {int(i) for h in hits for i in h["merged_clip_ids"]} <= ids
    assert main(["doctor", "--library", str(s3_lib)]) == 0
    from vidsearch.serve.service import LibraryService

    svc = LibraryService(Library(s3_lib), record_history=False)
    try:  # what `vidsearch serve` answers on /api/status
        st = svc.status()
        assert (st["ready"], st["clips"], st["index"]["ntotal"]) == (True, 6, 6)
    finally:
        svc.close()
    check_library(s3_lib)


def test_rerun_is_a_noop(s3_lib: Path, corpus: Path, s3: S3) -> None:
    before = Library(s3_lib).read_manifest().shards
    keys = s3.keys("main")
    s = ingest(corpus, s3_lib)  # no --shards-uri: the library's own location is used
    assert (s.videos_skipped, s.videos_done, s.clips) == (3, 0, 0)
    assert Library(s3_lib).read_manifest().shards == before
    assert s3.keys("main") == keys


def test_stray_objects_are_ignored_and_reported(s3_lib: Path, s3: S3, capsys: pytest.CaptureFixture[str]) -> None:
    strays = ("notes.txt", "part-000999.parquet")
    for name in strays:
        s3.client.put_object(Bucket=BUCKET, Key=f"main/{name}", Body=b"not a shard")
    try:
        problems = Library(s3_lib).verify()
        assert sorted(problems) == sorted(f"stray object s3://{BUCKET}/main/{n} (not in the manifest; ignored)"
                                          for n in strays)
        assert main(["doctor", "--library", str(s3_lib)]) == 1
        out = capsys.readouterr().out
        assert all(n in out for n in strays)
        # Readers never open them: the catalog and the shards still read fine.
        assert main(["sql", "SELECT count(*) AS n FROM clips", "--library", str(s3_lib), "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == [{"n": 6}]
    finally:
        for name in strays:
            s3.client.delete_object(Bucket=BUCKET, Key=f"main/{name}")


def test_kill_after_upload_before_manifest_then_rerun_recovers(corpus: Path, local_lib: Path, s3: S3,
                                                              tmp_path: Path) -> None:
    _kill_then_resume("after_rename_before_manifest", corpus, local_lib, s3, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("point", [p for p in CRASH_POINTS if p != "after_rename_before_manifest"])
def test_kill_at_every_other_crash_point_then_rerun_recovers(point: str, corpus: Path, local_lib: Path, s3: S3,
                                                             tmp_path: Path) -> None:
    _kill_then_resume(point, corpus, local_lib, s3, tmp_path)


def _kill_then_resume(point: str, corpus: Path, local_lib: Path, s3: S3, tmp_path: Path) -> None:
    lib, prefix = tmp_path / "lib", f"crash-{point}"
    # after_manifest_before_index is reached only by a run that builds the index.
    args = [a for a in CLI_COMMON if a != "--no-index" or point != "after_manifest_before_index"]
    cmd = [sys.executable, "-m", "vidsearch.cli", "-q", "ingest", str(corpus), "--library", str(lib),
           "--shards-uri", s3.uri(prefix), *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180,
                       env={**os.environ, "VIDSEARCH_CRASH_AT": point})
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-2000:])
    m = Library(lib).read_manifest()
    unlisted = {k for k in s3.keys(prefix) if k.startswith(("part-", "videos-"))} - m.shard_file_names
    if point == "after_rename_before_manifest":
        assert unlisted == {"part-000001.parquet", "videos-000001.parquet"}  # uploaded, never committed
    committed = {s.shard_id: s.clips_sha256 for s in m.shards}
    assert ingest(corpus, lib).exit_code == 0  # the location comes from the manifest
    m = Library(lib).read_manifest()
    assert all(any(s.shard_id == k and s.clips_sha256 == v for s in m.shards) for k, v in committed.items())
    assert s3.keys(prefix) == m.shard_file_names | {SHARDS_OWNER}  # the unlisted objects are gone
    assert not any(Library(lib).tmp_dir.iterdir())
    check_library(lib)
    assert_same_library(lib, local_lib)


def test_f10_corrupt_object_is_set_aside_and_its_videos_re_ingested(corpus: Path, local_lib: Path, s3: S3,
                                                                     tmp_path: Path) -> None:
    """docs/RELIABILITY.md F10 on an object store: the bad object moves to ``<prefix>/quarantine/``."""
    lib, prefix = tmp_path / "lib", "f10"
    assert ingest(corpus, lib, s3.uri(prefix)).exit_code == 0
    bad = next(s for s in Library(lib).read_manifest().shards if s.clips_rows)
    key = f"{prefix}/{bad.clips_file}"
    body = s3.client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    s3.client.put_object(Bucket=BUCKET, Key=key, Body=body[: len(body) // 2])
    assert f"SHA-256 mismatch in s3://{BUCKET}/{prefix}/{bad.clips_file}" in Library(lib).verify()
    s = ingest(corpus, lib)
    assert (s.shards_quarantined, s.videos_failed, s.videos_done + s.videos_skipped) == (1, 0, 3)
    assert s.videos_done >= 1
    aside = s3.client.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/quarantine/")["Contents"]
    # Every file of the shard goes aside together: clips, videos and its extra tables (text_status).
    assert sorted(o["Key"].split("-", 1)[1] for o in aside) == sorted(f for f, _ in bad.files().values())
    assert {bad.clips_file, bad.videos_file} < {f for f, _ in bad.files().values()}
    check_library(lib)
    assert_same_library(lib, local_lib)


def test_file_uri_shards(corpus: Path, local_lib: Path, tmp_path: Path) -> None:
    shards = tmp_path / "elsewhere" / "shards"
    s = ingest(corpus, tmp_path / "lib", f"file://{shards}/")
    assert s.exit_code == 0
    m = Library(tmp_path / "lib").read_manifest()
    assert m.shards_uri == f"file://{shards}"  # trailing slash normalised away
    assert {p.name for p in shards.iterdir()} == m.shard_file_names | {SHARDS_OWNER}  # no temp names left
    check_library(tmp_path / "lib")
    assert_same_library(tmp_path / "lib", local_lib)


def _ingest_error(capsys: pytest.CaptureFixture[str], lib: Path, corpus: Path, *extra: str) -> str:
    t0 = time.monotonic()
    rc = main(["-q", "ingest", str(corpus), "--library", str(lib), *CLI_COMMON, *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 1, err
    assert len(err.splitlines()) == 1, err
    assert time.monotonic() - t0 < 20  # before Ray, the model and any decoding
    assert not Library(lib).exists()
    return err


def test_missing_bucket_and_credentials_in_uri_are_one_line_errors(corpus: Path, s3: S3, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    err = _ingest_error(capsys, tmp_path / "a", corpus, "--shards-uri", s3.uri("p", bucket="no-such-bucket"))
    assert "no-such-bucket" in err and "does not exist" in err
    err = _ingest_error(capsys, tmp_path / "b", corpus, "--shards-uri", f"s3://AKIAXX:sEcReT@{BUCKET}/p")
    assert "embeds credentials" in err and "sEcReT" not in err and f"s3://{BUCKET}/p" in err
    err = _ingest_error(capsys, tmp_path / "c", corpus, "--shards-uri",
                        s3.uri("p") + "&session_token=sEcReT")
    assert "'session_token' is a credential" in err and "sEcReT" not in err
    err = _ingest_error(capsys, tmp_path / "d", corpus, "--library", f"s3://{BUCKET}/lib")
    assert "--shards-uri" in err


def test_access_denied_is_a_one_line_error(corpus: Path, s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    import requests

    iam = __import__("boto3").client("iam", endpoint_url=f"http://127.0.0.1:{s3.port}", region_name="us-east-1")
    iam.create_user(UserName="nobody")  # no policy: every S3 call is denied
    key = iam.create_access_key(UserName="nobody")["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    auth = f"http://127.0.0.1:{s3.port}/moto-api/reset-auth"
    requests.post(auth, data=b"0", timeout=10)  # moto enforces IAM from now on
    try:
        err = _ingest_error(capsys, tmp_path / "lib", corpus, "--shards-uri", s3.uri("denied"))
    finally:
        requests.post(auth, data=b"inf", timeout=10)
    assert s3.uri("denied") in err and "access denied" in err


@pytest.mark.slow  # the AWS SDK retries a refused connection for about 6 s
def test_unreachable_endpoint_is_a_one_line_error(corpus: Path, s3: S3, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    err = _ingest_error(capsys, tmp_path / "lib", corpus, "--shards-uri", s3.uri("p", port=_free_port()))
    assert "unreachable" in err and f"s3://{BUCKET}/p" in err


def test_changing_the_shard_location_is_refused(s3_lib: Path, corpus: Path, s3: S3) -> None:
    with pytest.raises(LibraryError, match="fixed once it holds shards"):
        ingest(corpus, s3_lib, s3.uri("other"))
    assert s3.keys("other") == set()  # nothing was written there
    assert Library(s3_lib).read_manifest().shards_uri == s3.uri("main")


def test_two_libraries_never_share_a_location(s3_lib: Path, corpus: Path, s3: S3, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    with pytest.raises(LibraryError, match="already holds .* shard file"):
        ingest(corpus, lib, s3.uri("main"))
    check_library(s3_lib)  # the first library's shards are untouched


@pytest.mark.slow
@pytest.mark.ray
def test_ray_ingest_to_s3_equals_local(corpus: Path, local_lib: Path, s3: S3, tmp_path: Path,
                                       ray_session: None) -> None:
    s = ingest(corpus, tmp_path / "lib", s3.uri("ray"), executor="ray")
    assert s.exit_code == 0
    check_library(tmp_path / "lib")
    assert_same_library(tmp_path / "lib", local_lib)
