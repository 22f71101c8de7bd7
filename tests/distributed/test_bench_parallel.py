"""bench/parallel.py on the CPU: 2 gloo processes run wan-tiny at Ulysses 2 and the latents match the one-process
run (fp32), the table and --json carry the row; more GPUs than visible and a bad layout are one-line errors."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[2] / "bench" / "parallel.py"  # tests/ and bench/ are siblings in CI too


def _bench_main():
    spec = importlib.util.spec_from_file_location("bench_parallel", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.main


def test_two_gloo_processes_match_one(tmp_path, capsys):
    out = tmp_path / "parallel.json"
    main = _bench_main()
    rc = main(["--device", "cpu", "--num-gpus", "2", "--cases", "wan-tiny", "--layouts", "1", "u2", "u4",
               "--steps", "2", "--json", str(out), "--ref-cache", str(tmp_path / "refs")])
    stdout = capsys.readouterr().out
    assert rc == 0
    data = json.loads(out.read_text())
    rows = {r["layout"]: r for r in data["rows"]}
    assert set(rows) == {"1", "u2"} and data["tol"] == 1e-5
    assert rows["u2"]["gpus"] == 2 and rows["u2"]["match"] is True and rows["u2"]["rel_err"] <= 1e-5
    assert rows["u2"]["steps"] == 2 and rows["u2"]["speedup"] > 0 and rows["1"]["speedup"] == 1.0
    assert data["skipped"] == ["wan-tiny u4: needs 4 GPUs, --num-gpus 2"]
    assert "wan-tiny      u2" in stdout
    # a later call reads layout 1 from the cache instead of running it again
    assert main(["--device", "cpu", "--num-gpus", "2", "--cases", "wan-tiny", "--layouts", "1", "--steps", "2",
                 "--json", str(out), "--ref-cache", str(tmp_path / "refs")]) == 0
    cached = json.loads(out.read_text())["rows"][0]
    assert cached["cached"] is True and cached["step_ms"] == rows["1"]["step_ms"]


def test_more_gpus_than_visible_is_refused_in_one_line(capsys):
    have = torch.cuda.device_count()
    assert _bench_main()(["--device", "cuda", "--num-gpus", str(have + 1)]) == 2
    assert capsys.readouterr().err.strip() == (f"bench/parallel.py: error: --num-gpus {have + 1} but {have} GPUs are visible; "
                                   f"allowed: 1..{have} (a machine with {have + 1} GPUs runs this)")


def test_bad_layout_is_one_line(capsys):
    assert _bench_main()(["--device", "cpu", "--num-gpus", "2", "--layouts", "u2x3"]) == 2
    assert capsys.readouterr().err.strip() == ("bench/parallel.py: error: layout 'u2x3' is not allowed; allowed: 1 or "
                                   "[cfg2][uN][rN], e.g. u4, r2, u2r2, cfg2, cfg2u4")
