"""The run directory's safety: --overwrite moves only what is provably ours, one process per run
directory, and a failed write (disk full) names the path and leaves nothing half-written."""
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from dcgan_jax import outputs
from dcgan_jax.outputs import RunDirError, WriteError, prepare_run_dir, run_dir_lock


def snapshot(path):
    return {os.path.relpath(os.path.join(d, f), path): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(path) for f in files}


def old_run(path):
    """A run directory as this program leaves it: created by prepare_run_dir, then filled."""
    prepare_run_dir(str(path))
    (path / "config.json").write_text("{}")
    (path / "metrics.jsonl").write_text('{"epoch": 1}\n')
    return path


# --- --overwrite ------------------------------------------------------------------------------

def test_a_new_run_dir_is_marked_as_ours(tmp_path):
    assert prepare_run_dir(str(tmp_path / "run")) is None
    assert outputs.is_marked(tmp_path / "run")
    assert json.loads((tmp_path / "run" / outputs.MARKER).read_text()) == {"created_by": "dcgan_jax"}


def test_a_run_dir_holding_only_our_marker_and_lock_is_reused(tmp_path):
    """What a start interrupted right after creating the run dir leaves: reusable with --out."""
    run = tmp_path / "run"
    prepare_run_dir(str(run))
    with run_dir_lock(str(run)):
        pass
    assert prepare_run_dir(str(run)) is None and sorted(os.listdir(run)) == sorted([outputs.MARKER, outputs.LOCK])
    (run / "config.json").write_text("{}")
    with pytest.raises(RunDirError, match="exists and is not empty"):
        prepare_run_dir(str(run))


def test_overwrite_moves_the_old_run_aside_and_never_deletes(tmp_path):
    run = old_run(tmp_path / "run")
    first = snapshot(run)
    assert prepare_run_dir(str(run), overwrite=True) == f"{tmp_path}/run.old-1"
    moved = snapshot(tmp_path / "run.old-1")
    assert moved.pop(outputs.LOCK) == f"{os.getpid()}\n".encode()  # held while it was moved
    assert moved == first
    assert os.listdir(run) == [outputs.MARKER]
    (run / "config.json").write_text('{"second": 1}')
    assert prepare_run_dir(str(run), overwrite=True) == f"{tmp_path}/run.old-2"
    assert (tmp_path / "run.old-1" / "metrics.jsonl").exists() and (tmp_path / "run.old-2" / "config.json").exists()


def test_overwrite_refuses_a_folder_that_looks_like_a_run_but_is_not_ours(tmp_path):
    """The issue's reproduction: a config.json alone proves nothing."""
    m = tmp_path / "m"
    m.mkdir()
    (m / "config.json").write_text('{"model_type": "x"}')
    (m / "weights.bin").write_text("w")
    with pytest.raises(RunDirError, match="a run made before run directories were marked as ours .* remove it "
                                          "yourself"):
        prepare_run_dir(str(m), overwrite=True)
    (m / "config.json").unlink()
    with pytest.raises(RunDirError, match="not a run directory made by dcgan_jax"):
        prepare_run_dir(str(m), overwrite=True)
    assert snapshot(m) == {"weights.bin": b"w"} and not (tmp_path / "m.old-1").exists()


def test_overwrite_refuses_a_forged_or_linked_marker(tmp_path):
    m = tmp_path / "m"
    m.mkdir()
    (m / "work.txt").write_text("mine")
    (m / outputs.MARKER).write_text("not json")
    with pytest.raises(RunDirError, match="not a run directory made by dcgan_jax"):
        prepare_run_dir(str(m), overwrite=True)
    real = old_run(tmp_path / "real")
    (m / outputs.MARKER).unlink()
    (m / outputs.MARKER).symlink_to(real / outputs.MARKER)
    with pytest.raises(RunDirError, match="not a run directory made by dcgan_jax"):
        prepare_run_dir(str(m), overwrite=True)


def test_overwrite_refuses_the_current_directory_and_its_ancestors(tmp_path, monkeypatch):
    run = old_run(tmp_path / "run")
    (run / "sub").mkdir()
    monkeypatch.chdir(run)
    with pytest.raises(RunDirError, match="'.': it is the current directory or holds it"):
        prepare_run_dir(".", overwrite=True)
    monkeypatch.chdir(run / "sub")
    with pytest.raises(RunDirError, match="it is the current directory or holds it"):
        prepare_run_dir(str(run), overwrite=True)
    assert not (tmp_path / "run.old-1").exists()


def test_overwrite_refuses_a_run_dir_holding_a_protected_path(tmp_path):
    run = old_run(tmp_path / "run")
    (run / "cache").mkdir()
    before = snapshot(run)
    with pytest.raises(RunDirError, match=f"it holds '{run / 'cache'}', which must be kept"):
        prepare_run_dir(str(run), overwrite=True, protected=(None, "gs://bucket/x", str(tmp_path / "elsewhere"),
                                                             str(run / "cache")))
    assert snapshot(run) == before


def test_overwrite_resolves_symlinks(tmp_path, monkeypatch):
    """A link to the current directory is the current directory; a link to a run moves the run."""
    run = old_run(tmp_path / "run")
    (tmp_path / "link").symlink_to(run)
    monkeypatch.chdir(run)
    with pytest.raises(RunDirError, match="is the current directory"):
        prepare_run_dir(str(tmp_path / "link"), overwrite=True)
    monkeypatch.chdir(tmp_path)
    assert prepare_run_dir(str(tmp_path / "link"), overwrite=True) == f"{tmp_path}/run.old-1"
    assert outputs.is_marked(tmp_path / "link") and os.path.islink(tmp_path / "link")


def test_overwrite_refuses_a_run_in_use(tmp_path):
    run = old_run(tmp_path / "run")
    with run_dir_lock(str(run)):
        with pytest.raises(RunDirError, match=f"is in use by another process \\(pid {os.getpid()}\\)"):
            prepare_run_dir(str(run), overwrite=True)
    assert not (tmp_path / "run.old-1").exists()


# --- one process per run directory ------------------------------------------------------------

HOLD = textwrap.dedent("""
    import sys, time
    from dcgan_jax.outputs import run_dir_lock
    with run_dir_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(60)
""")


def test_the_lock_refuses_a_second_process_and_a_killed_one_leaves_no_stale_lock(tmp_path):
    run = old_run(tmp_path / "run")
    root = os.path.dirname(os.path.dirname(os.path.abspath(outputs.__file__)))
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True,
                              cwd=root)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError) as e:
            with run_dir_lock(str(run)):
                pytest.fail("two processes hold the same run directory")
        assert str(e.value) == f"run dir '{run}' is in use by another process (pid {holder.pid})"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with run_dir_lock(str(run)):  # the kernel dropped the dead process's lock
        pass


def test_the_lock_is_released_on_exit_and_on_error(tmp_path):
    run = old_run(tmp_path / "run")
    with pytest.raises(ZeroDivisionError):
        with run_dir_lock(str(run)):
            1 / 0
    with run_dir_lock(str(run)):
        pass


# --- a start that checkpointed nothing (out of memory) -----------------------------------------

def started_run(path):
    """What a run's start writes before its first checkpoint (run.fit): marker, lock, config, checkpoints/."""
    prepare_run_dir(str(path))
    with run_dir_lock(str(path)):
        (path / "config.json").write_text("{}")
        (path / "checkpoints").mkdir()
    return path


def test_a_start_that_checkpointed_nothing_is_removed(tmp_path):
    assert outputs.remove_unstarted_run(str(started_run(tmp_path / "run")))
    assert os.listdir(tmp_path) == []


def test_a_folder_the_caller_did_not_create_is_emptied_of_the_start_only(tmp_path):
    run = started_run(tmp_path / "run")
    assert outputs.remove_unstarted_run(str(run), remove_folder=False)
    assert run.is_dir() and os.listdir(run) == []


def test_a_linked_run_dir_loses_its_start_and_keeps_its_link(tmp_path):
    run = started_run(tmp_path / "run")
    (tmp_path / "link").symlink_to(run)
    assert outputs.remove_unstarted_run(str(tmp_path / "link"))
    assert os.listdir(tmp_path) == ["link"] and os.path.islink(tmp_path / "link")


@pytest.mark.parametrize("change", ["no marker", "a checkpoint", "metrics", "a file of the user's",
                                    "a linked config", "checkpoints a file"])
def test_anything_but_an_unstarted_run_of_ours_is_left_untouched(tmp_path, change):
    run = started_run(tmp_path / "run")
    if change == "no marker":
        (run / outputs.MARKER).unlink()
    elif change == "a checkpoint":
        (run / "checkpoints" / "1").mkdir()
    elif change == "metrics":
        (run / "metrics.jsonl").write_text('{"epoch": 1}\n')
    elif change == "a file of the user's":
        (run / "notes.txt").write_text("mine")
    elif change == "a linked config":
        (tmp_path / "my_config.json").write_text("{}")
        (run / "config.json").unlink()
        (run / "config.json").symlink_to(tmp_path / "my_config.json")
    else:
        (run / "checkpoints").rmdir()
        (run / "checkpoints").write_text("mine")
    before = sorted(os.listdir(run)), snapshot(tmp_path)
    assert not outputs.remove_unstarted_run(str(run))
    assert (sorted(os.listdir(run)), snapshot(tmp_path)) == before


def test_a_start_in_use_by_another_process_is_left_untouched(tmp_path):
    run = started_run(tmp_path / "run")
    before = snapshot(run)
    with run_dir_lock(str(run)):  # a second open file: flock refuses it as it would another process
        assert not outputs.remove_unstarted_run(str(run))
    assert snapshot(run) == before and (run / "checkpoints").is_dir()


# --- failed writes ------------------------------------------------------------------------------

def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def fill_disk_on_fsync(monkeypatch):
    """Writes reach the page cache; the full disk shows when they are synced (as on ext4)."""
    monkeypatch.setattr(outputs.os, "fsync", no_space)


@pytest.mark.parametrize("write", [
    lambda d: outputs.write_metrics(d, [{"epoch": 2}]),
    lambda d: outputs.write_step_metrics(d, {"loss_d": [1.0, 2.0]}),
    lambda d: outputs.save_grid(os.path.join(d, "samples", "epoch_001.png"), np.zeros((16, 28, 28, 1))),
    lambda d: outputs.plot_losses(os.path.join(d, "losses.png"), [1.0, 0.5], [0.5, 1.0], 2),
    lambda d: outputs.save_variables(d, {"params": {"w": np.ones(3)}}, {"params": {"w": np.ones(2)}}),
], ids=["metrics", "step_metrics", "grid", "losses", "variables"])
def test_a_full_disk_names_the_path_keeps_the_old_file_and_leaves_no_temporary(write, tmp_path, monkeypatch):
    write(str(tmp_path))  # the previous good version of every file
    before = snapshot(tmp_path)
    fill_disk_on_fsync(monkeypatch)
    with pytest.raises(WriteError, match=rf"^cannot write {tmp_path}/\S+: no space left on device$"):
        write(str(tmp_path))
    assert snapshot(tmp_path) == before


def test_atomic_write_failing_in_rename_or_in_the_writer(tmp_path, monkeypatch):
    path = tmp_path / "a.json"
    outputs.atomic_write(str(path), b"old")
    monkeypatch.setattr(outputs.os, "replace", no_space)
    with pytest.raises(WriteError, match="a.json: no space left on device"):
        outputs.atomic_write(str(path), b"new")
    monkeypatch.undo()
    with pytest.raises(KeyboardInterrupt):  # an interrupt mid-write: no temporary left either
        outputs.atomic_write(str(path), lambda f: (f.write(b"half"), (_ for _ in ()).throw(KeyboardInterrupt)))
    assert os.listdir(tmp_path) == ["a.json"] and path.read_bytes() == b"old"
    assert issubclass(WriteError, RunDirError)  # the CLI reports both as exit status 1
