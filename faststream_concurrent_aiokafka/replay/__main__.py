"""``python -m faststream_concurrent_aiokafka.replay``: copy dead letters back (see ``--help``).

A dry run prints one line per dead letter it would copy; a run draws a progress bar on
stderr when that is a terminal, and ends with one summary line. Exit status 0 on success,
1 when the replay failed (the message says why), 2 for wrong arguments and for a run whose
dead letters go to several topics without --to or --all-targets (the message names them).
"""

import argparse
import asyncio
import sys
from collections.abc import Sequence

from faststream_concurrent_aiokafka.core.dead_letters import ReplayFilter
from faststream_concurrent_aiokafka.replay.connection import (
    PASSWORD_VARIABLE,
    SASL_MECHANISMS,
    SECURITY_PROTOCOLS,
    KafkaConnection,
)
from faststream_concurrent_aiokafka.replay.copier import (
    DEFAULT_MAX_REPLAYS,
    Copy,
    ReplayReport,
    TargetsNotConfirmed,
    replay_dead_letters,
)

BAR_WIDTH = 30


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m faststream_concurrent_aiokafka.replay",
        description=(
            "Copy records of a dead-letter topic back to the topic each came from (or --to), "
            "with the original key, value and headers. The replay's consumer group remembers "
            "how far it got: run it again after an interruption and it copies nothing twice."
        ),
    )
    p.add_argument("--bootstrap", required=True, help="HOST:PORT[,HOST:PORT...] of the brokers")
    p.add_argument("--from", dest="source", required=True, help="the dead-letter topic")
    p.add_argument("--to", dest="target", help="copy here instead of each original topic")
    p.add_argument(
        "--all-targets",
        action="store_true",
        help="copy each dead letter to the topic its header names even when they name several "
        "(without it, or --to, such a run copies nothing and exits 2 listing them)",
    )
    p.add_argument(
        "--max-replays",
        type=int,
        default=DEFAULT_MAX_REPLAYS,
        metavar="N",
        help="leave out dead letters of copies that went through N replays already and failed "
        f"again ({DEFAULT_MAX_REPLAYS}: a dead letter is replayed once; raise it to retry "
        "repeated failures)",
    )
    p.add_argument("--group", help="the replay's consumer group (default: <from>.replay)")
    p.add_argument("--dry-run", action="store_true", help="list what would be copied, copy nothing")
    chosen = p.add_argument_group("filters (original record; repeat an option for several)")
    chosen.add_argument("--exception-type", action="append", default=[], metavar="NAME")
    chosen.add_argument("--original-topic", action="append", default=[], metavar="TOPIC")
    chosen.add_argument("--partition", action="append", default=[], type=int, metavar="N")
    chosen.add_argument("--offset-from", type=int, metavar="OFFSET", help="inclusive")
    chosen.add_argument("--offset-to", type=int, metavar="OFFSET", help="inclusive")
    p.add_argument(
        "--drop-history",
        action="store_true",
        help="drop the dead-letter headers instead of keeping them as x-dead-letter-history-*",
    )
    p.add_argument("--batch-size", type=int, default=100, help="records per commit (100)")
    security = p.add_argument_group("security")
    security.add_argument("--security-protocol", choices=SECURITY_PROTOCOLS, default="PLAINTEXT")
    security.add_argument("--sasl-mechanism", choices=SASL_MECHANISMS)
    security.add_argument("--sasl-username")
    password = security.add_mutually_exclusive_group()
    password.add_argument(
        "--sasl-password",
        help="shows in the process list (ps) of this machine: prefer --sasl-password-file or "
        f"the {PASSWORD_VARIABLE} environment variable",
    )
    password.add_argument(
        "--sasl-password-file",
        metavar="PATH",
        help="read the SASL password from this file (its first line)",
    )
    security.add_argument("--ssl-cafile", help="CA bundle for SSL (default: the system's)")
    security.add_argument("--ssl-certfile", help="this client's certificate, for mTLS")
    security.add_argument("--ssl-keyfile", help="the key of --ssl-certfile (if not in it)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    if args.batch_size < 1:
        cli.error(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.max_replays < 1:
        cli.error(f"--max-replays must be at least 1, got {args.max_replays}")
    if args.all_targets and args.target is not None:
        cli.error("--all-targets and --to exclude each other: --to sends every copy to one topic")
    try:
        connection = connection_from(args)
        only = ReplayFilter(
            exception_types=frozenset(args.exception_type),
            topics=frozenset(args.original_topic),
            partitions=frozenset(args.partition),
            min_offset=args.offset_from,
            max_offset=args.offset_to,
        )
    except ValueError as exc:  # exits 2, as argparse does for wrong arguments
        cli.error(str(exc))
    try:
        report = asyncio.run(
            replay_dead_letters(
                args.source,
                connection,
                target=args.target,
                group=args.group,
                dry_run=args.dry_run,
                only=only,
                keep_history=not args.drop_history,
                batch_size=args.batch_size,
                progress=draw_bar if sys.stderr.isatty() else None,
                on_copy=print_copy if args.dry_run else None,
                max_replays=args.max_replays,
                all_targets=args.all_targets,
            )
        )
    except TargetsNotConfirmed as exc:
        print(f"replay refused, nothing copied: {exc}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        print(f"replay failed: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # aiokafka's errors (authentication, unknown topic, timeouts)
        print(f"replay failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(summary(report))
    return 0


def connection_from(args: argparse.Namespace) -> KafkaConnection:
    """The servers and security the command line names (ValueError if they do not fit)."""
    password = args.sasl_password
    if args.sasl_password_file is not None:
        password = read_password(args.sasl_password_file)
    return KafkaConnection(
        bootstrap_servers=args.bootstrap,
        security_protocol=args.security_protocol,
        sasl_mechanism=args.sasl_mechanism,
        sasl_username=args.sasl_username,
        sasl_password=password,
        ssl_cafile=args.ssl_cafile,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
    )


def read_password(path: str) -> str:
    """The first line of the file at ``path`` (ValueError naming the file if unreadable)."""
    try:
        with open(path, encoding="utf-8") as file:
            return file.readline().rstrip("\r\n")
    except OSError as exc:
        msg = f"cannot read --sasl-password-file {path!r}: {exc.strerror or exc}"
        raise ValueError(msg) from exc


def print_copy(copy: Copy) -> None:
    letter = copy.letter
    origin = "-" if letter is None else f"{letter.topic}[{letter.partition}]@{letter.offset}"
    error = "-" if letter is None else letter.exception_type or "-"
    target = f"{copy.topic}[{copy.target_partition}]"
    print(f"{copy.partition}@{copy.offset}\t{origin}\t{error}\t-> {target}")


def draw_bar(report: ReplayReport) -> None:
    done = min(report.read, report.total)
    share = done / report.total if report.total else 1.0
    filled = int(share * BAR_WIDTH)
    print(
        f"\r[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{report.total} read, "
        f"{report.copied} copied",
        end="",
        file=sys.stderr,
        flush=True,
    )


def summary(report: ReplayReport) -> str:
    verb = "would copy" if report.dry_run else "copied"
    targets = ", ".join(f"{topic} {count}" for topic, count in sorted(report.targets.items()))
    return (
        f"group {report.group}: read {report.read} of {report.total}, {verb} {report.copied}"
        f"{f' ({targets})' if targets else ''}, "
        f"filtered out {report.filtered_out}, not dead letters {report.unrecognised}, "
        f"already copied by an interrupted run {report.already_copied}, "
        f"failed again after --max-replays replays {report.replayed_too_often}, "
        f"without their values (not copied) {report.without_value}"
    )


if __name__ == "__main__":
    sys.exit(main())
