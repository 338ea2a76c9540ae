"""TensorBoard event files in WORKDIR/tensorboard, beside metrics.jsonl (never instead of it).

Scalars: every number of every metrics.jsonl record, at its step (train means at log steps, val_*
where validation ran). At the end of the run: the learning-curve figure (curves.png's), the
config as text and the HParams plugin's session (the config's flattened fields with the summary's
final train_/val_/eval_ numbers), all in the run's own folder, so `tensorboard --logdir SWEEP_DIR`
lists every run of a sweep (DIR/<name>/tensorboard) with its hyper-parameters, comparable.

Only the main process writes. Events are flushed at each log step (the loop's hot path never
touches the writer). A resumed run appends a new event file whose first event purges every step
after the last record kept (`purge_step`), so steps a killed run logged past its checkpoint are
not shown twice. TensorBoard is a view: a failure to write an event (a full disk, a broken
install) prints one warning, turns the event log off and never stops the run or touches its other
files. `train.tensorboard=false` writes nothing. A packed sweep writes each member's events at
its end into WORKDIR/tensorboard/model_K (`write_packed`).
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

FOLDER = "tensorboard"


def _suffix() -> str:
    """A file-name suffix that keeps two writers of the same second apart: tensorboardX names
    files by the second only, and a second writer would truncate the first one's file. Fixed
    width, so names sort in time order as TensorBoard reads them."""
    return f".{time.time_ns():020d}"


def _tensorboardx():
    """tensorboardX, imported without torch: its writer imports torch whenever it is installed
    (only to accept torch tensors, which this module never passes), 1.7 s and a few hundred MB
    per run on a machine with the dev extras. The block lasts only the import; a torch already
    imported (a Hugging Face user) is used as it is."""
    if "tensorboardX" not in sys.modules and "torch" not in sys.modules:
        sys.modules["torch"] = None  # `import torch` raises ImportError while this is there
        try:
            import tensorboardX  # noqa: F401
        finally:
            del sys.modules["torch"]
    import tensorboardX

    return tensorboardX


def _warn(what: str, e: Exception) -> None:
    print(f"warning: TensorBoard {what} failed ({type(e).__name__}: {e}); metrics.jsonl is "
          f"unaffected, the event files are incomplete (train.tensorboard=false turns them off)",
          file=sys.stderr)


def scalars(record: dict) -> dict:
    """The record's numbers by tag (everything but "step"; booleans and lists are left out)."""
    return {k: float(x) for k, x in record.items()
            if k != "step" and isinstance(x, (int, float)) and not isinstance(x, bool)}


class EventLog:
    """Appends each metrics.jsonl record to the run's event files (see the module docstring)."""

    def __init__(self, directory: pathlib.Path, purge_step: int | None = None):
        # Large queue and flush interval: the writer flushes when write() says so (log steps),
        # never on a timer or a queue filling mid-interval.
        self.writer = _tensorboardx().SummaryWriter(str(directory), purge_step=purge_step,
                                                    max_queue=1000, flush_secs=10_000,
                                                    filename_suffix=_suffix())

    def write(self, record: dict) -> None:
        step = int(record["step"])
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class Guarded:
    """An EventLog whose failures are one warning, after which it writes nothing."""

    def __init__(self, log: EventLog | None):
        self.log = log

    def write(self, record: dict) -> None:
        if self.log is None:
            return
        try:
            self.log.write(record)
        except Exception as e:  # noqa: BLE001 - a view must not end the run
            _warn("writing scalars", e)
            self.close()

    def close(self) -> None:
        log, self.log = self.log, None
        if log is not None:
            try:
                log.close()
            except Exception as e:  # noqa: BLE001
                _warn("closing the event file", e)


def open_log(enabled: bool, workdir: pathlib.Path, records: list[dict]) -> Guarded | None:
    """The run's event log (None when turned off or on a process that writes no files)."""
    if not enabled:
        return None
    directory = pathlib.Path(workdir) / FOLDER
    # A folder that already holds events is a resumed run: drop what followed the last record
    # kept (metrics.jsonl was cut at the checkpoint the same way).
    purge = (records[-1]["step"] if records else 0) + 1 if directory.is_dir() else None
    try:
        return Guarded(EventLog(directory, purge))
    except Exception as e:  # noqa: BLE001
        _warn("opening the event file", e)
        return None


def flat_config(d: dict, prefix: str = "") -> dict:
    """The config's fields as dotted names with values the HParams plugin takes (str, number,
    bool; None and lists as their text)."""
    out = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_config(v, name + "."))
        elif isinstance(v, (bool, int, float, str)):
            out[name] = v
        else:
            out[name] = json.dumps(v)
    return out


def final_metrics(summary: dict) -> dict:
    """The summary's final numbers, under "hparam/" so they do not mix with the scalar tags."""
    return {f"hparam/{k}": float(v) for k, v in summary.items()
            if k.startswith(("train_", "val_", "eval_")) and isinstance(v, (int, float))
            and not isinstance(v, bool)}


def _write_final(directory: pathlib.Path, text: str, hparam_dict: dict, summary: dict,
                 png: pathlib.Path | None) -> None:
    SummaryWriter = _tensorboardx().SummaryWriter
    from tensorboardX.summary import hparams

    step = int(summary["step"])
    with SummaryWriter(str(directory), filename_suffix=_suffix()) as w:
        if png is not None and png.is_file():
            from matplotlib import image

            w.add_image("curves", image.imread(png)[..., :3], step, dataformats="HWC")
        # Markdown: a code block keeps the JSON's indentation.
        w.add_text("config", "```\n" + text + "\n```", step)
        metrics = final_metrics(summary)
        for summ in hparams(hparam_dict, metrics):
            w.file_writer.add_summary(summ)
        for tag, value in metrics.items():
            w.add_scalar(tag, value, step)


def write_final(workdir: pathlib.Path, config, summary: dict) -> None:
    """The curves image (WORKDIR/curves.png, as drawn), the config text and the HParams session
    (a short second event file in the same folder). Failures are one warning."""
    try:
        from jaxmodels import config as config_lib

        text = config_lib.to_json(config)
        _write_final(pathlib.Path(workdir) / FOLDER, text, flat_config(json.loads(text)), summary,
                     pathlib.Path(workdir) / "curves.png")
    except Exception as e:  # noqa: BLE001
        _warn("writing the final image, config and hparams", e)


def write_packed(workdir: pathlib.Path, config, records: list[list[dict]], summaries: list[dict]) -> None:
    """A packed sweep's members, one event folder each (WORKDIR/tensorboard/model_K, beside
    metrics_K.jsonl): scalars, config text and an HParams session whose learning_rate, seed and
    init_scale are the member's own. Written once at the end, as the packed run's other files."""
    try:
        from jaxmodels import config as config_lib

        text = config_lib.to_json(config)
        for k, (recs, summary) in enumerate(zip(records, summaries)):
            directory = pathlib.Path(workdir) / FOLDER / f"model_{k}"
            if directory.is_dir():  # a relaunch trains the whole pack again
                import shutil

                shutil.rmtree(directory)
            log = EventLog(directory)
            for r in recs:
                log.write(r)
            log.close()
            hp = {**flat_config(json.loads(text)), "optimizer.learning_rate": summary["learning_rate"],
                  "train.seed": summary["seed"], "init_scale": summary["init_scale"]}
            _write_final(directory, text, hp, summary, None)
    except Exception as e:  # noqa: BLE001
        _warn("writing the packed members' event files", e)
