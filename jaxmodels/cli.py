"""The `jaxmodels` command: parses arguments, then calls `jaxmodels.train` / `jaxmodels.evaluate`.

  jaxmodels train [CONFIG] [KEY=VALUE ...] [--workdir DIR] [--tiny] [--restart]
                  [--distributed auto|off | --coordinator HOST:PORT --num-processes N
                   --process-id I]
  jaxmodels eval CONFIG [KEY=VALUE ...] --workdir DIR [--split test|validation]
  jaxmodels plan CONFIG [KEY=VALUE ...] [--device-memory 16GiB] [--no-compile]
  jaxmodels fit TABLE [--out FIT.json] [--plots DIR] [--bootstrap N]
  jaxmodels sweep SWEEP_FILE [--workdir DIR] [--workers N] [--tiny] [--dry-run]
  jaxmodels coordcheck CONFIG [KEY=VALUE ...] [--widths 64,128,...] [--steps 5] [--out DIR]
                       [--compare]
  jaxmodels list
  jaxmodels show [CONFIG] [KEY=VALUE ...] [--tiny]
  jaxmodels sample --workdir DIR --prompt TEXT [--max-new-tokens N --temperature T --top-k K
                   --top-p P --seed S]

Commands that compile keep compiled programs in ~/.cache/jaxmodels/xla, so a second launch of
a config skips most of its compile (`--no-compile-cache` or JAXMODELS_COMPILE_CACHE=0 turns that
off; see jaxmodels/runtime.py, which also sets measured XLA CPU flags when XLA_FLAGS is unset).
Without CONFIG, `train` runs the embedded default: the classic CNN on MNIST for 10 epochs.
`train` into a workdir that holds checkpoints resumes from the newest (`--restart` starts over).
Problems with the input print one line and exit with status 2 (`--debug` shows the traceback);
a run stopped by SIGTERM/SIGINT saves a checkpoint and exits with 128 + the signal number, and
one stopped by a non-finite loss exits with 3.
"""

import argparse
import json
import os
import pathlib
import sys
import threading

from jaxmodels import config as config_lib
from jaxmodels.errors import RunStopped, UserError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxmodels", description=__doc__.split("\n")[0])
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p, config_required: bool):
        p.add_argument("config", nargs=None if config_required else "?",
                       help="path to an experiment file defining get_config(tiny=False)")
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                       help="dotted overrides, e.g. train.epochs=1 optimizer.learning_rate=3e-4")
        p.add_argument("--tiny", action="store_true", help="the config's tiny variant (seconds)")
        p.add_argument("--debug", action="store_true", help="show Python tracebacks")
        cache_flag(p)

    def cache_flag(p):
        p.add_argument("--no-compile-cache", action="store_true",
                       help="compile from scratch and keep nothing (default: compiled programs "
                            "are kept in ~/.cache/jaxmodels/xla for the next launch; a "
                            "JAX_COMPILATION_CACHE_DIR you set is used either way)")

    train = sub.add_parser("train", help="train a config and write results into --workdir")
    common(train, config_required=False)
    train.add_argument("--workdir", default=None,
                       help="output folder (default: runs/<config name>)")
    train.add_argument("--restart", action="store_true",
                       help="delete the workdir's checkpoints and start over instead of resuming")
    # Multi-host: the same command on every host. Under SLURM (srun), Open MPI, a Cloud TPU
    # slice or a Kubernetes Job the processes find each other by themselves; elsewhere each gets
    # its own --process-id (or the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID
    # environment variables).
    train.add_argument("--distributed", choices=("auto", "off"), default=None,
                       help="auto: join the cluster JAX detects (an error if none); off: one "
                            "process even inside a cluster job (default: join a detected "
                            "cluster of more than one process)")
    train.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                       help="address of process 0, for multi-process training")
    train.add_argument("--num-processes", type=int, default=None)
    train.add_argument("--process-id", type=int, default=None)

    ev = sub.add_parser("eval", help="evaluate the weights a training run saved in --workdir")
    # Without CONFIG: the workdir's own config.json (an imported checkpoint's, `import-hf`).
    common(ev, config_required=False)
    ev.add_argument("--workdir", required=True)
    ev.add_argument("--split", choices=("validation", "test"), default=None,
                    help="default: the config's data.eval_split")
    plan = sub.add_parser("plan", help="per-device memory of a config's training step")
    common(plan, config_required=True)
    plan.add_argument("--device-memory", default=None, metavar="SIZE",
                      help="budget per device (e.g. 16GiB); exceeding it exits with status 2")
    plan.add_argument("--no-compile", action="store_true",
                      help="skip XLA's memory analysis of the compiled step (analytic only)")
    coord = sub.add_parser("coordcheck", help="activation scale per layer against width over "
                                               "the first steps (muP's coordinate check)")
    common(coord, config_required=True)
    coord.add_argument("--widths", default="64,128,256,512,1024",
                       help="comma-separated widths (MLP hidden width, Transformer d_model)")
    coord.add_argument("--steps", type=int, default=5, help="training steps to follow")
    coord.add_argument("--out", default=None,
                       help="folder for coordcheck.png/.json (default: runs/coordcheck_<name>)")
    coord.add_argument("--compare", action="store_true",
                       help="run the standard and the muP parametrization side by side")
    sub.add_parser("fit", add_help=False,
                   help="fit scaling laws to a CSV/JSONL table of params, tokens, loss "
                        "(jaxmodels fit --help)")
    sub.add_parser("prepare", add_help=False,
                   help="tokenise text into a token store for data.dataset=tokens "
                        "(jaxmodels prepare --help)")
    sweep = sub.add_parser("sweep", help="train every run of a sweep file into --workdir/<run>, "
                                         "skipping finished runs")
    sweep.add_argument("sweep_file", help="a Python file defining get_sweep(tiny=False)")
    sweep.add_argument("--workdir", default=None, help="default: runs/<sweep file name>")
    sweep.add_argument("--workers", type=int, default=1,
                       help="runs at once, each in its own process (1: one after another here)")
    sweep.add_argument("--tiny", action="store_true", help="the sweep file's tiny variant")
    sweep.add_argument("--dry-run", action="store_true",
                       help="list the runs and what each workdir holds, then exit")
    sweep.add_argument("--debug", action="store_true", help="show Python tracebacks")
    cache_flag(sweep)
    lst = sub.add_parser("list", help="the registered models, datasets and objectives, and the "
                                       "experiment files here")
    lst.add_argument("--debug", action="store_true", help="show Python tracebacks")
    show = sub.add_parser("show", help="a config resolved, with every key, its type and default")
    common(show, config_required=False)
    sample = sub.add_parser("sample", help="generate text from a trained language model")
    sample.add_argument("--workdir", required=True, help="the workdir of a language-model run")
    sample.add_argument("--prompt", required=True)
    sample.add_argument("--max-new-tokens", type=int, default=200)
    sample.add_argument("--temperature", type=float, default=0.8, help="0 is greedy decoding")
    sample.add_argument("--top-k", type=int, default=0, help="0 keeps every token")
    sample.add_argument("--top-p", type=float, default=1.0)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--debug", action="store_true", help="show Python tracebacks")
    cache_flag(sample)
    imp = sub.add_parser("import-hf", help="a Hugging Face GPT-2/Llama checkpoint folder into a new --workdir")
    imp.add_argument("hf_dir")
    imp.add_argument("--workdir", required=True)
    exp = sub.add_parser("export-hf", help="a transformer_lm --workdir as a Hugging Face checkpoint folder")
    exp.add_argument("out_dir")
    exp.add_argument("--workdir", required=True)
    for p in (imp, exp):
        p.add_argument("--debug", action="store_true", help="show Python tracebacks")
    return parser


def _resolve(args) -> config_lib.Config:
    # A KEY=VALUE given where CONFIG goes is an override of the default config.
    overrides = list(args.overrides)
    if args.config is not None and "=" in args.config and not pathlib.Path(args.config).exists():
        overrides.insert(0, args.config)
        args.config = None
    if args.config is None and args.command == "eval":
        from jaxmodels.generate import read_config

        config = read_config(args.workdir)
    elif args.config is None:
        config = config_lib.default_config(tiny=args.tiny)
    else:
        config = config_lib.load(args.config, tiny=args.tiny)
    return config_lib.apply_overrides(config, overrides)


def _check_workdir_flag(args) -> None:
    # An empty --workdir would silently mean the current folder (or runs/<name>).
    if getattr(args, "workdir", None) is not None and not args.workdir.strip():
        raise UserError(f"--workdir is empty: give the folder to {args.command} in, e.g. --workdir runs/my_run")


def _start_runtime(args) -> None:
    """The compile cache and XLA CPU flags (runtime.py), before this command starts JAX."""
    from jaxmodels import runtime

    if args.no_compile_cache:
        os.environ[runtime.CACHE_ENV] = "0"  # in the environment, so sweep workers see it too
    runtime.configure()


# The commands that compile and run steps: for them the host allocator's gain (a 6-layer GPT
# step 1337 -> 1200 ms) outweighs the second start-up (about 1.1 s: importing jaxmodels again).
_STEP_COMMANDS = ("train", "eval", "sweep", "coordcheck")


def _restart_with_host_allocator(argv: list[str]) -> None:
    """Starts this program again, same pid and arguments, with the host allocator's glibc tunable
    (runtime.py: glibc reads it only at start-up), for the commands that run steps. Once: the new
    process has it set. Only as a program, before JAX starts or anything is printed; never from
    `main(argv)` called in Python."""
    from jaxmodels import runtime

    if not argv or argv[0] not in _STEP_COMMANDS:
        return
    env = runtime.host_allocator_env()
    if env and sys.executable and getattr(sys, "orig_argv", None):
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, **env})
        except OSError:
            pass  # an interpreter that cannot be started again: run on without the tunable


def _exit_even_if_threads_hang(code: int) -> None:
    """Ends the process with `code` even when non-daemon threads outlive an error.

    After a failed async save, orbax's signalling threads can wait forever, and Python's exit
    joins every non-daemon thread, so the process printed its one line and then never ended.
    Give them a moment to finish, then flush and leave without joining them."""
    others = [t for t in threading.enumerate()
              if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    for t in others:
        t.join(timeout=2.0)
    if any(t.is_alive() for t in others):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main(argv: list[str] | None = None) -> int:
    if argv is not None:
        return _main(list(argv))
    # As a program (not called from Python): an error must end the process.
    _restart_with_host_allocator(sys.argv[1:])
    code = _main(sys.argv[1:])
    if code != 0:
        _exit_even_if_threads_hang(code)
    return code


def _main(argv: list[str]) -> int:
    if argv[:1] == ["fit"]:
        # `fit` reads a results table, not a config: it has its own parser (scaling/fit.py).
        from jaxmodels.scaling import fit

        return fit.main(argv[1:])
    if argv[:1] == ["prepare"]:
        # `prepare` writes a token store, not a run: its own parser (data/prepare.py).
        from jaxmodels.data import prepare

        return prepare.main(argv[1:])
    parser = _parser()
    # Overrides may also follow flags (`CONFIG --tiny train.steps=5`), which argparse alone
    # leaves over as unknown arguments.
    args, rest = parser.parse_known_args(argv)
    stray = [r for r in rest if r.startswith("-") or "=" not in r or args.command in ("sample", "sweep", "list")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if not args.debug:
        # orbax's background tracebacks repeat what the loop says in one line (training/quiet.py).
        from jaxmodels.training import quiet

        quiet.install()
    try:
        _check_workdir_flag(args)
        if args.command == "sample":
            _start_runtime(args)
            from jaxmodels.generate import generate_text

            print(generate_text(args.workdir, args.prompt, max_new_tokens=args.max_new_tokens,
                                temperature=args.temperature, top_k=args.top_k,
                                top_p=args.top_p, seed=args.seed))
            return 0
        if args.command in ("import-hf", "export-hf"):
            from jaxmodels.interop import hf_workdir

            if args.command == "import-hf":
                print(f"imported {args.hf_dir} into {hf_workdir.import_to_workdir(args.hf_dir, args.workdir)}")
            else:
                print(f"wrote {hf_workdir.export_from_workdir(args.workdir, args.out_dir)}")
            return 0
        if args.command == "sweep":
            from jaxmodels.orchestration import sweep

            if args.dry_run:
                planned = sweep.plan(args.sweep_file, args.workdir, tiny=args.tiny)
                print(sweep.format_plan(planned))
                return 0
            _start_runtime(args)
            outcomes = sweep.run_sweep(args.sweep_file, args.workdir, tiny=args.tiny,
                                       workers=args.workers)
            return 1 if any(o.status == "failed" for o in outcomes) else 0
        if args.command == "list":
            from jaxmodels import catalog

            print(catalog.list_text())
            return 0
        args.overrides = list(args.overrides) + rest
        config = _resolve(args)
        if args.command == "show":
            from jaxmodels import catalog

            print(catalog.show_text(config))
            return 0
        _start_runtime(args)
        # Imported here so that `jaxmodels --help` and config errors answer before JAX starts.
        from jaxmodels.training import loop

        if args.command == "plan":
            from jaxmodels.training import plan as plan_lib

            budget = plan_lib.parse_bytes(args.device_memory) if args.device_memory else None
            p = plan_lib.plan(config, compile_step=not args.no_compile)
            print(p.describe())
            if budget is not None:
                plan_lib.check_budget(p, budget)
                print(f"fits: {p.total / 2 ** 20:,.1f} MiB of {budget / 2 ** 20:,.1f} MiB per device")
        elif args.command == "coordcheck":
            from jaxmodels.scaling import coordcheck

            coordcheck.run(config, widths=coordcheck.parse_widths(args.widths), steps=args.steps,
                           out_dir=args.out or pathlib.Path("runs") / f"coordcheck_{config.name}",
                           compare=args.compare)
        elif args.command == "train":
            from jaxmodels.parallel import distributed

            distributed.start(args.distributed, args.coordinator, args.num_processes,
                              args.process_id)
            workdir = args.workdir or str(pathlib.Path("runs") / config.name)
            summary = loop.train(config, workdir, restart=args.restart)
            if not distributed.is_main():
                return 0
            shown = ("step", "eval_split", "eval_loss", *(k for k in summary if k.startswith("eval_")
                                                          and k not in ("eval_split", "eval_loss", "eval_examples", "eval_time_s")),
                     "wall_time_s", "examples_per_sec")
            print(json.dumps({k: summary.get(k) for k in dict.fromkeys(shown)}))
        else:
            result = loop.evaluate(config, args.workdir, split=args.split)
            print(json.dumps(result))
    except UserError as e:
        if args.debug:
            raise
        print(f"jaxmodels: error: {e}", file=sys.stderr)
        return 2
    except RunStopped as e:
        if args.debug:
            raise
        print(f"jaxmodels: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("jaxmodels: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - only an allocation failure is turned into one line
        if args.debug or "RESOURCE_EXHAUSTED" not in str(e):
            raise
        first = str(e).strip().splitlines()[0][:300]
        print(f"jaxmodels: error: out of device memory ({first}): lower data.batch_size, raise "
              f"train.microbatches, or shard with parallel.preset=fsdp (jaxmodels plan CONFIG "
              f"estimates the need); checkpoints already saved are intact", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
