"""``ray-sticker bench``: the report (ratios, goals, JSON), option handling, and smoke runs of
each benchmark at tiny sizes that check the table and JSON come out with finite ratios (never
how fast anything is). The zero run also checks the ZeRO memory structure per rank."""

import json
import math

import pytest
import torch

from ray_sticker import cli
from ray_sticker.bench import make_options
from ray_sticker.bench.inputs import bench_config, prepare, sample_batch
from ray_sticker.bench.report import BenchResult, judge
from ray_sticker.config import ConfigError, load_config


def _result() -> BenchResult:
    result = BenchResult("t", "title", [("variant", "variant", ""), ("ratio", "ratio", ".3f"), ("goal", "goal", ""),
                                        ("", "status", "")], machine={"cpus": 2, "cpus_usable": 2, "gpu": None,
                                                                      "torch": "t", "ray": "r", "deepspeed": "d",
                                                                      "python": "p"})
    return result


def test_judge_goals():
    assert judge(0.85, (">=", 0.8)) == "PASS" and judge(0.7, (">=", 0.8)) == "MISS"
    assert judge(1.05, ("<=", 1.1)) == "PASS" and judge(1.2, ("<=", 1.1)) == "MISS"
    assert judge(0.95, ("~", 0.1)) == "PASS" and judge(1.11, ("~", 0.1)) == "MISS" and judge(0.89, ("~", 0.1)) == "MISS"
    assert judge(None, (">=", 0.8)) == "" and judge(float("nan"), (">=", 0.8)) == "" and judge(2.0, None) == ""


def test_table_and_json(tmp_path):
    result = _result()
    result.add((">=", 0.8), variant="fast", ratio=0.9)
    result.add(("<=", 1.1), variant="slow", ratio=float("inf"))
    result.add(("~", 0.1), variant="forced", ratio=None, status="MISS")
    lines = result.table().splitlines()
    header = lines[2]
    assert header.split() == ["variant", "ratio", "goal"]
    rows = {line.split()[0]: line for line in lines[4:7]}
    assert rows["fast"].split()[-1] == "PASS" and rows["forced"].split()[-1] == "MISS"
    assert rows["slow"].split()[-1] != "PASS"
    assert lines[-1].startswith("machine: 2 CPUs (2 usable), GPU none; torch t, ray r, deepspeed d")
    path = tmp_path / "out" / "r.json"
    result.write_json(str(path))
    data = json.loads(path.read_text())
    assert data["bench"] == "t" and data["rows"][1]["ratio"] is None  # inf is not JSON
    assert data["rows"][0]["status"] == "PASS" and data["machine"]["cpus"] == 2


def test_options_from_arguments():
    args = cli.build_parser().parse_args(["bench", "zero", "train.lr=0.1", "--workers", "3", "--stages", "1,3"])
    opts = make_options("zero", {**vars(args), "stages": [1, 3]})
    assert (opts.workers, opts.stages, opts.overrides, opts.config) == (3, (1, 3), ["train.lr=0.1"], "m2sa-tiny")
    step = make_options("step", vars(cli.build_parser().parse_args(["bench", "step"])))
    assert step.stages == (0, 2) and step.compile is False and step.device == "auto"


def test_bench_config_keeps_a_given_data_uri(tmp_path):
    ours = bench_config("m2sa-tiny", rows=123)
    assert ours.data.uri.endswith("bench/datasets/synthetic-classify-123") and ours.data.synthetic_rows == 123
    given = bench_config("m2sa-tiny", [f"data.uri={tmp_path}/d"], rows=123)
    assert given.data.uri == f"{tmp_path}/d"
    assert given.data.synthetic_rows == load_config("m2sa-tiny").data.synthetic_rows  # the user's dataset as is


def test_random_init_builds_full_size_towers_offline():
    cfg = bench_config("m2sa", random_init=True)
    towers = cfg.model.overrides
    assert towers["text"] == {"pretrained": False, "tokenizer": "builtin:tiny"} and towers["vision"] == {"pretrained": None}


def test_batch_larger_than_the_split_is_refused():
    inputs = prepare(bench_config("m2sa-tiny", rows=40))
    with pytest.raises(ConfigError, match="fewer than --batch-size 64"):
        sample_batch(inputs, 64)


def test_zero_needs_two_ranks(capsys):
    assert cli.main(["-q", "bench", "zero", "--workers", "1"]) == 2
    assert "--workers must be at least 2" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_step_on_cuda_without_gpu_is_skipped(capsys):
    assert cli.main(["-q", "bench", "step", "--device", "cuda"]) == 0
    out = capsys.readouterr().out
    assert "note: no GPU: skipped" in out and "ms/step" not in out and "DeepSpeed" not in out


def _rows(path) -> list[dict]:
    data = json.loads(path.read_text())
    assert data["machine"]["cpus"] >= 1 and data["machine"]["torch"] == torch.__version__
    return data["rows"]


def test_step_smoke(tmp_path, capsys):
    path = tmp_path / "step.json"
    threads = torch.get_num_threads()
    assert cli.main(["-q", "bench", "step", "--rows", "200", "--steps", "2", "--repeats", "1", "--warmup", "1",
                     "--device", "cpu", "--threads", str(threads + 1), "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert torch.get_num_threads() == threads and not torch.distributed.is_initialized()
    assert "DeepSpeed ZeRO-0" in out and "DeepSpeed ZeRO-2" in out and "GPU figures: no GPU" in out
    rows = {r["variant"]: r for r in _rows(path)}
    assert set(rows) == {"plain PyTorch", "DeepSpeed ZeRO-0", "DeepSpeed ZeRO-2"}
    for name in ("DeepSpeed ZeRO-0", "DeepSpeed ZeRO-2"):
        assert math.isfinite(rows[name]["ratio"]) and rows[name]["ratio"] > 0 and rows[name]["baseline"] == "plain PyTorch"
    assert rows["DeepSpeed ZeRO-0"]["goal"] == "<= 1.1" and rows["DeepSpeed ZeRO-0"]["status"] in ("PASS", "MISS")
    assert all(r["ms_per_step"] > 0 and r["tflops"] > 0 for r in rows.values())


@pytest.mark.slow
def test_zero_memory_structure(tmp_path):
    path = tmp_path / "zero.json"
    assert cli.main(["-q", "bench", "zero", "--rows", "200", "--json", str(path)]) == 0
    rows = {(r["stage"], r["memory"]): r for r in _rows(path)}
    assert len(rows) == 12 and all(r["ratio"] is None or math.isfinite(r["ratio"]) for r in rows.values())
    full = rows[(0, "parameters")]["measured"]
    assert rows[(3, "parameters")]["measured"] == pytest.approx(full / 2, rel=0.1)
    assert rows[(1, "parameters")]["measured"] == full == rows[(2, "parameters")]["measured"]
    adam = rows[(0, "optimizer states")]["measured"]
    assert adam == pytest.approx(2 * full, rel=0.01)  # fp32 Adam: two moments per parameter
    for stage in (1, 2, 3):
        assert rows[(stage, "optimizer states")]["measured"] == pytest.approx(adam / 2, rel=0.1)
        assert rows[(stage, "optimizer states")]["status"] == "PASS"
    assert rows[(3, "parameters")]["status"] == "PASS" and rows[(0, "fp32 master weights")]["measured"] == 0
    for stage in (1, 2):  # DeepSpeed steps an fp32 copy of each partition, also in fp32 training
        assert rows[(stage, "fp32 master weights")]["measured"] == pytest.approx(full / 2, rel=0.1)


@pytest.mark.ray
@pytest.mark.slow
def test_ingest_smoke(ray_cluster, tmp_path, capsys):
    path = tmp_path / "ingest.json"
    assert cli.main(["-q", "bench", "ingest", "--rows", "400", "--repeats", "1", "--warmup", "0",
                     "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "ceiling = single process x 2" in out and "torch DataLoader (2 workers)" in out
    rows = _rows(path)
    ray_rows = [r for r in rows if r["variant"].startswith("Ray Data")]
    assert len(ray_rows) == 4 and {r["baseline"] for r in ray_rows} == {"ceiling", "DataLoader"}
    assert all(math.isfinite(r["ratio"]) and r["ratio"] > 0 for r in ray_rows)
    assert {r["goal"] for r in ray_rows} == {">= 0.8", ">= 1", ""}


@pytest.mark.ray
def test_scale_smoke(ray_cluster, tmp_path, capsys):
    path = tmp_path / "scale.json"
    assert cli.main(["-q", "bench", "scale", "--stickers", "56,224", "--examples", "400,1600", "--batches", "4", "--repeats", "1",
                     "--batch-size", "8", "--convert-rows", "40", "--json", str(path)]) == 0
    assert "224 stickers" in capsys.readouterr().out
    rows = _rows(path)
    assert [r["size"] for r in rows] == (["56 stickers"] * 3 + ["224 stickers"] * 3 + ["400 rows"] * 2 + ["1,600 rows"] * 2
                                         + ["40 tweets"] * 2)
    assert [r["figure"] for r in rows[-2:]] == ["rows/s, 1 CPU", "rows/s, 2 CPU"]
    judged = [r for r in rows if r["goal"]]
    assert [r["variant"] for r in judged] == ["pool: gather per worker", "pool: worker memory (USS)", "pipeline: steady"]
    assert all(math.isfinite(r["ratio"]) and r["ratio"] > 0 for r in judged)
    assert all(r["value"] > 0 for r in rows)


def test_gpu_check_script_runs_its_cpu_path_without_ray(tmp_path):
    """jobs/gpu_check.sh's run on this machine (device cpu, the tiny config, no compile): with
    Ray not importable, as on the GPU host, it writes the step figures as JSON."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    stub = tmp_path / "no-ray" / "ray"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('ray is not installed on this host')\n")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(stub.parent), "GPU_CHECK_DEVICE": "cpu",
           "GPU_CHECK_CONFIGS": "m2sa-tiny", "GPU_CHECK_ARGS": "--rows 200 --steps 2 --repeats 1 --warmup 1",
           "RAY_STICKER_HOME": str(tmp_path / "home")}
    done = subprocess.run(["bash", "jobs/gpu_check.sh", "run", str(out), str(tmp_path / "no-wheelhouse")], cwd=repo,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads((out / "step-m2sa-tiny.json").read_text())
    rows = {r["variant"]: r for r in data["rows"]}
    assert {"plain PyTorch", "DeepSpeed ZeRO-0", "DeepSpeed ZeRO-2"} <= rows.keys()
    assert all(r["it_per_s"] > 0 and r["samples_per_s"] > 0 for r in rows.values())
    assert data["options"]["device"] == "cpu" and (out / "step-m2sa-tiny.log").stat().st_size > 0
