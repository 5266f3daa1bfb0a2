"""Every script other than the training CLI: a bad argument or input gets one line and the
documented exit status (1 runtime error, 2 bad arguments) before any slow work, never a traceback,
and nothing of the user's is overwritten."""
import os

import pytest

from benchmarks import bench
from dcgan_jax import runtime
from experiments import compare_frameworks, evaluate, figures, latent_scale, train_extractor
from parity import check as parity_check

SCRIPTS = {"latent_scale": latent_scale.main, "figures": figures.main, "compare_frameworks": compare_frameworks.main,
           "evaluate": evaluate.main, "train_extractor": train_extractor.main, "parity.check": parity_check.main,
           "bench": bench.main}


def run(main, argv, capsys):
    """(exit status, the last line on stderr) of main(argv); argparse's exits count too."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    return code, lines[-1] if lines else ""


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_states_the_exit_statuses(name, capsys):
    with pytest.raises(SystemExit) as e:
        SCRIPTS[name](["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert e.value.code == 0
    assert "2 bad arguments" in text and "130 interrupted (SIGINT), 143 terminated (SIGTERM)" in text, text


@pytest.mark.parametrize("name, argv, match", [
    ("latent_scale", ["RUN", "--num", "0"], "--num 0: must lie in [2, 4096]"),
    ("latent_scale", ["RUN", "--num", str(10 ** 9)], "--num 1000000000: must lie in [2, 4096]"),
    ("latent_scale", ["RUN", "--out", ""], "--out is empty: name the output file"),
    ("latent_scale", ["RUN", "--out", "{tmp}"], "--out {tmp} is a folder: name the file to write"),
    ("latent_scale", ["RUN", "--out", "{tmp}/a_file/x.png"], "--out {tmp}/a_file/x.png: {tmp}/a_file is a file"),
    ("figures", ["RUN", "--out", ""], "--out is empty: name the output folder"),
    ("figures", ["RUN", "--out", "{tmp}/a_file"], "--out {tmp}/a_file exists and is not a folder"),
    ("compare_frameworks", ["--out", ""], "--out is empty: name the output folder"),
    ("compare_frameworks", ["--out", "{tmp}/a_file"], "--out {tmp}/a_file exists and is not a folder"),
    ("compare_frameworks", ["--num-samples", str(10 ** 9)], "--num-samples 1000000000: must lie in [10, 100000]"),
    ("compare_frameworks", ["--seeds", "0"], "--seeds 0: must lie in [1, 100]"),
    ("evaluate", ["RUN", "--num-samples", str(10 ** 9)], "--num-samples 1000000000: must lie in [10, 100000]"),
    ("train_extractor", ["--epochs", "0"], "--epochs 0: must lie in [1, 1000]"),
    ("train_extractor", ["--out", ""], "--out is empty: name the output file"),
    ("train_extractor", ["--lr", "nan"], "--lr nan: must be a positive number"),
    ("parity.check", ["--steps", str(10 ** 9)], "--steps 1000000000: must lie in [2, 1024]"),
    ("parity.check", ["--pth", ""], "--pth is empty"),
    ("bench", ["--batch-size", "0"], "--batch-size 0: must lie in [1, 60000]"),
    ("bench", ["--epochs", str(10 ** 9)], "--epochs 1000000000: must lie in [1, 1000]"),
    ("bench", ["--variants", "jax_fast"], "unknown variant(s): jax_fast"),
    ("bench", ["--data-dir", "{tmp}/nowhere"], "--data-dir '{tmp}/nowhere' is not a folder"),
    ("bench", ["--json", "{tmp}"], "--json {tmp}: is a folder"),
    ("bench", ["--json", "{tmp}/no/such/rows.json"], "--json {tmp}/no/such/rows.json: its folder does not exist"),
])
def test_bad_arguments_exit_2_with_one_line(name, argv, match, tmp_path, capsys):
    (tmp_path / "a_file").write_text("the user's")
    before = sorted(os.listdir(tmp_path))
    code, line = run(SCRIPTS[name], [a.format(tmp=tmp_path) for a in argv], capsys)
    assert code == 2 and f"error: {match.format(tmp=tmp_path)}" in line, line
    assert sorted(os.listdir(tmp_path)) == before and (tmp_path / "a_file").read_text() == "the user's"


def test_an_existing_out_file_is_not_overwritten(tmp_path, capsys):
    mine = tmp_path / "figure.png"
    mine.write_bytes(b"my figure")
    code, line = run(latent_scale.main, ["RUN", "--out", str(mine)], capsys)
    assert code == 2 and f"{mine} exists and is not overwritten; remove it or pass another --out" in line
    (tmp_path / "figs").mkdir()
    (tmp_path / "figs" / "losses.png").write_bytes(b"my losses")
    code, line = run(figures.main, ["RUN", "--out", str(tmp_path / "figs")], capsys)
    assert code == 2 and f"{tmp_path / 'figs' / 'losses.png'} exists and is not overwritten" in line
    assert mine.read_bytes() == b"my figure" and (tmp_path / "figs" / "losses.png").read_bytes() == b"my losses"


@pytest.mark.parametrize("content", [None, b"", b"not a torch file"], ids=["missing", "empty", "garbage"])
def test_parity_check_reads_pth_before_the_slow_comparisons(content, tmp_path, capsys, monkeypatch):
    path = tmp_path / "D.pth"
    if content is not None:
        path.write_bytes(content)
    monkeypatch.setattr(parity_check.compare, "forward_rows", lambda *a: pytest.fail("compared before --pth"))
    code, line = run(parity_check.main, ["--pth", str(path)], capsys)
    assert code == 1 and line.startswith(f"error: --pth {path}: cannot be read as a tutorial model ("), line


def test_an_unusable_compile_cache_warns_and_compiles_without_it(tmp_path):
    import jax
    (tmp_path / "a_file").write_text("")
    before = jax.config.jax_compilation_cache_dir
    with pytest.warns(UserWarning, match=f"compile cache {tmp_path}/a_file/jax is unusable \\(Not a directory\\); "
                                         f"compiling without it"):
        assert runtime.enable_compile_cache(str(tmp_path / "a_file" / "jax")) is None
    assert jax.config.jax_compilation_cache_dir == before
