"""What the command line shows: the library's lines and errors on the console, the libraries'
noise in the log file; one progress line per epoch, made from Ray Train's reports."""

from __future__ import annotations

import json
import logging
import sys
import warnings

import pytest

from ray_sticker.console import setup_logging
from ray_sticker.train.progress import EpochProgress, ReportCallback, format_epoch

EPOCH = {"epoch": 1, "global_step": 114, "train_loss": 0.41234, "val_accuracy": 0.81333, "samples_per_s": 312.4,
         "data_wait_fraction": 0.06, "epoch_s": 12.34}


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    import ray.data  # noqa: F401  (Ray, Ray Data, torch and transformers configure loggers of
    import torch  # noqa: F401      their own on import: setup_logging and init_ray reroute them)
    import transformers  # noqa: F401

    saved = {name: (list(logging.getLogger(name).handlers), logging.getLogger(name).propagate,
                    list(logging.getLogger(name).filters))
             for name in ("ray", "ray.data", "torch", "transformers", "DeepSpeed")}
    logging.captureWarnings(False)  # an earlier in-process CLI call captured them under other test warnings
    yield
    for name, (kept, propagate, filters) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:], logger.propagate, logger.filters[:] = kept, propagate, filters
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    logging.captureWarnings(False)


def _noise() -> None:
    logging.getLogger("ray_sticker.train").info("epoch line")
    logging.getLogger("ray_sticker.train").warning("actionable")
    logging.getLogger("ray.train").info("ray chatter")
    logging.getLogger("ray.data").warning("ray warning nobody can act on")
    logging.getLogger("transformers.modeling_utils").warning("a transformers warning")
    logging.getLogger("torch").error("a real error")
    # DeepSpeed gives its logger a stdout handler of its own and stops propagation.
    ds = logging.getLogger("DeepSpeed")
    own = logging.StreamHandler(sys.stdout)
    ds.addHandler(own)
    ds.propagate = False
    ds.warning("Setting accelerator to CPU")
    ds.removeHandler(own)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("a FutureWarning from a library", FutureWarning)


def test_console_shows_the_library_and_errors_the_log_file_everything(capsys, restore_logging, ray_sticker_home):
    path = setup_logging("train")
    _noise()
    out, err = capsys.readouterr()
    assert out.splitlines() == ["epoch line", "warning: actionable", "error: a real error"]
    assert err == ""
    logged = open(path).read()
    for text in ("epoch line", "ray chatter", "ray warning nobody can act on", "Setting accelerator to CPU",
                 "a FutureWarning from a library", "a transformers warning", "a real error"):
        assert text in logged, text
    assert path.startswith(str(ray_sticker_home / "logs" / "train-"))


def test_verbose_shows_everything_and_quiet_only_warnings(capsys, restore_logging):
    setup_logging("train", verbose=True)
    _noise()
    out = capsys.readouterr().out
    for text in ("epoch line", "ray chatter", "ray warning nobody can act on", "Setting accelerator to CPU",
                 "a FutureWarning from a library"):
        assert text in out, text
    setup_logging("train", quiet=True)  # replaces the handlers of the first call
    _noise()
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == ["warning: actionable", "error: a real error"]


def test_epoch_line():
    assert format_epoch("run", EPOCH, epochs=3) == ("run epoch 2/3 step 114 | loss 0.4123 | val_accuracy 0.8133 | "
                                                    "312 samples/s | data wait 6% | 12.3 s | ETA 12 s")
    assert format_epoch("run", {"epoch": -1, "val_map": 0.5, "epoch_s": 2.0}, epochs=0) == (
        "run evaluation | val_map 0.5000 | 2.0 s")


def test_progress_logs_each_report_of_rank_0_once(caplog):
    caplog.set_level(logging.INFO, logger="ray_sticker.progress")
    with EpochProgress("run", epochs=2, poll_s=0.01) as progress:
        callback = progress.callback()
        callback.after_report(None, [EPOCH, {"epoch": 1}], checkpoint=None)
        callback.after_report(None, [{"no": "epoch"}], checkpoint=None)
        with open(progress.path, "a") as f:  # a line the controller is still writing
            f.write(json.dumps({**EPOCH, "epoch": 0})[:20])
    lines = [r.getMessage() for r in caplog.records if r.name == "ray_sticker.progress"]
    assert lines == [format_epoch("run", EPOCH, epochs=2)]
    assert isinstance(callback, ReportCallback)
