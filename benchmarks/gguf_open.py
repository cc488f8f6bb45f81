"""Opening GGUF files: gguf's GGUFReader against the package's reader (export/gguf_file.py), and what it saves.

    python benchmarks/gguf_open.py [FILE ...] [--ladder checkpoints/so8t-demo] [--out benchmarks/results/gguf_open.json]

Files (default: the demo's ladder in dist/ and the Gemma base's source file): seconds to open each with
``gguf.GGUFReader`` (the baseline) and with ``GGUFFile``, and whether the two read every key, value type, value
and tensor byte alike (``differences_from_gguf_reader``). Then ``GGUFBackend``'s start on the demo's 4-bit file,
whose metadata read is the open.

``--ladder CHECKPOINT``: the whole export (f16 and every rung of ``export.quantize.QUANT_TYPES``) twice in this
process, first with every open going through GGUFReader (as before this reader), then as it is now; the seconds
of each, and whether the two ladders are byte for byte the same files.

Run it alone on the machine: the ratios are the result, not the absolute seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from so8t_lib.core.io import atomic_write_text  # noqa: E402
from so8t_lib.export import gguf_file  # noqa: E402
from so8t_lib.export.gguf_file import GGUFFile, differences_from_gguf_reader  # noqa: E402

DEMO_FILES = ("f16", "q8_0", "q4_k_m", "q4_k_m_t8", "q4_k_s", "iq4_xs")


def default_files() -> list[Path]:
    files = [ROOT / "dist" / f"so8t-demo-{kind}.gguf" for kind in DEMO_FILES]
    try:
        from so8t_lib.model.pretrained import GGUF_BASES, source_gguf

        files.append(source_gguf(GGUF_BASES["gemma3-270m"]))
    except Exception as exc:  # noqa: BLE001 - the base is optional here
        print(f"the Gemma base's source file is not available ({exc}); skipped", file=sys.stderr)
    return [f for f in files if Path(f).is_file()]


def shown(path: Path) -> str:
    """A path as the results file shows it: relative to the repository, or to the home folder."""
    path = Path(path).resolve()
    for root, prefix in ((ROOT, ""), (Path.home(), "~/")):
        if path.is_relative_to(root):
            return prefix + str(path.relative_to(root))
    return str(path)


def seconds(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def time_open(path: Path) -> dict:
    import gguf

    reader_s = seconds(lambda: gguf.GGUFReader(str(path)))
    file_s = seconds(lambda: GGUFFile(path))
    differences = differences_from_gguf_reader(path)
    return {"file": shown(path), "mib": round(path.stat().st_size / 2**20, 1), "gguf_reader_s": reader_s,
            "gguf_file_s": file_s, "speedup": reader_s / file_s, "same_as_gguf_reader": not differences,
            "differences": differences[:10]}


@contextmanager
def opened_by_gguf_reader():
    """Every open of the export modules through gguf.GGUFReader, as before GGUFFile."""
    import gguf

    saved = gguf_file.open_gguf
    gguf_file.open_gguf = lambda path, want=None: gguf.GGUFReader(str(path))
    patched = []
    for module in ("source_tensors", "mixed", "head_refit"):
        loaded = sys.modules.get(f"so8t_lib.export.{module}")
        if loaded is not None and hasattr(loaded, "open_gguf"):
            patched.append((loaded, loaded.open_gguf))
            loaded.open_gguf = gguf_file.open_gguf
    try:
        yield
    finally:
        gguf_file.open_gguf = saved
        for module, original in patched:
            module.open_gguf = original


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.gguf"))}


def time_ladder(checkpoint: str) -> dict:
    from so8t_lib.export import mixed, source_tensors  # noqa: F401 - loaded so that the patch reaches them
    from so8t_lib.export.quantize import QUANT_TYPES, export

    runs = {}
    with tempfile.TemporaryDirectory(prefix="gguf-open-") as tmp:
        for label in ("gguf_reader", "gguf_file"):
            out = Path(tmp) / label
            with opened_by_gguf_reader() if label == "gguf_reader" else nullcontext():
                start = time.perf_counter()
                export(checkpoint, out, list(QUANT_TYPES), progress=False)
                runs[label] = time.perf_counter() - start
            runs[f"{label}_sha256"] = digests(out)
            print(f"ladder, opens by {label}: {runs[label]:.0f} s", file=sys.stderr)
    same = runs["gguf_reader_sha256"] == runs["gguf_file_sha256"]
    return {"checkpoint": checkpoint, "quants": list(QUANT_TYPES), "gguf_reader_s": runs["gguf_reader"],
            "gguf_file_s": runs["gguf_file"], "speedup": runs["gguf_reader"] / runs["gguf_file"],
            "same_files": same, "files": runs["gguf_file_sha256"]}


def time_backend_start(path: Path) -> dict:
    from so8t_lib.serve.gguf_backend import GGUFBackend

    now = seconds(lambda: GGUFBackend(path))
    with opened_by_gguf_reader():
        before = seconds(lambda: GGUFBackend(path))
    return {"file": shown(path), "gguf_reader_s": before, "gguf_file_s": now, "speedup": before / now}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--ladder", help="a checkpoint or run folder to export twice")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gguf_open.json"))
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    files = args.files or default_files()
    if not files:
        parser.error("no GGUF files: give some, or run make demo first (dist/so8t-demo-*.gguf)")
    opens = []
    for path in files:
        opens.append(time_open(path))
        r = opens[-1]
        print(f"{path.name}: GGUFReader {r['gguf_reader_s']:.2f} s, GGUFFile {r['gguf_file_s']:.2f} s "
              f"({r['speedup']:.0f}x), same: {r['same_as_gguf_reader']}", file=sys.stderr)
    so8t_files = sorted((p for p in files if p.name.startswith("so8t-")), key=lambda p: p.name.endswith("_t8.gguf"))
    payload = {"benchmark": "gguf_open", "cpu_count": os.cpu_count(), "machine": platform.machine(),
               "opens": opens,
               "backend_start": time_backend_start(so8t_files[-1]) if so8t_files else None,
               "ladder": time_ladder(args.ladder) if args.ladder else None}
    out = atomic_write_text(args.out, json.dumps(payload, indent=1))
    print(f"wrote {out}")
    return payload


if __name__ == "__main__":
    main()
