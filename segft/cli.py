"""The ``segft`` command line: argument parsing -> config dataclass -> call. No logic of its own.

Every leaf field of a command's config dataclass becomes a flag ``--field-name`` with the dataclass default, so
flags, ``MLproject`` parameters and dataclass fields share one set of names and one set of defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import typing
from pathlib import Path
from typing import Any, Sequence

from segft.config import (BaseConfig, FinetuneConfig, PredictConfig, PruneConfig, ReportConfig, StudyConfig,
                          TrainConfig, TuneConfig)
from segft.data.readers import DataError
from segft.mlproject import field_default, leaf_fields
from segft.presets import preset_train_config


def _leaf_fields(cls: type) -> list[tuple[dataclasses.Field, type, str]]:
    """(field, resolved type, description) of every leaf field (``segft.config.leaf_fields``) with its docs."""
    docs: dict[str, str] = {}
    for holder in _dataclasses_within(cls):
        docs.update(attribute_docs(holder))
    return [(item, kind, docs.get(item.name, "")) for item, kind in leaf_fields(cls)]


def _dataclasses_within(cls: type) -> list[type]:
    hints = typing.get_type_hints(cls)
    nested = [hints[f.name] for f in dataclasses.fields(cls) if dataclasses.is_dataclass(hints[f.name])]
    return [cls, *(inner for kind in nested for inner in _dataclasses_within(kind))]


def attribute_docs(cls: type) -> dict[str, str]:
    """``{name: description}`` from the ``Attributes:`` section of a Google-style class docstring."""
    docs: dict[str, str] = {}
    lines = (cls.__doc__ or "").split("Attributes:", 1)[-1].splitlines() if "Attributes:" in (cls.__doc__ or "") else []
    name = None
    for line in lines:
        head, sep, text = line.strip().partition(": ")
        if sep and head.isidentifier() and line.startswith(" " * 8) and not line.startswith(" " * 12):
            name, docs[head] = head, text
        elif name and line.strip():
            docs[name] += " " + line.strip()
    return docs


def _int_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _str_tuple(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _parser_for(kind: type):
    if typing.get_origin(kind) is tuple:
        return _int_tuple if typing.get_args(kind)[0] is int else _str_tuple
    return _bool if kind is bool else kind


def _or_unset(parse):
    """Wrap a flag parser so that an empty value means "not given" (``-P lr=``)."""
    return lambda text: None if text == "" else parse(text)


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, from_preset: type | None = None) -> None:
    """Add one ``--field-name`` flag per leaf field of dataclass ``cls``, with its default and docs.

    Fields of the nested dataclass ``from_preset`` get no default of their own: left out (or empty), they take
    the value of the chosen preset. They are also accepted spelled with underscores (``--batch_size``), as
    ``mlflow run`` passes the parameters an entry point does not declare (``segft.mlproject``).
    """
    preset_fields = {field.name for field, _, _ in _leaf_fields(from_preset)} if from_preset else set()
    for field, kind, doc in _leaf_fields(cls):
        default = field_default(field)
        parse = _parser_for(kind)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        if field.name in preset_fields:
            parse, default, note = _or_unset(parse), None, "(default: from the preset)"
        else:
            note = f"(default: {shown!r})"
        switch = {"nargs": "?", "const": True} if kind is bool else {}  # a bare --overlays means true
        parser.add_argument(
            f"--{field.name.replace('_', '-')}", dest=field.name, type=parse, default=default, help=f"{doc} {note}",
            **switch,
        )
        if field.name in preset_fields and "_" in field.name:
            parser.add_argument(f"--{field.name}", dest=field.name, type=parse, default=argparse.SUPPRESS,
                                help=argparse.SUPPRESS, **switch)


def config_from_args(cls: type, args: argparse.Namespace) -> Any:
    """Build dataclass ``cls`` (nested ones included) from parsed flags."""
    hints = typing.get_type_hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        kind = hints[field.name]
        values[field.name] = config_from_args(kind, args) if dataclasses.is_dataclass(kind) else getattr(args, field.name)
    return cls(**values)


def _run_base(args: argparse.Namespace) -> None:
    from segft.runs import run_base

    _print_result(run_base(config_from_args(BaseConfig, args)))


def _run_finetune(args: argparse.Namespace) -> None:
    from segft.runs import run_finetune

    _print_result(run_finetune(config_from_args(FinetuneConfig, args)))


def _run_study(args: argparse.Namespace) -> None:
    from analysis.report import build_report, text_summary
    from segft.study import run_study

    config = study_config_from_args(args)
    result = run_study(config)
    report = build_report(ReportConfig(study_id=result.study_id, report_dir=config.report_dir))
    if result.reused:
        print(f"reused {len(result.reused)} finished runs of study {result.study_id}: {', '.join(result.reused)}")
    print(text_summary(report))
    if result.champion:
        print(f"recommended model (the champion rule, on the pool and Dataset 1 training images): {result.champion}, alias "
              f"models:/{config.registry.finetuned_model_name}@champion")


def _run_tune(args: argparse.Namespace) -> None:
    from segft.tuning import run_tuning

    result = run_tuning(config_from_args(TuneConfig, args))
    states = ", ".join(f"{count} {state.lower()}" for state, count in result.states.items())
    print(f"study {result.study_name} in {result.storage} (MLflow run {result.parent_run_id}): {states}")
    if result.best_lr is not None:
        print(f"best lr = {result.best_lr:.3g}: validation Dice {result.best_value:.4f}")
    if result.applied:
        _print_result(result.applied)


def _run_report(args: argparse.Namespace) -> None:
    from analysis.report import build_report, text_summary

    print(text_summary(build_report(config_from_args(ReportConfig, args))))


def _run_prune(args: argparse.Namespace) -> None:
    from segft.tracking.prune import prune_models

    config = config_from_args(PruneConfig, args)
    result = prune_models(config.experiment, config.dry_run)
    verb = "would delete" if result.dry_run else "deleted"
    for model in result.deleted:
        print(f"{verb} {model.name} ({model.size / 1e6:.1f} MB; {', '.join(model.versions) or 'not registered'}; "
              f"run {model.run_id})")
    for model in result.kept:
        print(f"kept {model.name} ({', '.join(model.versions) or 'not registered'}): {model.kept_because}")
    print(f"{verb} {len(result.deleted)} logged model(s), {result.freed / 1e6:.1f} MB; kept {len(result.kept)}"
          + ("; a dry run: nothing was deleted" if result.dry_run else "; runs, metrics and reports are untouched"))


def study_config_from_args(args: argparse.Namespace) -> StudyConfig:
    """The study's config: the preset's training settings with the explicitly given ones on top."""
    given = {field.name: getattr(args, field.name) for field, _, _ in _leaf_fields(TrainConfig)}
    train = preset_train_config(args.preset, {name: value for name, value in given.items() if value is not None})
    hints = typing.get_type_hints(StudyConfig)
    values = {field.name: config_from_args(hints[field.name], args) if dataclasses.is_dataclass(hints[field.name])
              else getattr(args, field.name) for field in dataclasses.fields(StudyConfig) if field.name != "train"}
    return StudyConfig(train=train, **values)


def _print_result(result) -> None:
    scores = ", ".join(f"{name} = {value:.4f}" for name, value in result.test_metrics.items())
    print(f"run {result.run_id}: {scores}; model {result.model_uri}")


def _run_predict(args: argparse.Namespace) -> None:
    from segft.predict import predict

    config = config_from_args(PredictConfig, args)
    written = predict(config)
    masks = sum(len(p.masks) for p in written)
    print(f"segmented {len(written)} file(s) with {config.model}: {masks} mask file(s) in {config.output}")


def _write_synthetic(args: argparse.Namespace) -> None:
    from segft.data.synthetic import make_microtube_study, write_study

    out = write_study(make_microtube_study(seed=args.seed), args.out)
    print(f"wrote the synthetic microtube study to {out} (use it with --data-dir {out})")


def _list_encoders(args: argparse.Namespace) -> None:
    from segft.models.model import encoder_names

    names = [name for name in encoder_names(include_timm=args.timm) if args.filter.lower() in name.lower()]
    print("\n".join(names))


def _write_mlproject(args: argparse.Namespace) -> None:
    from segft.mlproject import render

    Path(args.out).write_text(render())
    print(f"wrote {args.out} from segft/config.py")


class ArgumentError(SystemExit):
    """A command line argparse refused: exit status 2, its one line already printed (``line``)."""

    def __init__(self, line: str):
        super().__init__(2)
        self.line = line


class _Parser(argparse.ArgumentParser):
    """argparse, with every error in one line (``segft: error: <what>; see 'segft base --help'``) and exit status 2,
    not the usage text above it; unrecognized arguments are reported by the command they were given to."""

    def parse_args(self, args=None, namespace=None):
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            self.error(f"unrecognized arguments: {' '.join(extra)}", getattr(parsed, "command", None))
        return parsed

    def error(self, message: str, command: str | None = None) -> typing.NoReturn:
        where = f"{self.prog} {command}" if command else self.prog
        from segft.urls import redact

        message, see = redact(" ".join(message.split())), f"; see '{where} --help'"  # a mistyped --storage URL
        room = MAX_ERROR_LENGTH - len(see)
        line = f"segft: error: {message if len(message) <= room else message[: room - 4] + ' ...'}{see}"
        print(line, file=sys.stderr)
        raise ArgumentError(line)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="segft", description="Generalization and few-image fine-tuning of segmentation models, tracked in MLflow."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    for name, config_class, handler, help_text in (
        ("base", BaseConfig, _run_base, "train the base model on Dataset 1, evaluate on both test sets"),
        ("finetune", FinetuneConfig, _run_finetune, "fine-tune a base model with n_images Dataset 2 images"),
        ("study", StudyConfig, _run_study, "the whole study: base model, every arm, size and repeat, report"),
        ("analyze", ReportConfig, _run_report, "read a study back from the tracking server and build its report"),
        ("tune", TuneConfig, _run_tune, "tune the learning rate with Optuna on validation images, in MLflow"),
        ("predict", PredictConfig, _run_predict, "segment image files with a registered model, write mask files"),
        ("prune", PruneConfig, _run_prune, "delete the logged models no alias, champion or unfinished study needs"),
    ):
        command = commands.add_parser(name, help=help_text, aliases=["report"] if name == "analyze" else [])
        add_config_arguments(command, config_class, from_preset=TrainConfig if name == "study" else None)
        command.set_defaults(handler=handler)

    data = commands.add_parser("data", help="built-in data").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="write the synthetic microtube study as image files")
    synth.add_argument("--out", type=Path, required=True, help="folder to create (must not exist or be empty)")
    synth.add_argument("--seed", type=int, default=0, help="generator seed (default: 0, the built-in data)")
    synth.set_defaults(handler=_write_synthetic)
    encoders = commands.add_parser("encoders", help="list the encoder names --encoder takes")
    encoders.add_argument("--timm", action="store_true", help="also list timm's encoders (tu-<name>, over 1,000)")
    encoders.add_argument("--filter", default="", help="only names containing this text (any case)")
    encoders.set_defaults(handler=_list_encoders)
    mlproject = commands.add_parser("mlproject", help="write the MLproject file from the config dataclasses")
    mlproject.add_argument("--out", type=Path, default=Path("MLproject"), help="file to write (default: MLproject)")
    mlproject.set_defaults(handler=_write_mlproject)
    return parser


#: Longest error line ``main`` prints; longer messages are cut (the cause stays on the exception chain).
MAX_ERROR_LENGTH = 300
#: Commands that read or write a tracking store (their ``MLFLOW_TRACKING_URI`` is checked first).
TRACKING_COMMANDS = ("base", "finetune", "study", "analyze", "report", "tune", "predict", "prune")


def one_line(error: BaseException, secrets: Sequence[str] = ()) -> str:
    """An error as one line of at most ``MAX_ERROR_LENGTH`` characters, secrets in URLs hidden, and ``secrets``
    (``segft.urls.url_secrets``) wherever they appear. A ``KeyError`` (whose ``str`` is its key, quoted) shows its
    argument."""
    from segft.urls import redact

    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    text = redact(" ".join(text.split()), secrets) or type(error).__name__
    return text if len(text) <= MAX_ERROR_LENGTH else text[: MAX_ERROR_LENGTH - 4] + " ..."


def _user_errors() -> tuple[type[BaseException], ...]:
    """What a user's input, files, settings or environment cause; anything else is a bug and keeps its traceback."""
    mlflow_exceptions = sys.modules.get("mlflow.exceptions")  # not imported: nothing raised one (MLflow takes seconds)
    return DataError, ValueError, KeyError, OSError, *([mlflow_exceptions.MlflowException] if mlflow_exceptions else [])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``segft`` console script.

    Exit status: 0 done; 2 a user error (bad input, file, setting or missing dependency, unknown flag), printed as
    one line; 130 (SIGINT) or 143 (SIGTERM): interrupted (base, finetune, study, tune: their active MLflow runs
    ended KILLED; the other commands start no run). Under ``mlflow run``
    a refused command line also deletes the run ``mlflow run`` opened for it (``discard_project_run``).
    """
    try:
        args = build_parser().parse_args(argv)
    except ArgumentError as refused:
        if os.environ.get("MLFLOW_RUN_ID"):
            from segft.tracking.projects import discard_project_run

            discard_project_run(refused.line)
        return 2
    received = []

    def interrupt(signum: int, frame) -> None:
        """SIGTERM (``timeout``, job schedulers) ends a command as Ctrl-C does: the active runs end KILLED."""
        received.append(signal.Signals(signum))
        raise KeyboardInterrupt(received[-1].name)

    previous = {number: signal.signal(number, interrupt) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        if args.command in TRACKING_COMMANDS:
            from segft.urls import check_tracking_server, require_driver

            require_driver(os.environ.get("MLFLOW_TRACKING_URI", ""), "MLFLOW_TRACKING_URI")
            check_tracking_server(os.environ.get("MLFLOW_TRACKING_URI", ""), "MLFLOW_TRACKING_URI")
            check_tracking_server(getattr(args, "tracking_uri", ""), "tracking_uri")  # analyze's own
        args.handler(args)
    except KeyboardInterrupt:
        number = received[0] if received else signal.SIGINT
        # only what is true of this command: the ones that start MLflow runs end them KILLED; predict, analyze,
        # prune and the rest start none
        run_commands = ("base", "finetune", "study", "tune")
        ended = "; its MLflow runs ended KILLED" if args.command in run_commands else ""
        print(f"segft: interrupted by {number.name}{ended}", file=sys.stderr)
        return 128 + number
    except _user_errors() as error:
        from segft.urls import url_secrets  # what it was given: a library may quote a piece of it outside a URL

        given = url_secrets(getattr(args, "storage", ""), getattr(args, "tracking_uri", ""),
                            os.environ.get("MLFLOW_TRACKING_URI", ""))
        print(f"segft: error: {one_line(error, given)}", file=sys.stderr)
        return 2
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    return 0
