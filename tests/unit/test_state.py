"""The state store: home mirrored to a shared URL (a second local folder stands in for S3 here)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from pipelines.config import Settings
from pipelines.errors import StageOrderError
from pipelines.layout import Layout
from pipelines.state import StateError, open_state

from ..conftest import make_settings


def worker(tmp_path: Path, name: str, shared: Path) -> Settings:
    """A worker's settings: its own home, the one shared state URL."""
    home = tmp_path / name
    home.mkdir()
    return dataclasses.replace(make_settings(home), state_url=shared.as_uri())


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    path = tmp_path / "shared-state"
    path.mkdir()
    return path


def test_default_state_is_home_and_records_are_file_uris(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    state = open_state(settings)
    assert state.is_home
    path = Layout(settings, "demo").model_dir("mv-1")
    assert state.uri(path) == path.resolve().as_uri()
    assert state.local(state.uri(path)) == path.resolve()
    assert state.where(path) == str(path)  # people see a plain path in the embedded setup


def test_a_record_written_on_one_worker_is_read_on_another(tmp_path: Path, shared: Path) -> None:
    a, b = worker(tmp_path, "a", shared), worker(tmp_path, "b", shared)
    Layout(a, "demo").write_record("2026-11-27", "train", {"model_version": "mv-1"})
    assert (shared / "runs" / "demo" / "2026-11-27" / "train.json").is_file()
    layout_b = Layout(b, "demo")
    assert layout_b.has_record("2026-11-27", "train")
    assert layout_b.read_record("2026-11-27", "train", needed_by="evaluate") == {"model_version": "mv-1"}
    layout_b.state.remove(layout_b.record_path("2026-11-27", "train"))
    with pytest.raises(StageOrderError, match="needs the 'train' record at file://"):
        Layout(a, "demo").read_record("2026-11-27", "train", needed_by="evaluate")


def test_folders_travel_by_uri_and_a_stale_cached_copy_is_fetched_again(tmp_path: Path, shared: Path) -> None:
    a, b = worker(tmp_path, "a", shared), worker(tmp_path, "b", shared)
    model_a = Layout(a, "demo").model_dir("mv-1")
    model_a.mkdir(parents=True)
    (model_a / "weights.pt").write_bytes(b"first")
    state_a = open_state(a)
    state_a.push(model_a)
    uri = state_a.uri(model_a)
    assert uri == (shared / "models" / "demo" / "mv-1").as_uri()

    local_b = open_state(b).local(uri)
    assert local_b == Layout(b, "demo").model_dir("mv-1") and (local_b / "weights.pt").read_bytes() == b"first"
    # Same size, other bytes, newer stored version: the cache must not keep the old copy.
    (model_a / "weights.pt").write_bytes(b"again")
    stored = shared / "models" / "demo" / "mv-1" / "weights.pt"
    state_a.push(model_a)
    os.utime(stored, ns=(stored.stat().st_atime_ns, stored.stat().st_mtime_ns + 10**9))
    assert (open_state(b).local(uri) / "weights.pt").read_bytes() == b"again"
    # A damaged cached copy is replaced as well (it was not fetched from the stored version).
    (local_b / "weights.pt").write_bytes(b"xxxxx")
    (tmp_path / "b" / ".state-cache" / "models" / "demo" / "mv-1" / "weights.pt.json").unlink()
    assert (open_state(b).local(uri) / "weights.pt").read_bytes() == b"again"


def test_a_folder_pull_can_take_only_named_files(tmp_path: Path, shared: Path) -> None:
    a, b = worker(tmp_path, "a", shared), worker(tmp_path, "b", shared)
    folder_a = Layout(a, "demo").validated("2026-11-27").parent
    folder_a.mkdir(parents=True)
    for day in ("2026-11-25", "2026-11-26", "2026-11-27"):
        (folder_a / f"{day}.parquet").write_bytes(day.encode())
    open_state(a).push(folder_a)

    folder_b = Layout(b, "demo").validated("2026-11-27").parent
    open_state(b).pull(folder_b, names={"2026-11-26.parquet", "2026-11-20.parquet"})  # one is not stored
    assert sorted(p.name for p in folder_b.iterdir()) == ["2026-11-26.parquet"]
    assert (folder_b / "2026-11-26.parquet").read_bytes() == b"2026-11-26"
    open_state(b).pull(folder_b, names=set())
    assert sorted(p.name for p in folder_b.iterdir()) == ["2026-11-26.parquet"]


def test_push_uploads_only_what_changed_since_it_was_fetched(tmp_path: Path, shared: Path) -> None:
    a, b = worker(tmp_path, "a", shared), worker(tmp_path, "b", shared)
    site = Layout(a, "demo").report_dir("2026-11-27")
    site.mkdir(parents=True)
    for name in ("old.html", "index.html"):
        (site / name).write_text(name)
    open_state(a).push(site)
    state_b = open_state(b)
    local = state_b.local(open_state(a).uri(site))
    stored = shared / "reports" / "demo" / "2026-11-27"
    before = {p.name: p.stat().st_mtime_ns for p in stored.iterdir()}
    (local / "index.html").write_text("rebuilt")
    state_b.push(local)
    after = {p.name: p.stat().st_mtime_ns for p in stored.iterdir()}
    assert after["old.html"] == before["old.html"]  # unchanged since fetched: not uploaded again
    assert (stored / "index.html").read_text() == "rebuilt"


def test_partitions_move_in_the_state_and_names_lists_a_folder(tmp_path: Path, shared: Path) -> None:
    a = worker(tmp_path, "a", shared)
    layout = Layout(a, "demo")
    raw = layout.raw("2026-11-27")
    raw.parent.mkdir(parents=True)
    raw.write_bytes(b"rows")
    layout.state.push(raw)
    assert layout.state.names(raw.parent) == {"2026-11-27.parquet"}
    layout.state.move(raw, layout.validated("2026-11-27"))
    assert not (shared / "data" / "demo" / "raw" / "2026-11-27.parquet").exists()
    assert (shared / "data" / "demo" / "validated" / "2026-11-27.parquet").read_bytes() == b"rows"
    assert layout.state.names(layout.quarantine("2026-11-27").parent) == set()


def test_a_uri_outside_the_state_is_refused(tmp_path: Path, shared: Path) -> None:
    with pytest.raises(StateError, match="not under the state URL"):
        open_state(worker(tmp_path, "a", shared)).local("s3://elsewhere/models/x")


def test_a_file_deleted_between_listing_and_download_is_skipped_not_a_crash(
    tmp_path: Path, shared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two workers flush the same queued emails: one lists the outbox, the other sends one and deletes it.
    outbox = shared / "outbox"
    outbox.mkdir()
    (outbox / "a.eml").write_text("first")
    (outbox / "b.eml").write_text("second")
    settings = worker(tmp_path, "w", shared)
    state = open_state(settings)
    assert state.fs is not None
    real_get = state.fs.get_file

    def get_after_the_other_worker_deleted_a(key: str, local: str, **kwargs: object) -> None:
        if key.endswith("a.eml"):
            (outbox / "a.eml").unlink(missing_ok=True)
        real_get(key, local, **kwargs)

    monkeypatch.setattr(state.fs, "get_file", get_after_the_other_worker_deleted_a)
    state.pull(settings.home / "outbox")
    assert sorted(p.name for p in (settings.home / "outbox").iterdir() if not p.name.startswith(".")) == ["b.eml"]
    assert (settings.home / "outbox" / "b.eml").read_text() == "second"


def test_mirror_deletes_from_the_state_what_was_deleted_here(tmp_path: Path, shared: Path) -> None:
    # Lightning keeps only the latest epoch's checkpoint; the store must not keep one per epoch.
    settings = worker(tmp_path, "w", shared)
    state = open_state(settings)
    folder = settings.home / "checkpoints" / "demo" / "mv-1"
    folder.mkdir(parents=True)
    (folder / "epoch=0-step=4.ckpt").write_text("epoch 0")
    (folder / "last.ckpt").write_text("epoch 0")
    state.mirror(folder)
    assert sorted(p.name for p in (shared / "checkpoints" / "demo" / "mv-1").iterdir()) == [
        "epoch=0-step=4.ckpt",
        "last.ckpt",
    ]
    (folder / "epoch=0-step=4.ckpt").unlink()
    (folder / "epoch=1-step=8.ckpt").write_text("epoch 1")
    (folder / "last.ckpt").write_text("epoch 1")
    state.mirror(folder)
    stored = shared / "checkpoints" / "demo" / "mv-1"
    assert sorted(p.name for p in stored.iterdir()) == ["epoch=1-step=8.ckpt", "last.ckpt"]
    assert (stored / "last.ckpt").read_text() == "epoch 1"
    other = shared / "checkpoints" / "demo" / "mv-2"  # another version's folder is left alone
    other.mkdir()
    (other / "last.ckpt").write_text("other")
    state.mirror(folder)
    assert (other / "last.ckpt").read_text() == "other"
