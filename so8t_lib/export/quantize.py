"""Quantizing an SO8T GGUF with llama.cpp, and the whole export: checkpoint -> f16 (f32) -> the ladder.

Quantized files come from ``llama_cpp.llama_model_quantize``, which copies all metadata, so every
rung of the ladder still carries SafetyHeadB. Every file written gets a sha256 sidecar
(``gguf_meta.write_sha256_sidecar``), which the runtime's GGUF backend checks before loading.

After an export, ``out_dir`` holds no rung of the model's name from another model version: such
``<name>-<rung>.gguf`` files (and sidecars) an earlier export left there are removed, each named on stderr, since
beside the new files they passed every check; rungs of the same version stay. Files are staged in a locked ``.export-*`` folder in ``out_dir``,
removed however the export ends (SIGTERM and SIGHUP included); one a killed export left is removed by the next.
They are moved in all or none (``export.placement``), Ctrl-C, SIGTERM and SIGHUP waiting until the moves end;
an ``out_dir`` the export made is removed again when it fails or is stopped and it is still empty. An ``out_dir``
inside the checkpoint or its run folder is refused before anything is loaded (``check_out_outside``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..core.checkpoint import UNVERIFIED_ENV, CheckpointError, has_manifest, resolve_checkpoint
from ..core.schema import BEST_DIR, LAST_DIR, MANIFEST_FILE, MODEL_CONFIG_FILE, RUN_CONFIG_FILE
from ..core.staging import OWNER_FILE, UNLOCKED_STALE_S, LockedFolder, remove_stale  # noqa: F401 (still importable from here)
from ..core.stop_signals import StopSignals
from ..model.so8t import SO8TModel
from .gguf_meta import DEFAULT_THRESHOLD, GGUFError, read_metadata, sidecar_path, write_sha256_sidecar
from .gguf_writer import write_gguf
from .head_refit import check_refittable
from .mixed import MIXED_TYPES, describe, splice, trained_tensor_prefixes
from .placement import check_targets, place, with_sidecars
from .source_tensors import take_source_tensors

# the ladder make demo writes; Q4_K_M_T8 is Q4_K_M with the trained layers at Q8_0 (export.mixed)
QUANT_TYPES = ("Q8_0", "Q4_K_M", "Q4_K_M_T8", "Q4_K_S", "IQ4_XS")
# every rung an export writes (file <name>-<rung>.gguf): the files of a model name an export replaces as a whole
RUNG_LABELS = ("f16", "f32") + tuple(q.lower() for q in QUANT_TYPES)
# staging folders in out_dir: .export- (this version, locked while in use), .mix- (helpers, earlier versions)
STAGING_PREFIXES = (".export-", ".mix-", ".deploy-")  # retrain deploy stages here too
# the checkpoints of a training run; the run folder holding them takes no exported file (check_out_outside)
CHECKPOINT_DIRS = (BEST_DIR, LAST_DIR)


def quantize(source: str | Path, target: str | Path, quant: str) -> Path:
    """Quantize a GGUF with llama.cpp (``llama_model_quantize``); metadata is carried over."""
    try:
        import llama_cpp
    except ImportError:
        raise GGUFError("quantizing needs llama-cpp-python: pip install -e '.[gguf]'") from None
    ftype_name = f"LLAMA_FTYPE_MOSTLY_{quant.upper()}"
    if quant.upper() in MIXED_TYPES:
        raise GGUFError(f"{quant} is a mix of two llama.cpp types: export() builds it (so8t export --quant {quant})")
    if not hasattr(llama_cpp, ftype_name):
        raise GGUFError(f"unknown quant type {quant!r}; supported here: {', '.join(QUANT_TYPES)}")
    try:  # llama.cpp logs every tensor it converts; keep errors only
        from llama_cpp._logger import set_verbose

        set_verbose(False)
    except ImportError:
        pass
    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, ftype_name)
    params.nthread = os.cpu_count() or 1
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), params)
    if code != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        raise GGUFError(f"llama.cpp could not quantize {source} to {quant} (code {code})")
    os.replace(tmp, target)
    write_sha256_sidecar(target)
    return target


def rung_names(names: list[str] | str) -> list[str]:
    """Rung names upper-cased, each once, in the order first given: a rung named twice (``Q4_K_M,q4_k_m``) was
    made twice into one staged file, and the move into out_dir failed half-way, leaving two exports' files mixed."""
    names = names.split(",") if isinstance(names, str) else names  # "Q8_0" is one rung, "Q8_0,F16" two
    return list(dict.fromkeys(name.strip().upper() for name in names if name.strip()))


def base_source_file(config) -> Path | None:
    """The GGUF file the checkpoint's base was converted from, or None for a base that did not come as one."""
    from ..model.pretrained import GGUF_BASES, source_gguf

    return source_gguf(GGUF_BASES[config.preset]) if config.preset in GGUF_BASES else None


def export(checkpoint: str | Path, out_dir: str | Path = "dist", quants: list[str] | None = None,
           f32: bool = False, threshold: float = DEFAULT_THRESHOLD, progress: bool = True,
           source_tensors: bool = True, refit_heads: list[str] | None = None,
           refit: Callable[[dict[str, Path]], object] | None = None) -> list[Path]:
    """Export a checkpoint (or run folder) to ``out_dir/<name>-f16.gguf`` (+ f32 and quantized files).

    On a base that ships as a GGUF file, each quantized file takes the tensors the checkpoint left unchanged
    byte for byte from that file where it holds them in the same type (``export.source_tensors``);
    ``source_tensors=False`` quantizes them again instead, for comparison.

    ``refit_heads`` names rungs whose SafetyHeadB ``refit`` refits (called with rung -> staged file; the CLI passes
    ``eval.quant_refit.refit_rungs``, which this layer may not import). It runs on the staged files before any is
    moved in, and a head it cannot refit is refused before anything is written, so a refit that fails leaves
    out_dir as it was rather than holding the new files without the refit asked for. A checkpoint without its
    manifest is refused, override or not (``_require_manifest``)."""
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    check_out_dir(out_dir)  # found before the model is loaded, not at the first write
    folder = resolve_checkpoint(checkpoint)
    check_out_outside(out_dir, run_folder_of(folder))
    _require_manifest(folder)
    quants, refit_heads = rung_names(quants or []), rung_names(refit_heads or [])
    unknown = [q for q in quants if q not in QUANT_TYPES]
    if unknown:
        raise GGUFError(f"unknown quant type(s) {', '.join(unknown)}; supported: {', '.join(QUANT_TYPES)}")
    if [q for q in refit_heads if q not in quants]:
        raise GGUFError(f"refit {','.join(q for q in refit_heads if q not in quants)}: not among the rungs this "
                        f"export writes ({','.join(quants) or 'none'}); add it to the quant types")
    if refit_heads and refit is None:
        raise ValueError("refit_heads needs refit, the function that refits the staged files' heads")
    # the merge and the gate fold in fp32, whatever dtype the run used, then one rounding to f16
    model = SO8TModel.load(folder, load_in_4bit=False, dtype="float32")
    if refit_heads:
        check_refittable(model.safety_head)  # before anything is written
    name = model.config.name
    plain = [q for q in quants if q not in MIXED_TYPES]
    mixes = [q for q in quants if q in MIXED_TYPES]
    # a mix needs both of its llama.cpp types; those not asked for are built aside and removed
    helpers = list(dict.fromkeys(t for q in mixes for t in MIXED_TYPES[q] if t not in plain))
    jobs = [("f16", None)] + ([("f32", None)] if f32 else []) + [(q, q) for q in plain + helpers + mixes]
    written, made = [], {}
    source = base_source_file(model.config) if source_tensors else None
    # every file is made in a staging folder and moved in only once all of them are: a failed export leaves
    # out_dir as it was, never this export's f16 beside the last one's quantized files (nor a folder it made)
    with StopSignals() as stop, made_folder(out_dir), staging_folder(out_dir) as staging:
        check_targets(out_dir, with_sidecars([out_dir / f"{name}-{label.lower()}.gguf" for label, q in jobs
                                              if q not in helpers]))  # before minutes of quantizing, not after
        aside = staging / "mix"
        aside.mkdir()
        f16_path = staging / f"{name}-f16.gguf"
        for label, quant in tqdm(jobs, desc="gguf", unit="file", disable=not progress):
            target = (aside if quant in helpers else staging) / f"{name}-{label.lower()}.gguf"
            if quant is None:
                written.append(write_gguf(model, target, label, folder, threshold))
                write_sha256_sidecar(written[-1])
            elif quant in MIXED_TYPES:
                low, high = MIXED_TYPES[quant]
                prefixes = tuple(trained_tensor_prefixes(model.config, model.causal_lm.config.num_hidden_layers))
                written.append(splice(made[low], made[high], target, lambda tensor, p=prefixes: tensor.startswith(p),
                                      f"{quant}: " + describe(list(prefixes), low, high)))
            else:
                made[quant] = quantize(f16_path, target, quant)
                if source is not None:
                    kept = take_source_tensors(made[quant], f16_path, source)
                    if progress:
                        tqdm.write(f"{quant}: {kept.summary(source.name)}")
                if quant not in helpers:
                    written.append(made[quant])
        if refit_heads:
            del model  # the refit loads its own fp32 teacher
            refit({q: next(p for p in written if p.name == f"{name}-{q.lower()}.gguf") for q in refit_heads})
        if len({path.name for path in written}) != len(written):  # never begin a move that cannot finish
            raise GGUFError(f"the export staged two files of one name ({', '.join(p.name for p in written)}); "
                            f"nothing was moved into {out_dir}")
        stale = _other_rungs(out_dir, name, written)
        # Ctrl-C, SIGTERM and SIGHUP now wait until out_dir holds this export's files and no others; a rename that
        # fails puts the earlier files back (export.placement)
        with stop.held():
            placed = place(written, out_dir, stale, staging / "previous")
            for path in stale:  # said before a deferred Ctrl-C ends the export
                print(f"removed {path}: an earlier export's file of {name}, which this export did not write (left "
                      "beside the new files it would pass for the current model)", file=sys.stderr)
        return placed


def check_out_dir(out_dir: Path) -> None:
    """Refuse a folder for exported files that is a file, lies under one, or sits where this user may not make or
    write it: found at the first write, it came after minutes of loading (the demo's: of training and scoring)."""
    full = Path(os.path.abspath(out_dir))
    existing = next(folder for folder in (full, *full.parents) if folder.exists() or folder.is_symlink())
    if not existing.is_dir():
        what = "is a file, not a folder" if existing == full else \
            f"is not a folder ({existing} is a file, so no folder can be made under it)"
        raise GGUFError(f"{out_dir} {what}: name a folder for the exported files (one that does not exist is made)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise GGUFError(f"{out_dir}: this user (uid {os.getuid()}) may not write in {existing}, so the exported files "
                        "cannot go there; make it writable or name another folder")


def run_folder_of(folder: Path) -> Path:
    """The training run a checkpoint is the ``best/`` or ``last/`` of (its ``config.yaml`` or the other checkpoint
    beside it), else the checkpoint itself: the folder no export may write into."""
    parent = Path(folder).parent
    if folder.name in CHECKPOINT_DIRS and ((parent / RUN_CONFIG_FILE).is_file()
                                           or any((parent / name).is_dir() for name in CHECKPOINT_DIRS
                                                  if name != folder.name)):
        return parent
    return Path(folder)


def check_out_outside(out_dir: Path, kept: Path) -> None:
    """Refuse an ``out_dir`` that is ``kept`` (a checkpoint, or the run folder holding ``best/`` and ``last/``) or
    lies inside it: every file in a checkpoint must be in its manifest, so a GGUF written there left it unloadable
    and a resume from ``last/`` refused, and ``--retrain`` empties a run folder, exports included."""
    out, home = Path(out_dir).resolve(), Path(kept).resolve()
    if not (out == home or home in out.parents):  # another run's or checkpoint's folder breaks the same way
        home = next((folder for folder in (out, *out.parents) if _holds_a_checkpoint(folder)), None)
        if home is not None:
            raise GGUFError(f"{out_dir} {'is' if out == home else 'lies inside'} {home}, which holds a checkpoint or "
                            "a training run: a file written there is in no manifest, and every later load of it "
                            "would refuse it. Name a folder outside it for the exported files, e.g. dist/")
        return
    if out == home or home in out.parents:
        why = ("a file written there is in no manifest, and every later load of the checkpoint would refuse it"
               if (home / MODEL_CONFIG_FILE).is_file() else "a file written into its best/ or last/ is in no "
               "manifest, and every later load (a resume too) would refuse it; --retrain empties the rest")
        raise GGUFError(f"{out_dir} {'is' if out == home else 'lies inside'} the folder {kept}, which holds the "
                        f"checkpoint it would export: {why}. Name a folder outside it for the exported files, e.g. "
                        "dist/")


def _holds_a_checkpoint(folder: Path) -> bool:
    """A checkpoint (its manifest) or a run folder (its config beside best/ or last/)."""
    return (folder / MANIFEST_FILE).is_file() or (
        (folder / RUN_CONFIG_FILE).is_file() and any((folder / name).is_dir() for name in CHECKPOINT_DIRS))


def _require_manifest(folder: Path) -> None:
    """Refuse a checkpoint without its manifest, even with SO8T_ALLOW_UNVERIFIED_MODEL set: the export would give
    its unchecked files fresh sidecars that verify, and a model_version without the adapter's hash (one for every
    such checkpoint of a name), so the served file lost the override's mark and an older model's rungs stayed."""
    if (folder / MODEL_CONFIG_FILE).is_file() and not has_manifest(folder):
        raise CheckpointError(f"{folder}: no {MANIFEST_FILE}, so its files cannot be checked and an export would vouch "
                              f"for them; refused even with {UNVERIFIED_ENV}=1. Save the checkpoint again, which "
                              f"writes the manifest (with {UNVERIFIED_ENV}=1: SO8TModel.load(old).save(new)), and "
                              "export the new folder")


def _other_rungs(out_dir: Path, name: str, staged: list[Path]) -> list[Path]:
    """The ``<name>-<rung>.gguf`` files (and sidecars, orphaned ones too) in ``out_dir`` the ``staged`` files do
    not replace that hold another model version than they do, or none that can be read: an earlier export's
    q4_k_m beside this one's f16 and q8_0 verified against its own sidecar and was served, compared and listed as
    if it were the current model. A rung of this very model version (exported before, one type at a time) stays."""
    keep = {path.name for path in staged}
    version = read_metadata(staged[0])["so8t.model_version"] if staged else None
    stale = []
    for label in RUNG_LABELS:
        path = out_dir / f"{name}-{label}.gguf"
        if path.name in keep or (path.is_file() and _version_of(path) == version):
            continue
        stale += [part for part in (path, sidecar_path(path)) if part.is_file() or part.is_symlink()]
    return stale


def _version_of(path: Path) -> str | None:
    """A GGUF's so8t.model_version, None for a file that is not a readable SO8T export."""
    try:
        return read_metadata(path)["so8t.model_version"]
    except (GGUFError, OSError, ValueError):
        return None


@contextmanager
def made_folder(out_dir: Path) -> Iterator[None]:
    """Make ``out_dir`` (and its missing parents); an export that fails or is stopped removes the ones it made
    that are still empty: a stopped export into a new --out left that empty folder behind."""
    made = [folder for folder in (out_dir, *out_dir.parents) if not folder.exists()]  # deepest first
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        yield
    except BaseException:
        for folder in made:
            try:
                folder.rmdir()  # only an empty one
            except OSError:
                break
        raise


@contextmanager
def staging_folder(out_dir: Path, prefix: str = STAGING_PREFIXES[0]) -> Iterator[Path]:
    """A staging folder in ``out_dir``, locked (``flock``) while this process runs so that another export's or
    deploy's ``_remove_stale_staging`` leaves it alone, and removed however it ends. Stale ones go first."""
    for folder in _remove_stale_staging(out_dir):
        print(f"removed {folder}: the staging folder of an export or deploy that did not finish (killed or crashed)",
              file=sys.stderr)
    with LockedFolder(out_dir, prefix) as staged:
        yield staged.path


def _remove_stale_staging(out_dir: Path) -> list[Path]:
    """Remove the staging folders in ``out_dir`` no running export holds (``core.staging.remove_stale``: a locked
    one is in use; one with OWNER_FILE whose lock is free belongs to a dead export; one without it goes only once
    idle for UNLOCKED_STALE_S). Returns what went."""
    return [folder for folder, _ in remove_stale(out_dir, STAGING_PREFIXES)]
