"""DVC snapshots of the training window: ids, no-ops, moved tags, reads, errors."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.config import Settings
from pipelines.data import versioning
from pipelines.data.versioning import DataVersion, find_version, read_snapshot, snapshot_window
from pipelines.errors import VersioningError
from pipelines.layout import Layout

DS = "2026-11-27"


def make_settings(base: Path, *, remote: str | None = None) -> Settings:
    return Settings(
        home=base / "home",
        specs_dir=base / "specs",
        expectations_dir=base / "expectations",
        bucket_url=(base / "bucket").as_uri(),
        registry_url=f"sqlite:///{base / 'registry.db'}",
        dvc_remote=remote if remote is not None else str(base / "dvc-remote"),
    )


def make_frame(rows: int = 500, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "event_date": pd.Timestamp("2026-01-01") + pd.to_timedelta(rng.integers(0, 300, rows), unit="D"),
            "amount": np.round(rng.lognormal(3, 1, rows), 2),
            "count": rng.poisson(3, rows),
            "segment": rng.choice(["retail", "corporate", "sme"], rows),
            "score": np.where(rng.random(rows) < 0.05, np.nan, rng.normal(size=rows)),
            "label": rng.random(rows) < 0.3,
        }
    )


def git(repo: Path, *args: str) -> str:
    """Plain git CLI: checks what the code did through a second, independent client."""
    done = subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True)
    return done.stdout.strip()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def frame() -> pd.DataFrame:
    return make_frame()


def repo_of(settings: Settings, vertical: str = "finance") -> Path:
    return Layout(settings, vertical).dvc_repo


# -- deterministic bytes and ids -------------------------------------------------


def test_window_bytes_are_identical_across_writes(tmp_path: Path, frame: pd.DataFrame) -> None:
    first, md5_first = versioning._write_window(frame, tmp_path)
    second, md5_second = versioning._write_window(frame.copy(), tmp_path)
    assert first.read_bytes() == second.read_bytes()
    assert md5_first == md5_second == hashlib.md5(first.read_bytes()).hexdigest()
    assert versioning.window_md5(frame) == md5_first


def test_window_bytes_change_with_the_data(frame: pd.DataFrame) -> None:
    changed = frame.assign(amount=frame["amount"] + 0.01)
    assert versioning.window_md5(changed) != versioning.window_md5(frame)


def test_same_frame_gives_same_id_in_two_fresh_homes(tmp_path: Path, frame: pd.DataFrame) -> None:
    one = snapshot_window(frame, vertical="finance", ds=DS, settings=make_settings(tmp_path / "a"))
    two = snapshot_window(frame, vertical="finance", ds=DS, settings=make_settings(tmp_path / "b"))
    assert one.id == two.id
    assert one.md5 == two.md5
    assert one.id == f"dv-{one.md5[:12]}"


# -- snapshot ------------------------------------------------------------------------


def test_first_snapshot_commits_tags_and_pushes(
    settings: Settings, frame: pd.DataFrame, capfd: pytest.CaptureFixture[str]
) -> None:
    version = snapshot_window(frame, vertical="finance", ds=DS, settings=settings)

    repo = repo_of(settings)
    assert version.created
    assert version.tag == "finance@2026-11-27"
    assert version.rows == len(frame)
    assert version.path == str(repo / "window.parquet")
    assert version.md5 == hashlib.md5(Path(version.path).read_bytes()).hexdigest()
    # the tag names vertical and date and points at the commit, which names them too
    assert git(repo, "rev-parse", f"{version.tag}^{{commit}}") == version.commit
    message = git(repo, "log", "-1", "--format=%B", version.tag)
    assert "finance" in message and DS in message and version.md5 in message
    # only the .dvc file is in git; the data is in the remote
    assert "window.parquet.dvc" in git(repo, "ls-files")
    assert "window.parquet\n" not in git(repo, "ls-files") + "\n"
    remote_object = Path(settings.dvc_remote) / "files" / "md5" / version.md5[:2] / version.md5[2:]
    assert remote_object.read_bytes() == Path(version.path).read_bytes()
    # nothing left unstaged or untracked, analytics off, nothing on stdout (Airflow logs)
    assert git(repo, "status", "--porcelain") == ""
    assert "analytics = False" in (repo / ".dvc" / "config").read_text()
    assert capfd.readouterr().out == ""


def test_identical_resnapshot_is_a_noop(settings: Settings, frame: pd.DataFrame) -> None:
    first = snapshot_window(frame, vertical="finance", ds=DS, settings=settings)
    repo = repo_of(settings)
    commits = git(repo, "rev-list", "--count", "HEAD")
    stat = Path(first.path).stat()

    again = snapshot_window(frame.copy(), vertical="finance", ds=DS, settings=settings)

    assert not again.created
    assert (again.id, again.md5, again.commit, again.tag) == (first.id, first.md5, first.commit, first.tag)
    assert git(repo, "rev-list", "--count", "HEAD") == commits
    after = Path(first.path).stat()
    assert (after.st_ino, after.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns), "file was rewritten"


def test_changed_data_for_the_same_date_moves_the_tag(
    settings: Settings, frame: pd.DataFrame, caplog: pytest.LogCaptureFixture
) -> None:
    first = snapshot_window(frame, vertical="finance", ds=DS, settings=settings)
    changed = frame.assign(amount=frame["amount"] * 2)

    with caplog.at_level(logging.WARNING, logger="pipelines.data.versioning"):
        second = snapshot_window(changed, vertical="finance", ds=DS, settings=settings)

    assert second.created
    assert second.id != first.id
    assert second.commit != first.commit
    assert second.tag == first.tag
    assert git(repo_of(settings), "rev-parse", f"{second.tag}^{{commit}}") == second.commit
    assert "changed upstream" in caplog.text and first.id in caplog.text and second.id in caplog.text
    found = find_version(vertical="finance", ds=DS, settings=settings)
    assert found is not None and found.id == second.id


def test_a_new_date_with_unchanged_data_gets_its_own_tag(settings: Settings, frame: pd.DataFrame) -> None:
    first = snapshot_window(frame, vertical="finance", ds=DS, settings=settings)
    second = snapshot_window(frame, vertical="finance", ds="2026-11-28", settings=settings)
    assert second.created
    assert second.id == first.id
    assert second.tag == "finance@2026-11-28"
    assert "2026-11-28" in git(repo_of(settings), "log", "-1", "--format=%B", second.tag)


# -- reading ---------------------------------------------------------------------------


def test_read_snapshot_pulls_from_the_remote_when_the_cache_is_gone(settings: Settings) -> None:
    older, newer = make_frame(seed=1), make_frame(seed=2)
    old = snapshot_window(older, vertical="finance", ds="2026-11-26", settings=settings)
    snapshot_window(newer, vertical="finance", ds=DS, settings=settings)
    shutil.rmtree(repo_of(settings) / ".dvc" / "cache")

    pd.testing.assert_frame_equal(read_snapshot(vertical="finance", tag=old.tag, settings=settings), older)
    pd.testing.assert_frame_equal(read_snapshot(vertical="finance", tag="finance@2026-11-27", settings=settings), newer)


def test_a_worker_with_an_empty_home_reads_the_version_by_md5(tmp_path: Path) -> None:
    """Worker A snapshots; worker B (own home, same remote, no git history) reads exactly that data."""
    remote = str(tmp_path / "shared-remote")
    worker_a = make_settings(tmp_path / "a", remote=remote)
    worker_b = make_settings(tmp_path / "b", remote=remote)
    older, newer = make_frame(seed=1), make_frame(seed=2)
    old = snapshot_window(older, vertical="finance", ds=DS, settings=worker_a)
    # B's own snapshot of the same date saw other data: its tag must not win over the recorded md5.
    snapshot_window(newer, vertical="finance", ds=DS, settings=worker_b)
    read = read_snapshot(vertical="finance", tag=old.tag, commit=old.commit, md5=old.md5, settings=worker_b)
    pd.testing.assert_frame_equal(read, older)
    fresh = make_settings(tmp_path / "c", remote=remote)
    pd.testing.assert_frame_equal(
        read_snapshot(vertical="finance", tag=old.tag, commit=old.commit, md5=old.md5, settings=fresh), older
    )
    assert not (repo_of(fresh) / ".git").exists()  # no git history was needed


def test_a_reader_can_ask_for_some_columns_by_tag_or_by_md5(tmp_path: Path) -> None:
    """Only the asked columns it has, in the asked order, with every row (drift reads a few features)."""
    remote = str(tmp_path / "shared-remote")
    worker_a = make_settings(tmp_path / "a", remote=remote)
    worker_b = make_settings(tmp_path / "b", remote=remote)  # no git history: reads by md5 from the remote
    full = make_frame()
    made = snapshot_window(full, vertical="finance", ds=DS, settings=worker_a)
    asked = ["score", "no_such_column", "segment"]
    for settings in (worker_a, worker_b):
        read = read_snapshot(vertical="finance", tag=made.tag, md5=made.md5, columns=asked, settings=settings)
        pd.testing.assert_frame_equal(read, full[["score", "segment"]])
    none = read_snapshot(vertical="finance", tag=made.tag, columns=["no_such_column"], settings=worker_a)
    assert len(none) == len(full) and list(none.columns) == []


def test_a_corrupted_remote_object_is_refused_by_md5(tmp_path: Path, frame: pd.DataFrame) -> None:
    remote = tmp_path / "shared-remote"
    version = snapshot_window(
        frame, vertical="finance", ds=DS, settings=make_settings(tmp_path / "a", remote=str(remote))
    )
    stored = remote / "files" / "md5" / version.md5[:2] / version.md5[2:]
    stored.chmod(0o644)
    stored.write_bytes(stored.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(VersioningError, match=f"corrupted.*{version.md5}|{version.md5}.*corrupted"):
        read_snapshot(
            vertical="finance",
            tag=version.tag,
            md5=version.md5,
            settings=make_settings(tmp_path / "b", remote=str(remote)),
        )


def test_read_unknown_tag_says_what_to_run(settings: Settings, frame: pd.DataFrame) -> None:
    with pytest.raises(VersioningError, match=r"no snapshot tagged 'finance@2026-01-01'.*snapshot stage"):
        read_snapshot(vertical="finance", tag="finance@2026-01-01", settings=settings)
    snapshot_window(frame, vertical="finance", ds=DS, settings=settings)
    with pytest.raises(VersioningError, match="no snapshot tagged"):
        read_snapshot(vertical="finance", tag="finance@2026-01-01", settings=settings)


def test_find_version_recognises_an_earlier_snapshot(settings: Settings, frame: pd.DataFrame) -> None:
    assert find_version(vertical="finance", ds=DS, settings=settings) is None
    made = snapshot_window(frame, vertical="finance", ds=DS, settings=settings)
    found = find_version(vertical="finance", ds=DS, settings=settings)
    assert found is not None
    assert found.to_dict() == {**made.to_dict(), "created": False}
    assert find_version(vertical="finance", ds="2026-11-28", settings=settings) is None
    assert find_version(vertical="health", ds=DS, settings=settings) is None


# -- failures --------------------------------------------------------------------------


def test_unusable_remote_raises_a_clear_error_and_a_rerun_recovers(tmp_path: Path, frame: pd.DataFrame) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the remote folder should be")
    broken = make_settings(tmp_path, remote=str(blocker / "remote"))

    with pytest.raises(VersioningError) as info:
        snapshot_window(frame, vertical="finance", ds=DS, settings=broken)
    message = str(info.value)
    assert "[finance, 2026-11-27]" in message
    assert "PIPELINES_DVC_REMOTE" in message and str(blocker) in message
    # no tag: a tag means "pushed", so the rerun must not take this for done
    assert find_version(vertical="finance", ds=DS, settings=broken) is None

    fixed = make_settings(tmp_path)
    version = snapshot_window(frame, vertical="finance", ds=DS, settings=fixed)
    assert version.created
    assert (Path(fixed.dvc_remote) / "files" / "md5" / version.md5[:2] / version.md5[2:]).exists()


def test_url_remote_is_not_treated_as_a_path(tmp_path: Path, frame: pd.DataFrame, monkeypatch) -> None:
    # An S3 remote with nothing listening: DVC must try the URL (and fail with a
    # VersioningError naming the setting) rather than create a folder called "s3:".
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    settings = make_settings(tmp_path, remote="s3://pipelines-dvc/remote")
    with pytest.raises(VersioningError, match=r"PIPELINES_DVC_REMOTE.*s3://pipelines-dvc/remote"):
        snapshot_window(frame, vertical="finance", ds=DS, settings=settings)
    assert not list(tmp_path.rglob("s3:*"))


def test_unreachable_remote_url_names_the_cause(tmp_path: Path, frame: pd.DataFrame) -> None:
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    remote = f"http://127.0.0.1:{port}/dvc"
    settings = make_settings(tmp_path, remote=remote)
    with pytest.raises(VersioningError) as info:
        snapshot_window(frame, vertical="finance", ds=DS, settings=settings)
    message = str(info.value)
    assert f"PIPELINES_DVC_REMOTE (now '{remote}')" in message
    assert "Cannot connect" in message  # the cause DVC only logs, carried into the error
    assert find_version(vertical="finance", ds=DS, settings=settings) is None


def test_a_held_lock_times_out_with_a_clear_error(settings: Settings, frame: pd.DataFrame) -> None:
    from filelock import FileLock

    lock_path = versioning._lock_path(settings, "finance")
    lock_path.parent.mkdir(parents=True)
    with FileLock(str(lock_path)), pytest.raises(VersioningError) as info:
        snapshot_window(frame, vertical="finance", ds=DS, settings=settings, lock_timeout_s=0.2)
    assert "[finance, 2026-11-27]" in str(info.value)
    assert str(lock_path) in str(info.value)


def test_an_unstorable_column_is_a_versioning_error(settings: Settings) -> None:
    mixed = pd.DataFrame({"id": [1, "two", 3.0]}, dtype=object)
    with pytest.raises(VersioningError, match=r"\[finance, 2026-11-27\] the window cannot be stored as Parquet"):
        snapshot_window(mixed, vertical="finance", ds=DS, settings=settings)


@pytest.mark.parametrize("ds", ["2026-1-27", "20261127", "latest", ""])
def test_a_bad_date_is_rejected(settings: Settings, frame: pd.DataFrame, ds: str) -> None:
    with pytest.raises(VersioningError, match="YYYY-MM-DD"):
        snapshot_window(frame, vertical="finance", ds=ds, settings=settings)


# -- records ---------------------------------------------------------------------------


def test_data_version_round_trips_through_a_dict() -> None:
    version = DataVersion(
        vertical="finance",
        ds=DS,
        id="dv-0123456789ab",
        md5="0123456789abcdef0123456789abcdef",
        tag="finance@2026-11-27",
        commit="f" * 40,
        rows=12,
        path="/data/dvc/finance/window.parquet",
        created=True,
    )
    assert DataVersion.from_dict(version.to_dict()) == version
    broken = version.to_dict()
    del broken["md5"]
    with pytest.raises(VersioningError, match="md5"):
        DataVersion.from_dict(broken)


def test_tag_is_a_valid_git_ref_name() -> None:
    tag = versioning.tag_name("mfg_eu", DS)
    subprocess.run(["git", "check-ref-format", f"refs/tags/{tag}"], check=True)


# -- DVC and git through their public interfaces ------------------------------------------


def test_commits_need_no_git_identity_and_edit_no_git_config(
    settings: Settings, frame: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker without any git identity still commits, as ``pipelines``; no config file is edited."""
    empty_home = tmp_path / "nobody"
    empty_home.mkdir()
    monkeypatch.setenv("HOME", str(empty_home))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL", "EMAIL"):
        monkeypatch.delenv(name, raising=False)
    version = snapshot_window(frame, vertical="finance", ds=DS, settings=settings)
    repo = repo_of(settings)
    identity = "pipelines <pipelines@localhost>"
    assert git(repo, "log", "--format=%an <%ae>|%cn <%ce>").splitlines() == [f"{identity}|{identity}"] * 2
    assert "[user]" not in (repo / ".git" / "config").read_text()
    assert version.id == snapshot_window(frame, vertical="finance", ds=DS, settings=settings).id


def test_version_id_of_a_fixed_frame_is_pinned() -> None:
    """Unchanged data keeps its id across changes to this code (a Parquet writer upgrade may move it, visibly)."""
    assert versioning.version_id(versioning.window_md5(make_frame())) == "dv-606ddc3bcbd7"


# -- unchanged inputs: recognised without serialising ---------------------------


def fingerprint(tag: str) -> str:
    return hashlib.sha256(tag.encode()).hexdigest()


def no_serialising(*_: object, **__: object) -> None:
    raise AssertionError("the window was serialised")


def test_same_inputs_return_the_snapshot_without_serialising(
    settings: Settings, frame: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = snapshot_window(frame, vertical="finance", ds=DS, settings=settings, inputs=fingerprint("a"))
    assert git(repo_of(settings), "log", "-1", "--format=%B").endswith(f"Data-Inputs: {fingerprint('a')}")
    window = repo_of(settings) / versioning.WINDOW_FILE
    mtime = window.stat().st_mtime_ns
    monkeypatch.setattr(versioning, "_serialise", no_serialising)
    again = snapshot_window(frame, vertical="finance", ds=DS, settings=settings, inputs=fingerprint("a"))
    assert again == replace(first, created=False)
    assert window.stat().st_mtime_ns == mtime
    assert git(repo_of(settings), "rev-list", "--count", "HEAD") == "2"  # init + one snapshot


def test_changed_inputs_serialise_and_a_changed_frame_moves_the_tag(settings: Settings, frame: pd.DataFrame) -> None:
    first = snapshot_window(frame, vertical="finance", ds=DS, settings=settings, inputs=fingerprint("a"))
    changed = frame.assign(amount=frame["amount"] + 1)
    second = snapshot_window(changed, vertical="finance", ds=DS, settings=settings, inputs=fingerprint("b"))
    assert second.created and second.md5 != first.md5
    assert second.md5 == versioning.window_md5(changed)
    # The new commit records the new inputs: the next rerun with them is a no-op.
    assert git(repo_of(settings), "log", "-1", "--format=%B").endswith(f"Data-Inputs: {fingerprint('b')}")


def test_changed_inputs_with_identical_data_are_still_a_noop(settings: Settings, frame: pd.DataFrame) -> None:
    first = snapshot_window(frame, vertical="finance", ds=DS, settings=settings, inputs=fingerprint("a"))
    again = snapshot_window(frame, vertical="finance", ds=DS, settings=settings, inputs=fingerprint("b"))
    assert again == replace(first, created=False)


def test_same_inputs_with_another_row_count_are_not_trusted(settings: Settings, frame: pd.DataFrame) -> None:
    snapshot_window(frame, vertical="finance", ds=DS, settings=settings, inputs=fingerprint("a"))
    fewer = frame.iloc[:-1]
    again = snapshot_window(fewer, vertical="finance", ds=DS, settings=settings, inputs=fingerprint("a"))
    assert again.created and again.rows == len(fewer)


def test_a_snapshot_without_inputs_is_checked_by_serialising(
    settings: Settings, frame: pd.DataFrame, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot_window(frame, vertical="finance", ds=DS, settings=settings)  # before fingerprints existed
    monkeypatch.setattr(versioning, "_serialise", no_serialising)
    with pytest.raises(AssertionError, match="serialised"):
        snapshot_window(frame, vertical="finance", ds=DS, settings=settings, inputs=fingerprint("a"))


def test_a_malformed_inputs_fingerprint_is_refused(settings: Settings, frame: pd.DataFrame) -> None:
    with pytest.raises(VersioningError, match="inputs_fingerprint"):
        snapshot_window(frame, vertical="finance", ds=DS, settings=settings, inputs="abc")


def test_inputs_fingerprint_follows_file_content_config_and_code(tmp_path: Path) -> None:
    part, code = tmp_path / "2026-11-27.parquet", tmp_path / "labels.py"
    part.write_bytes(b"day one")
    code.write_text("RULE = 1\n")
    base = versioning.inputs_fingerprint([part], config={"label": "x"}, code=[code])
    assert base == versioning.inputs_fingerprint([part], config={"label": "x"}, code=[code])
    part.write_bytes(b"day One")  # same size, other bytes
    assert versioning.inputs_fingerprint([part], config={"label": "x"}, code=[code]) != base
    part.write_bytes(b"day one")
    assert versioning.inputs_fingerprint([part], config={"label": "y"}, code=[code]) != base
    code.write_text("RULE = 2\n")
    assert versioning.inputs_fingerprint([part], config={"label": "x"}, code=[code]) != base
    code.write_text("RULE = 1\n")
    assert versioning.inputs_fingerprint([], config={"label": "x"}, code=[code]) != base


def test_the_stat_cache_rehashes_changed_files_and_skips_unchanged_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "repo" / ".dvc" / "tmp" / "inputs-md5.json"
    cache.parent.mkdir(parents=True)
    part = tmp_path / "2026-11-27.parquet"
    part.write_bytes(b"first")
    old = time.time() - 60
    os.utime(part, (old, old))
    # Not "racily clean": the margin is the kernel's timestamp tick (the utime just set the ctime).
    monkeypatch.setattr(versioning, "_RACY_S", 0.0)
    time.sleep(0.05)
    base = versioning.inputs_fingerprint([part], config={}, stat_cache=cache)
    assert str(part.absolute()) in json.loads(cache.read_text())

    hashed: list[Path] = []
    real_md5 = versioning._file_md5
    monkeypatch.setattr(versioning, "_file_md5", lambda path: hashed.append(path) or real_md5(path))
    assert versioning.inputs_fingerprint([part], config={}, stat_cache=cache) == base
    assert hashed == []  # unchanged: recognised by its stat alone

    # Same size, same inode, mtime set back: the ctime still tells the rewrite apart
    # (a tick later: ctimes come from the kernel's coarse clock).
    time.sleep(0.05)
    part.write_bytes(b"other")
    os.utime(part, (old, old))
    assert versioning.inputs_fingerprint([part], config={}, stat_cache=cache) != base
    assert hashed == [part]


def test_a_file_changed_just_now_is_hashed_but_not_cached(tmp_path: Path) -> None:
    cache = tmp_path / "tmp" / "inputs-md5.json"
    cache.parent.mkdir()
    part = tmp_path / "fresh.parquet"
    part.write_bytes(b"rows")  # its next rewrite could land in the same timestamp tick
    versioning.inputs_fingerprint([part], config={}, stat_cache=cache)
    assert str(part.absolute()) not in json.loads(cache.read_text() if cache.exists() else "{}")
    old = time.time() - 60
    os.utime(part, (old, old))  # an old mtime, but the ctime says it changed just now
    versioning.inputs_fingerprint([part], config={}, stat_cache=cache)
    assert str(part.absolute()) not in json.loads(cache.read_text() if cache.exists() else "{}")


def test_without_its_folder_the_stat_cache_is_not_used(tmp_path: Path) -> None:
    part = tmp_path / "part.parquet"
    part.write_bytes(b"rows")
    cache = tmp_path / "no-repo-yet" / "inputs-md5.json"
    first = versioning.inputs_fingerprint([part], config={}, stat_cache=cache)
    assert first == versioning.inputs_fingerprint([part], config={})
    assert not cache.parent.exists()
