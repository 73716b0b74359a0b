"""The package as a user installs it: a non-editable wheel, used from outside the checkout."""
import os
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


def test_wheel_ships_conf_and_assets_and_trains_outside_the_checkout(tmp_path):
    wheel_dir = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheel_dir), str(REPO)], check=True, capture_output=True)
    (wheel,) = wheel_dir.glob("glann-*.whl")
    # Install the wheel alone into its own folder and put it first on the path of *this* interpreter, which has
    # torch and the other dependencies wherever they live (a virtual environment, the system site, --user).
    venv = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(venv), str(wheel)],
                   check=True, capture_output=True)
    env = {**{k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}, "PYTHONPATH": str(venv)}
    run_dir = tmp_path / "run"
    res = subprocess.run([sys.executable, str(venv / "bin" / "glann-train"), "debug=tiny", f"hydra.run.dir={run_dir}",
                          "cache_dir=null"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (run_dir / "sampler" / "sampler.json").is_file()
    # It ran the installed copy, not the checkout.
    where = subprocess.run([sys.executable, "-c", "import glann, glann.cli; print(glann.__file__);"
                            "print(glann.cli.config_dir())"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert str(venv) in where.stdout and str(REPO) not in where.stdout, where.stdout
    res = subprocess.run([sys.executable, "-c", "from glann.data import load_dataset;"
                          "from glann.config import DataConfig; print(len(load_dataset(DataConfig())))"],
                         cwd=tmp_path, env=env, capture_output=True, text=True)
    assert res.stdout.strip() == "10000", res.stderr[-2000:]
