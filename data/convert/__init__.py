"""Convert demonstrations between handoff stores, LeRobot, robomimic HDF5 and rosbag2.

    from data.convert import convert
    report = convert("demos.hdf5", "demos.zarr", "robomimic", "handoff")

Formats are found by name in :data:`FORMATS` (``data.registry.Registry``): each converter is
one module of this package that registers its :class:`Format`, with its options declared on it
(:class:`Option`: name, type, default, help), and is found by :func:`load_formats`; the options
become ``handoff-data convert`` flags (data/convert/cli.py). Conversion streams one episode at
a time (see data/convert/base.py): a new handoff output is appended episode by episode (an
interrupted run leaves a valid store of the finished ones); other outputs, and any output that
replaces an existing DST (``--force``), are built in ``.DST.partial`` and swapped in only when
complete (data/outputs.py), so DST is never deleted before its replacement is whole, and a DST
that is, holds or lies inside SRC is refused before anything is read.

What a round trip handoff -> X -> handoff keeps (the report's ``not_carried`` / ``notes``
say it per run):

=========  ======================  ==============================  ======================
format     low-dim, action         cameras                         metadata
=========  ======================  ==============================  ======================
lerobot    bit-exact               H.264 >= 35 dB PSNR (crf 18),   episode meta, spec,
                                   or exact with ``images=png``    store attrs
robomimic  bit-exact (timestamps   exact (uint8 datasets)          episode meta, spec,
           regenerated at the                                      env_args; not store
           control rate)                                           attrs
rosbag2    bit-exact               exact (rgb8 Image)              episode meta, spec;
                                                                   not store attrs
=========  ======================  ==============================  ======================

Importing from a foreign source: robomimic float64 arrays become float32 (handoff's low-dim
dtype) and ``model_file`` XML is not kept; LeRobot string columns are dropped; a rosbag is
resampled at the control rate with data/align.py (the recorder's rule).

Adding a format is one module, ``data/convert/<name>.py`` (helpers ``<name>_<part>.py``)::

    class MyReader: ...                      # base.Reader: __len__, episodes(), close()
    class MyWriter: ...                      # base.Writer: write(episode), close(), abort()
    FORMATS.register("mine")(Format("mine", "what it is", MyReader, MyWriter,
        write_options=(Option("fps", "frame rate (default: the spec's)", float),)))

Its options are then ``--fps`` on the command line, listed under ``handoff-data convert
--help``, checked by name, and passed to the reader/writer as keywords (declared default when
not given).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from data.convert.base import FORMATS, Episode, Format, Option, Report, load_formats
from data.embodiment import Embodiment, load_embodiment
from data.errors import UserError
from data.outputs import check_output

__all__ = ["FORMATS", "Episode", "Format", "Option", "Report", "convert"]

load_formats()


def convert(
    src: str | Path,
    dst: str | Path,
    from_format: str,
    to_format: str,
    *,
    force: bool = False,
    embodiment: str | Path | Embodiment | None = None,
    progress: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Convert SRC (in ``from_format``) to DST (in ``to_format``); returns the report dict.

    ``embodiment`` (a spec name, YAML path or Embodiment) overrides the one the source carries;
    reading a rosbag2 needs one. ``options`` are format options (e.g. ``fps``, ``video_codec``,
    ``gap_s``); each must be declared by one of the two formats (UserError naming it and the
    valid ones otherwise); a declared option not given takes its declared default.
    """
    fin, fout = FORMATS.get(from_format), FORMATS.get(to_format)
    if fin.open_reader is None:
        readable = [n for n in FORMATS if FORMATS.get(n).open_reader]
        raise UserError(f"format {from_format!r} cannot be read; readable formats: {readable}")
    if fout.open_writer is None:
        writable = [n for n in FORMATS if FORMATS.get(n).open_writer]
        raise UserError(f"format {to_format!r} cannot be written; writable formats: {writable}")
    known = {o.name for o in (*fin.read_options, *fout.write_options)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise UserError(
            f"option(s) {unknown} are not understood by {from_format} -> {to_format}; "
            f"valid: {sorted(known) or 'none'}"
        )
    src, dst = _location(src, fin, "source"), _location(dst, fout, "destination")
    if isinstance(src, Path) and not src.exists():
        raise UserError(f"{src}: no such file or directory")
    # before anything is read or written: DST must not be, hold or sit in SRC, and be writable
    check_output(dst, [src], force=force, what="destination")
    spec = load_embodiment(embodiment) if isinstance(embodiment, str | Path) else embodiment

    report = Report(str(src), str(dst), from_format, to_format)
    t0 = time.perf_counter()
    reader = fin.open_reader(src, report, spec, **_side(options, fin.read_options))
    try:
        writer = fout.open_writer(
            dst,
            report,
            reader,
            spec or reader.embodiment,
            force=force,
            **_side(options, fout.write_options),
        )
        try:
            _pump(reader, writer, report, progress)
            writer.close()
        except UserError:  # refused: nothing is written
            writer.abort(keep_done=False)
            raise
        except BaseException:  # interrupted or crashed: what is done stays, where valid
            writer.abort(keep_done=True)
            raise
    finally:
        reader.close()
    out = report.as_dict()
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


def _location(path: str | Path, fmt: Format, what: str) -> str | Path:
    """A local Path, or the URL string of a store on object storage (handoff stores only)."""
    s = str(path)
    if "://" in s and not s.startswith("file://"):
        if not fmt.urls:
            raise UserError(f"{s}: a {fmt.name} {what} must be a local path (URLs: handoff only)")
        return s
    return Path(s.removeprefix("file://"))


def _pump(reader: Any, writer: Any, report: Report, progress: bool) -> None:
    from tqdm import tqdm

    keys: set[str] = set()
    with tqdm(total=len(reader), disable=not progress, unit="episode", desc="convert") as bar:
        for episode in reader.episodes():
            writer.write(episode)
            report.episodes += 1
            report.frames += len(episode)
            keys |= set(episode.steps)
            bar.update(1)
    report.keys = sorted(keys)


def _side(options: dict[str, Any], declared: tuple[Option, ...]) -> dict[str, Any]:
    """The keyword options of one side: each declared option, given or its default."""
    return {o.name: options.get(o.name, o.default) for o in declared}
