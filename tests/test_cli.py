"""The apps as a user runs them: exit codes, one-line errors, run folders, sampling, sweeps."""
import subprocess
import sys

import numpy as np
import pytest
from conftest import run_cli, run_clis

pytestmark = pytest.mark.slow  # Hydra apps in subprocesses: seconds each

@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    res = run_cli("train", "debug=tiny", f"hydra.run.dir={run_dir}", f"cache_dir={run_dir / 'cache'}")
    assert res.returncode == 0, res.stderr[-3000:]
    return run_dir


def test_train_writes_a_complete_run_folder(trained_run):
    for path in ["train.log", ".hydra/config.yaml", "samples.png", "results.json", "sampler/sampler.json",
                 "glo/stats.jsonl", "imle/stats.jsonl", "glo/grids", "imle/grids"]:
        assert (trained_run / path).exists(), path
    log = (trained_run / "train.log").read_text()
    assert "glo: epoch 2/2" in log and "imle: round 2/2" in log


def test_sample_to_npz_and_png_folder(trained_run, tmp_path):
    out = tmp_path / "s.npz"
    sampler_dir = f"sampler_dir={trained_run / 'sampler'}"
    res, pngs, wide, bad = run_clis(  # four independent invocations, at once
        ("sample", sampler_dir, "num_samples=10", "seed=4", f"output={out}", f"hydra.run.dir={tmp_path / 'h'}"),
        ("sample", sampler_dir, "num_samples=3", f"output={tmp_path / 'pngs'}", "seed=4",
         f"hydra.run.dir={tmp_path / 'h2'}"),
        ("sample", sampler_dir, "num_samples=10", "seed=4", "candidates=12", f"output={tmp_path / 'wide.npz'}",
         f"hydra.run.dir={tmp_path / 'h3'}"),
        ("sample", sampler_dir, "candidates=1", f"hydra.run.dir={tmp_path / 'h4'}"))
    assert res.returncode == 0, res.stderr[-3000:]
    with np.load(out) as z:
        images = z["images"]
    assert images.shape == (10, 16, 16, 1) and images.dtype == np.uint8
    assert (tmp_path / "s_grid.png").is_file()
    assert pngs.returncode == 0, pngs.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "pngs").iterdir()) == ["000000.png", "000001.png", "000002.png"]
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(tmp_path / "pngs" / "000001.png")), images[1, ..., 0])
    assert wide.returncode == 0, wide.stderr[-3000:]
    with np.load(tmp_path / "wide.npz") as z:
        assert z["images"].shape == images.shape and not np.array_equal(z["images"], images)  # 12 codes, not 6
    assert bad.returncode != 0 and "candidates must be an integer >= 2" in bad.stderr
    assert "Traceback" not in bad.stderr


BAD_INPUT = [
    (["glo.learing_rate=1"], "glo.learing_rate"),
    (["glo.epochs=many"], "glo.epochs"),
    (["glo.lr_latent=-0.1"], "glo.lr_latent"),
    (["imle.batch_size=0"], "imle.batch_size"),
    (["data=mnist", "data.root=/nonexistent/mnist"], "/nonexistent/mnist"),
]


@pytest.fixture(scope="module")
def bad_input_runs(tmp_path_factory):
    """Every BAD_INPUT case as its own glann-train process, all started at once."""
    tmp = tmp_path_factory.mktemp("bad")
    return run_clis(*[("train", "debug=tiny", *args, f"hydra.run.dir={tmp / str(i)}")
                      for i, (args, _) in enumerate(BAD_INPUT)])


@pytest.mark.parametrize("case", range(len(BAD_INPUT)), ids=[needle for _, needle in BAD_INPUT])
def test_bad_input_is_a_one_line_error(bad_input_runs, case):
    res, needle = bad_input_runs[case], BAD_INPUT[case][1]
    assert res.returncode != 0
    assert needle in res.stderr
    assert "Traceback" not in res.stderr


def test_the_apps_start_without_importing_torchvision():
    """torchvision takes seconds to import (a third of an app's start-up here): it is imported where images are
    written or its datasets and VGG weights read, so an app that stops on bad input never pays for it."""
    code = ("import sys, glann.train, glann.sample, glann.eval_app, glann.invert_app; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torchvision'))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == "[]"


def test_sample_errors(tmp_path):
    missing, absent, zero = run_clis(
        ("sample", f"hydra.run.dir={tmp_path / 'a'}"),
        ("sample", f"sampler_dir={tmp_path / 'nope'}", f"hydra.run.dir={tmp_path / 'b'}"),
        ("sample", f"sampler_dir={tmp_path}", "num_samples=0", f"hydra.run.dir={tmp_path / 'c'}"))
    assert missing.returncode != 0 and "sampler_dir is required" in missing.stderr
    assert absent.returncode != 0 and "does not exist" in absent.stderr and "Traceback" not in absent.stderr
    assert zero.returncode != 0 and "num_samples" in zero.stderr


def test_two_job_multirun(tmp_path):
    res = run_cli("train", "-m", "debug=tiny", "imle.samples_per_latent=1,2", f"hydra.sweep.dir={tmp_path}",
                  f"cache_dir={tmp_path / 'cache'}")
    assert res.returncode == 0, res.stderr[-3000:]
    for job in ("0", "1"):
        assert (tmp_path / job / "sampler" / "sampler.json").is_file()
    assert (tmp_path / "multirun.yaml").is_file()
    # GLO was trained once (2 epochs logged in one shared folder) and reused by the second job.
    glo0, glo1 = (tmp_path / "0" / "glo").resolve(), (tmp_path / "1" / "glo").resolve()
    assert glo0 == glo1 and glo0.parent == (tmp_path / "cache").resolve()
    assert len((glo0 / "stats.jsonl").read_text().splitlines()) == 2
    assert "glo: reusing finished stage" in (tmp_path / "1" / "train.log").read_text()
    assert "glo: reusing" not in (tmp_path / "0" / "train.log").read_text()
    # The sweep-table callback tabulated both jobs; glann-eval rebuilds it from the folder.
    table = (tmp_path / "sweep_table.md").read_text()
    assert "imle.samples_per_latent=1" in table and "imle.samples_per_latent=2" in table
    (tmp_path / "sweep_table.md").unlink()
    res = run_cli("eval_app", f"sweep_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'eval'}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "imle/nn_dist" in res.stdout and (tmp_path / "sweep_table.md").is_file()


def test_eval_errors(tmp_path):
    no_sampler, unknown = run_clis(
        ("eval_app", f"hydra.run.dir={tmp_path / 'a'}"),
        ("eval_app", f"sampler_dir={tmp_path}", "eval.metrics=[fid,inception_score]",
         f"hydra.run.dir={tmp_path / 'b'}"))
    assert no_sampler.returncode != 0 and "sampler_dir" in no_sampler.stderr and "Traceback" not in no_sampler.stderr
    assert unknown.returncode != 0 and "unknown metric" in unknown.stderr and "Traceback" not in unknown.stderr


def test_a_failing_sweep_job_does_not_stop_the_others(tmp_path):
    res = run_cli("train", "-m", "debug=tiny", "glo.lr_latent=-1,0.01", f"hydra.sweep.dir={tmp_path}",
                  f"cache_dir={tmp_path / 'cache'}")
    assert res.returncode != 0  # the sweep reports the failure...
    assert "glo.lr_latent must be positive" in (tmp_path / "0" / "train.log").read_text()
    assert (tmp_path / "1" / "sampler" / "sampler.json").is_file()  # ...after running the other job
