"""handoff-data: inspect, check, combine and export demonstration stores.

handoff-data info STORE [--json]
handoff-data validate STORE
handoff-data merge SRC [SRC ...] OUT [--force]
handoff-data split STORE TRAIN_OUT VAL_OUT [--val-fraction 0.1] [--seed 0] [--force]
handoff-data delete STORE --episodes 3,5 [--yes]
handoff-data export-video STORE --episode N --out FILE.mp4 [--force]
handoff-data convert --from FORMAT --to FORMAT SRC DST [--force]

STORE is a handoff store (a .zarr folder, a .zarr.zip or an s3:// URL) or, for the commands
that read, a local LeRobot v2.1/v3.0 dataset folder: it is converted once into a cached store
(~/.cache/handoff/lerobot, or $HANDOFF_CACHE) and read from there. Other formats: convert them
with handoff-data convert.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from tqdm import tqdm

from data.convert.lerobot_store import INFERRED_ATTR, SOURCE_ATTR, is_lerobot, open_store
from data.dataset import split_episodes
from data.errors import UserError, cli_main
from data.outputs import check_output, is_url, overlap, publish, remove, staging_dir
from data.store import STEP_DEFAULTS, DemoStore


def _size_on_disk(path: str) -> int | None:
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    if not p.is_dir():
        return None
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def _codec_name(arr) -> str:
    meta = arr.metadata
    if meta.zarr_format == 2:
        return str(meta.compressor.codec_id) if meta.compressor is not None else "none"

    def names(codecs) -> str:
        out = []
        for c in codecs:
            name = type(c).__name__.removesuffix("Codec").lower()
            if hasattr(c, "codecs"):  # sharding: name the inner codecs
                name += f"[{names(c.codecs)}]"
            if hasattr(c, "cname"):
                name += f"-{c.cname.value}"
            out.append(name)
        return "+".join(out)

    return names(meta.codecs)


def cmd_info(args: argparse.Namespace) -> int:
    store = open_store(args.store, progress=not args.json)
    info = store.summary()
    info["size_bytes"] = _size_on_disk(store.path)
    info["keys"] = {
        k: {
            "shape": list(a.shape),
            "dtype": str(a.dtype),
            "chunks": list(a.chunks),
            "codec": _codec_name(a),
        }
        for k, a in sorted(store.data.items())
    }
    sources: dict[str, int] = {}
    tasks: dict[str, int] = {}
    for i in range(store.n_episodes):
        meta = store.episode_meta(i)
        sources[meta.get("source", "unknown")] = sources.get(meta.get("source", "unknown"), 0) + 1
        if "task" in meta:
            tasks[meta["task"]] = tasks.get(meta["task"], 0) + 1
    info["sources"], info["tasks"] = sources, tasks
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    size = info["size_bytes"]
    print(
        f"store      {info['path']}  (zarr format {info['zarr_format']}"
        + (f", {size / 1e6:.1f} MB on disk)" if size is not None else ")")
    )
    if store.attrs.get(SOURCE_ATTR):
        print(f"converted  from the LeRobot dataset {store.attrs[SOURCE_ATTR]} (cached)")
    inferred = "  (inferred from meta/info.json; --embodiment overrides)"
    print(
        f"embodiment {info['embodiment'] or '-'}"
        + (inferred if store.attrs.get(INFERRED_ATTR) else "")
    )
    lengths = info["episode_length"]
    print(
        f"episodes   {info['episodes']}  steps {info['steps']}  length min/mean/max "
        f"{lengths['min']}/{lengths['mean']:.1f}/{lengths['max']}"
    )
    succ = info["success"]
    if succ["known"]:
        print(f"success    {succ['successful']}/{succ['known']} episodes with a known outcome")
    print(f"sources    {sources or '-'}   tasks {tasks or '-'}")
    print(f"{'key':<16} {'shape':<22} {'dtype':<8} {'chunks':<20} codec")
    for k, v in info["keys"].items():
        print(
            f"{k:<16} {str(tuple(v['shape'])):<22} {v['dtype']:<8} "
            f"{str(tuple(v['chunks'])):<20} {v['codec']}"
        )
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """One line per problem (exit 1); notes (an interrupted write's tail) do not fail it."""
    from data.validate import check_store

    store = open_store(args.store, verify=False, progress=not args.quiet)  # check_store: chunks
    problems, notes = check_store(store, progress=not args.quiet)
    for note in notes:
        print(f"note: {note}")
    for p in problems:
        print(p)
    if problems:
        return 1
    print(f"{store.path}: ok ({store.n_episodes} episodes, {store.n_steps} steps)")
    return 0


def _copy_episodes(sources: list[tuple[DemoStore, list[int]]], out: str, desc: str) -> DemoStore:
    """Write the chosen episodes of each source into a new store at ``out`` (checked by
    :func:`_check_outputs`); built in ``.OUT.partial`` and swapped in when complete."""
    first = sources[0][0]
    spec = first.embodiment
    for src, _ in sources[1:]:
        other = src.embodiment
        if (spec is None) != (other is None) or (spec and other and spec.compatible_with(other)):
            why = spec.compatible_with(other) if spec and other else ["one has no embodiment spec"]
            raise UserError(f"{src.path} is incompatible with {first.path}: {'; '.join(why)}")
        # per-step labels / the intervention flag have defaults: a demonstration store and a
        # store of corrected rollouts merge (data.store.STEP_DEFAULTS)
        own = lambda st: sorted(set(st.keys) - set(STEP_DEFAULTS))  # noqa: E731
        if own(src) != own(first):
            raise UserError(f"{src.path} has keys {src.keys}, {first.path} has {first.keys}")
    tmp = staging_dir(Path(out))
    dst = DemoStore.create(tmp, spec)
    total = sum(len(ids) for _, ids in sources)
    try:
        with tqdm(total=total, desc=desc, unit="episode", disable=total < 5) as bar:
            for src, ids in sources:
                for i in ids:
                    dst.append_episode(src.episode(i), **src.episode_meta(i))
                    bar.update()
    except BaseException:
        remove(tmp)
        raise
    publish(tmp, Path(out))  # an existing OUT (--force) is replaced only now, when complete
    return DemoStore.open(out)


def _check_outputs(outs: list[str], inputs: list[str], force: bool) -> None:
    """Every output checked before any store is opened: not an input, not each other."""
    for i, out in enumerate(outs):
        if is_url(out):
            raise UserError(f"{out}: this command writes local stores only; give a local path")
        check_output(out, inputs, force=force)
        for other in outs[i + 1 :]:
            if overlap(out, other):
                raise UserError(f"outputs {out} and {other} overlap; give two separate paths")


def cmd_merge(args: argparse.Namespace) -> int:
    _check_outputs([args.out], args.sources, args.force)
    stores = [open_store(p) for p in args.sources]
    out = _copy_episodes([(s, list(range(s.n_episodes))) for s in stores], args.out, "merge")
    print(f"{out.path}: {out.n_episodes} episodes, {out.n_steps} steps")
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    _check_outputs([args.train_out, args.val_out], [args.store], args.force)
    store = open_store(args.store)
    train, val = split_episodes(store, args.val_fraction, args.seed)
    for path, ids in ((args.train_out, train), (args.val_out, val)):
        out = _copy_episodes([(store, ids)], path, f"split -> {path}")
        print(f"{out.path}: {out.n_episodes} episodes ({ids})")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    if is_lerobot(args.store):
        raise UserError(
            f"{args.store}: a LeRobot dataset is read here, never edited; copy the episodes to "
            f"keep into a store with `handoff-data split` or `merge`, or convert it"
        )
    store = DemoStore.open(args.store, "a")
    try:
        ids = sorted({int(x) for x in args.episodes.split(",") if x.strip()})
    except ValueError:
        raise UserError(f"--episodes {args.episodes!r}: give comma-separated indices") from None
    for i in ids:
        store.episode_slice(i)
    if not args.yes:
        raise UserError(f"this deletes episodes {ids} of {store.path}; add --yes to confirm")
    store.delete_episodes(ids)
    print(f"{store.path}: deleted {len(ids)} episodes, {store.n_episodes} remain")
    return 0


def cmd_export_video(args: argparse.Namespace) -> int:
    from data.video import export_episode_video

    store = open_store(args.store)
    out = export_episode_video(store, args.episode, args.out, force=args.force)
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="handoff-data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    store_help = "store (.zarr folder, .zarr.zip, s3:// URL) or LeRobot v2.1/v3.0 dataset folder"
    s = sub.add_parser("info", help="episodes, keys, shapes, codecs, size, success summary")
    s.add_argument("store", metavar="STORE", help=store_help)
    s.add_argument("--json", action="store_true", help="print machine-readable JSON")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("validate", help="check the store; one line per problem, exit 1 if any")
    s.add_argument("store", metavar="STORE", help=store_help)
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser("merge", help="merge stores with the same embodiment into a new store")
    s.add_argument("sources", nargs="+", metavar="SRC", help=f"input: {store_help}")
    s.add_argument("out", metavar="OUT", help="new store folder (never one of the inputs)")
    s.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    s.set_defaults(func=cmd_merge)

    s = sub.add_parser("split", help="split by episode into a train and a validation store")
    s.add_argument("store", metavar="STORE", help=store_help)
    s.add_argument("train_out", metavar="TRAIN_OUT", help="new store of the training episodes")
    s.add_argument("val_out", metavar="VAL_OUT", help="new store of the validation episodes")
    s.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="share of the episodes for validation, 0-1 (default 0.1)",
    )
    s.add_argument("--seed", type=int, default=0, help="seed of the episode shuffle (default 0)")
    s.add_argument("--force", action="store_true", help="overwrite outputs if they exist")
    s.set_defaults(func=cmd_split)

    s = sub.add_parser("delete", help="delete episodes from a store (rewrites it safely)")
    s.add_argument("store", metavar="STORE", help="a writable local handoff store (.zarr folder)")
    s.add_argument(
        "--episodes", required=True, help="comma-separated episode indices from 0, e.g. 3,5"
    )
    s.add_argument(
        "--yes", action="store_true", help="confirm (without it: only says what it would delete)"
    )
    s.set_defaults(func=cmd_delete)

    s = sub.add_parser("export-video", help="an episode's cameras and signals to an mp4")
    s.add_argument("store", metavar="STORE", help=store_help)
    s.add_argument(
        "--episode", type=int, required=True, help="episode index from 0 (negative: from the end)"
    )
    s.add_argument("--out", required=True, help="output .mp4 path")
    s.add_argument("--force", action="store_true", help="overwrite the output if it exists")
    s.set_defaults(func=cmd_export_video)

    try:
        from data.convert.cli import add_convert_parser
    except ImportError:
        pass
    else:
        add_convert_parser(sub)
    return p


@cli_main
def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
