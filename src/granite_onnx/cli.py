"""The ``granite-onnx`` command: parse arguments, call the library, print results.

Known user errors (:class:`GraniteOnnxError`) become one line on stderr and exit code 2; torch and
transformers are imported only by the commands that need them, so ``transcribe`` runs without torch.
"""

from __future__ import annotations

import json
import signal
import sys
import tempfile
from pathlib import Path

import click

from . import __version__
from .errors import GraniteOnnxError, Interrupted, from_os_error
from .registry import FIXTURES

# Modules only an optional extra installs (pyproject's [project.optional-dependencies]), by import name.
EXTRAS = {"torch": "export", "transformers": "export", "safetensors": "export"}


class _Group(click.Group):
    """Turns the failures a user can act on into one line and an exit code, never a traceback.

    User mistakes, a full disk and a refused write exit 2; Ctrl-C exits 130 and SIGTERM 143, after
    every staging folder was removed on the way out.
    """

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except GraniteOnnxError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)
        except ModuleNotFoundError as exc:
            extra = EXTRAS.get((exc.name or "").split(".")[0])
            if extra is None:
                raise
            click.echo(
                f"error: `granite-onnx {ctx.invoked_subcommand}` needs {exc.name}, which is not installed: "
                f"pip install 'granite-onnx[{extra}]'",
                err=True,
            )
            ctx.exit(2)
        except OSError as exc:
            user_error = from_os_error(exc)
            if user_error is None:
                raise
            click.echo(f"error: {user_error}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt as exc:
            signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
            click.echo(
                f"interrupted ({signal.Signals(signum).name}): stopped cleanly; outputs of earlier runs "
                "are as they were and nothing half-written was left",
                err=True,
            )
            ctx.exit(128 + signum)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="granite-onnx")
def cli() -> None:
    """Export Granite Speech checkpoints to ONNX, prove them against PyTorch, publish them."""


def _require_export_extra() -> None:
    """Before any work: the commands that run PyTorch need the ``[export]`` extra (a missing module
    becomes one ``error:`` line naming it, in :class:`_Group`)."""
    import torch  # noqa: F401
    import transformers  # noqa: F401


def _progress(message: str) -> None:
    click.echo(message, err=True)


def _up_to_date(subject: str, inputs: str) -> None:
    """What a skipped stage prints (see granite_onnx.stamps): the work is done and nothing it read changed."""
    click.echo(f"{subject} is up to date (same {inputs} as last time); --force redoes it")


def _layout_option(graphs: str):
    """``--layout`` of export and quantise (the choices of granite_onnx.layout.LAYOUTS)."""
    return click.option(
        "--layout",
        type=click.Choice(["per-graph", "shared"]),
        default="per-graph",
        show_default=True,
        help=f"shared: {graphs} keep their common LLM weights once, in one *.shared.onnx_data file.",
    )


def _clips_option(help: str):
    """``--clips DIR`` (default ``clips``) of export, quantise and verify."""
    return click.option(
        "--clips",
        "clips_dir",
        type=click.Path(path_type=Path),
        default=Path("clips"),
        show_default=True,
        help=help,
    )


def _source(model_dir: Path | None, model: str | None, revision: str | None):
    from .checkpoint import resolve_checkpoint

    if (model_dir is None) == (model is None):
        raise click.UsageError(
            "give exactly one of --model-dir DIR or --model ID (--model tiny or trained for the fixtures)"
        )
    return resolve_checkpoint(model_dir, model, revision)


@cli.command()
@click.option("--model-dir", type=click.Path(path_type=Path), help="Local Hugging Face checkpoint folder.")
@click.option(
    "--model", help="Hub model id (needs a network), 'tiny' (random) or 'trained' (shipped fixtures)."
)
@click.option("--revision", help="Hub revision (branch, tag or commit) with --model.")
@click.option(
    "--out-dir", required=True, type=click.Path(path_type=Path), help="Bundle folder to (re)create."
)
@click.option("--graph", "graphs", multiple=True, help="Export only these graphs (repeatable).")
@click.option(
    "--no-check", is_flag=True, help="Skip the gates (onnxruntime vs PyTorch, frontend.onnx vs numpy)."
)
@_clips_option("Audio clips frontend.onnx is checked on (absent: synthetic signals only, with a warning).")
@click.option(
    "--prompt", default=None, help="The default instruction the bundle records (else the model card's)."
)
@click.option("--force", is_flag=True, help="Export again even when the bundle is up to date.")
@_layout_option("prompt_encode and decode_step")
def export(model_dir, model, revision, out_dir, graphs, no_check, clips_dir, prompt, force, layout) -> None:
    """Export frontend, encoder, prompt_encode and decode_step (FP32) plus the processor files."""
    _require_export_extra()
    from .export.stage import ExportOptions, export_bundle
    from .specs import BUNDLE_GRAPHS

    source = _source(model_dir, model, revision)
    options = ExportOptions(
        graphs=tuple(graphs) or BUNDLE_GRAPHS,
        check=not no_check,
        layout=layout,
        frontend_clips=str(clips_dir),
        prompt=prompt,
    )
    result = export_bundle(source, out_dir, options, progress=_progress, force=force)
    if result.skipped:
        _up_to_date(str(out_dir), "checkpoint bytes, options and toolchain")
        return
    for g in result.graphs:
        err = ", ".join(f"{k} {v:.2e}" for k, v in g.max_abs_error.items()) or "not checked"
        click.echo(f"{g.file:24s} {g.nodes:6d} nodes  {g.seconds:7.1f} s  max abs error vs: {err}")
    if result.frontend:
        cases = result.frontend["cases"]
        click.echo(
            f"frontend.onnx vs the numpy front-end: worst {result.frontend['worst']:.2e} over "
            f"{len(cases)} inputs"
            f" (gate {result.frontend['tolerance']:g}; computed in {result.frontend['compute']})"
        )
    if result.shared_layout:
        shared = result.shared_layout
        click.echo(
            f"{shared['shared_file']}: {shared['tensors']} weights, {shared['shared_bytes'] / 2**20:.1f} MiB,"
            " stored once for prompt_encode and decode_step"
        )
    click.echo(f"wrote {out_dir} in {result.seconds:.1f} s (peak RSS {result.peak_rss_mib:.0f} MiB)")


@cli.command()
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights.")
@click.option(
    "--model",
    "name",
    type=click.Choice(sorted(FIXTURES)),
    default="tiny",
    show_default=True,
    help="Which family entry's tiny checkpoint (4.1-2b-plus, or granite_speech with a 3.3-style LoRA).",
)
def fixture(out_dir: Path, seed: int, name: str) -> None:
    """Write a built-in tiny Granite Speech checkpoint as a Hugging Face folder."""
    _require_export_extra()
    from dataclasses import replace

    from .fixtures import fixture_spec, write_tiny_checkpoint
    from .staging import check_output_dir

    check_output_dir(out_dir)
    path = write_tiny_checkpoint(out_dir, replace(fixture_spec(name), seed=seed))
    click.echo(f"wrote {name} checkpoint to {path}")


@cli.command()
@click.option("--bundle", required=True, type=click.Path(path_type=Path), help="Bundle folder from `export`.")
@click.option(
    "--tier",
    "tiers",
    required=True,
    multiple=True,
    help="int8, int8w, int8s, fp16, int4w, int4w-gptq or int8-published (repeatable; 'all': the first four).",
)
@click.option(
    "--exclude", multiple=True, help="Node name or shell pattern to keep in full precision (repeatable)."
)
@_clips_option("Real audio for int8s calibration and fp16 range checks.")
@click.option(
    "--calibration",
    type=click.Choice(["minmax", "percentile", "entropy"]),
    default="minmax",
    show_default=True,
    help="int8s: how activation ranges are taken from the calibration clips.",
)
@click.option("--threads", default=None, type=click.IntRange(1, 256), help="onnxruntime intra-op threads.")
@click.option("--force", is_flag=True, help="Quantise again even when a tier is up to date.")
@_layout_option("the tier's prompt_encode and decode_step")
def quantise(bundle, tiers, exclude, clips_dir, calibration, threads, force, layout) -> None:
    """Write quantised graphs beside the FP32 ones, audit them, and record what changed."""
    from .quantise.stage import QuantiseOptions, quantise_bundle
    from .quantise.tiers import DEFAULT_TIERS, TIERS

    names = list(DEFAULT_TIERS) if "all" in tiers else list(dict.fromkeys(tiers))
    options = QuantiseOptions(
        exclude=tuple(exclude), clips=clips_dir, calibration=calibration, threads=threads, layout=layout
    )
    for name in names:
        if name in TIERS and TIERS[name].warning:
            click.echo(f"warning: tier {name}: {TIERS[name].warning}", err=True)
        report = quantise_bundle(bundle, name, options, progress=_progress, force=force)
        if report.skipped:
            _up_to_date(f"tier {name}", "FP32 graphs, clips, options and toolchain")
            continue
        for g in report.graphs:
            counts = ", ".join(f"{k} {v}" for k, v in g.quantised.items()) or "nothing"
            click.echo(
                f"{g.file:26s} {g.bytes_before / 2**20:9.2f} MiB -> {g.bytes_after / 2**20:9.2f} MiB "
                f"({g.ratio:.2f}x)  {g.seconds:6.1f} s  quantised: {counts}"
            )
        click.echo(f"tier {name}: verified, {report.seconds:.1f} s, peak RSS {report.peak_rss_mib:.0f} MiB")


@cli.command()
@click.option("--bundle", required=True, type=click.Path(path_type=Path), help="Bundle folder from `export`.")
@click.option("--tier", default=None, help="Quantised tier (e.g. int8); FP32 when omitted.")
@click.option("--max-new-tokens", default=200, show_default=True, type=click.IntRange(1, 4096))
@click.option("--threads", default=None, type=click.IntRange(1, 256), help="onnxruntime intra-op threads.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file instead of text.")
@click.option(
    "--frontend",
    type=click.Choice(["numpy", "onnx"]),
    default="numpy",
    show_default=True,
    help="Features by the numpy recipe, or by the bundle's frontend.onnx (what other runtimes run).",
)
@click.option("--prompt", default=None, help="Instruction instead of the bundle's default.")
@click.option(
    "--task",
    default="asr",
    show_default=True,
    help="asr, or a task of the model's card (4.1-2b-plus: speakers, timestamps); parsed into --json.",
)
@click.option(
    "--kv-cache",
    type=click.Choice(["static", "concat"]),
    default="static",
    show_default=True,
    help="static: decode_step writes into a preallocated cache in place; concat: the graph as exported.",
)
@click.argument("audio", nargs=-1, required=True, type=click.Path(path_type=Path))
def transcribe(
    bundle, tier, max_new_tokens, threads, as_json, frontend, prompt, task, kv_cache, audio
) -> None:
    """Transcribe AUDIO files (wav/flac, any rate, stereo downmixed) with onnxruntime alone."""
    from .runtime.bundle import bundle_graph_names
    from .runtime.cpu import current_cpu
    from .runtime.pipeline import SpeechPipeline
    from .runtime.saturation import saturation_warning
    from .runtime.tasks import parse_task_output
    from .specs import CTC

    warning = saturation_warning(bundle, tier, current_cpu().saturating_u8s8)
    if bundle_graph_names(bundle) == (CTC,):
        if warning:
            click.echo(f"warning: {warning}", err=True)
        _transcribe_ctc(bundle, tier, threads, as_json, frontend, prompt, task, audio)
        return
    pipeline = SpeechPipeline(bundle, tier=tier, threads=threads, frontend=frontend, kv_cache=kv_cache)
    if warning:
        click.echo(f"warning: {warning}", err=True)
    if prompt is not None and task != "asr":
        raise click.UsageError("give --prompt or --task, not both")
    instruction = prompt if prompt is not None else pipeline.prompts.style.task_instruction(task)
    for path in audio:
        result = pipeline.transcribe_file(path, max_new_tokens, instruction)
        if as_json:
            click.echo(json.dumps({**_record(path, result, task), **parse_task_output(task, result.text)}))
        else:
            click.echo(f"{path}: {result.text}")


def _record(path: Path, result, task: str) -> dict:
    """One file's ``transcribe --json`` line."""
    return {
        "file": str(path),
        "text": result.text,
        "token_ids": list(result.token_ids),
        "audio_seconds": round(result.audio_seconds, 3),
        "seconds": round(result.seconds, 3),
        "task": task,
    }


def _transcribe_ctc(bundle, tier, threads, as_json, frontend, prompt, task, audio) -> None:
    """transcribe for a CTC bundle: no prompt, no task, greedy CTC decoding."""
    from .runtime.ctc import CtcPipeline

    if prompt is not None or task != "asr":
        raise GraniteOnnxError(
            f"{bundle} is a CTC bundle: it takes no --prompt and no --task, it transcribes"
        )
    pipeline = CtcPipeline(bundle, tier=tier, threads=threads, frontend=frontend)
    for path in audio:
        result = pipeline.transcribe_file(path)
        if as_json:
            click.echo(json.dumps(_record(path, result, "asr")))
        else:
            click.echo(f"{path}: {result.text}")


@cli.command()
@click.option("--bundle", required=True, type=click.Path(path_type=Path), help="Bundle folder from `export`.")
@click.option(
    "--model-dir", type=click.Path(path_type=Path), help="The checkpoint the bundle was exported from."
)
@click.option("--model", help="Hub id, or 'tiny' / 'trained' for the built-in fixtures.")
@click.option("--revision", help="Hub revision with --model.")
@click.option(
    "--clips",
    "clips_dirs",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Folder of audio clips (manifest.json gives order and human references); repeat for several "
    "clip sets, each summarised on its own. Give --clips, --dataset or both.",
)
@click.option(
    "--dataset",
    default=None,
    help="A Hugging Face audio dataset as a clip set: a Hub id (needs a network), a save_to_disk folder or "
    "an audiofolder. Its transcripts are the references.",
)
@click.option("--split", default=None, help="--dataset split (default: test, else the first).")
@click.option("--config", "dataset_config", default=None, help="--dataset configuration name.")
@click.option("--limit", default=None, type=click.IntRange(1), help="--dataset: its first N rows only.")
@click.option("--text-column", default=None, help="--dataset transcript column (default: text, ...).")
@click.option("--audio-column", default=None, help="--dataset audio column (default: audio).")
@click.option("--reference", default=None, help="Clip for the numeric block (default: the manifest's first).")
@click.option("--tier", "tiers", multiple=True, help="Tiers to check (fp32, int8, ...); default: all found.")
@click.option(
    "--wer-limit",
    default=0.02,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Corpus WER vs PyTorch allowed for quantised tiers.",
)
@click.option(
    "--wer-delta-limit",
    default=None,
    type=click.FloatRange(-1, 1),
    help="Also gate each quantised tier on the upper end of the 95 % bootstrap interval of its WER vs the "
    "references minus PyTorch's (e.g. 0.01).",
)
@click.option("--max-new-tokens", default=200, show_default=True, type=click.IntRange(1, 4096))
@click.option(
    "--jobs",
    default=1,
    show_default=True,
    type=click.IntRange(1, 1024),
    help="Clips in parallel: local processes, or Ray actors with --executor ray.",
)
@click.option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default="local",
    show_default=True,
    help="local: --jobs processes here; ray: --jobs Ray actors (granite-onnx[cluster]), retried if one dies.",
)
@click.option(
    "--address", default=None, help="With --executor ray: join this cluster (default: a local one)."
)
@click.option(
    "--worker-cpus",
    default=1,
    show_default=True,
    type=click.IntRange(1, 1024),
    help="With --executor ray: CPUs each worker reserves (a machine's cores: one worker per machine).",
)
@click.option(
    "--quantised-gate",
    type=click.Choice(["auto", "wer", "near-tie"]),
    default="auto",
    show_default=True,
    help="Gate quantised tiers on corpus WER, or (random weights) on divergences only at near-ties; "
    "auto picks near-tie for the built-in tiny model only.",
)
@click.option(
    "--gate-set", default=None, help="Compute the gates on this --clips folder only (default: all)."
)
@click.option("--ungated", multiple=True, help="A quantised tier to measure and report without a gate.")
@click.option("--force", is_flag=True, help="Run again even when the report is up to date.")
def parity(
    bundle,
    model_dir,
    model,
    revision,
    clips_dirs,
    dataset,
    split,
    dataset_config,
    limit,
    text_column,
    audio_column,
    reference,
    tiers,
    wer_limit,
    wer_delta_limit,
    max_new_tokens,
    jobs,
    executor,
    address,
    worker_cpus,
    quantised_gate,
    gate_set,
    ungated,
    force,
) -> None:
    """Measure the bundle against transformers' PyTorch model; exit 1 when a gate fails."""
    _require_export_extra()
    from tqdm import tqdm

    from .parity.harness import ParityOptions
    from .parity.resume import parity_stage
    from .parity.tables import summary_lines

    source = _source(model_dir, model, revision)
    options = ParityOptions(
        tuple(tiers),
        reference,
        max_new_tokens,
        wer_limit,
        jobs,
        quantised_gate=quantised_gate,
        gate_set=gate_set,
        ungated=tuple(ungated),
        wer_delta_limit=wer_delta_limit,
        executor=executor,
        address=address,
        worker_cpus=worker_cpus,
    )
    bars: list[tqdm] = []  # made on the first tick: an up-to-date report shows no empty bar

    def tick(done: int, total: int, what: str) -> None:
        if not bars:
            bars.append(tqdm(desc="parity", unit="clip", file=sys.stderr, leave=False))
        bars[0].total = total
        bars[0].n = done
        bars[0].set_postfix_str(what)

    if not clips_dirs and dataset is None:
        raise GraniteOnnxError("parity needs clips: give --clips FOLDER, --dataset NAME_OR_PATH, or both")
    if address is not None and executor != "ray":
        raise GraniteOnnxError("--address goes with --executor ray")
    if dataset is None and any(
        v is not None for v in (split, dataset_config, limit, text_column, audio_column)
    ):
        raise GraniteOnnxError(
            "--split, --config, --limit, --text-column and --audio-column go with --dataset"
        )
    with tempfile.TemporaryDirectory(prefix="granite-dataset-") as scratch:
        folders = list(clips_dirs)
        if dataset is not None:
            from .parity.datasets import DatasetSpec, set_folder_name, write_clips

            spec = DatasetSpec(dataset, split, dataset_config, limit, text_column, audio_column)
            written = write_clips(spec, Path(scratch) / set_folder_name(spec))
            click.echo(f"dataset {dataset} ({written.split}): {written.written} clips", err=True)
            for failure in written.failed:
                click.echo(
                    f"  skipped row {failure['row']} ({failure['name']}): {failure['reason']}", err=True
                )
            if written.failed:
                click.echo(
                    f"  {len(written.failed)} row(s) failed to decode; the report lists them", err=True
                )
            folders.append(written.folder)
        try:
            result = parity_stage(bundle, source, folders, options, progress=tick, force=force)
        finally:
            for bar in bars:
                bar.close()
    if result.skipped:
        _up_to_date(f"parity of {bundle}", "graphs, checkpoint, clips, options and toolchain")
    else:
        for line in summary_lines(result.report):
            click.echo(line)
    if not result.passed:
        failed = "; ".join(f"{g['name']}: {g['detail']}" for g in result.failed_gates())
        click.echo(f"parity gate failed: {failed}", err=True)
        sys.exit(1)


@cli.command()
@click.option("--bundle", required=True, type=click.Path(path_type=Path), help="Bundle folder.")
def metadata(bundle: Path) -> None:
    """Write granite_export_metadata.json and the model card README.md from the stage outputs."""
    from .metadata.stage import write_metadata

    path = write_metadata(bundle)
    click.echo(f"wrote {path} and {path.parent / 'README.md'}")


@cli.command("bundle")
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(path_type=Path), help="Bundle folder.")
@click.option(
    "--dest", required=True, type=click.Path(path_type=Path), help="Publishable folder to (re)create."
)
@click.option("--force", is_flag=True, help="Assemble even though a parity gate failed (the card says so).")
def bundle_cmd(bundle_dir: Path, dest: Path, force: bool) -> None:
    """Assemble the publishable folder: graphs, processor files, metadata, card, LICENSE, SHA256SUMS."""
    from .publish.assemble import assemble

    result = assemble(bundle_dir, dest, force=force)
    if result.forced:
        click.echo(f"warning: assembled despite failed gates: {', '.join(result.failed_gates)}", err=True)
    click.echo(f"assembled {len(result.files)} files in {result.dest}")


@cli.command()
@click.option("--bundle", "folder", required=True, type=click.Path(path_type=Path), help="Assembled folder.")
@click.option("--repo-id", required=True, help="OWNER/NAME of the Hub model repo.")
@click.option("--revision", default=None, help="Branch to commit to (created if needed).")
@click.option("--private", is_flag=True, help="Create the repo as private.")
@click.option("--dry-run", is_flag=True, help="Print the operations and sizes; touch no network.")
def publish(folder: Path, repo_id: str, revision: str | None, private: bool, dry_run: bool) -> None:
    """Upload an assembled bundle to the Hub in one commit (token from HF_TOKEN or the login cache)."""
    from .publish.hub import describe
    from .publish.hub import publish as run_publish

    result = run_publish(folder, repo_id, revision=revision, private=private, dry_run=dry_run)
    for line in describe(result):
        click.echo(line)


@cli.command()
@click.option("--bundle", type=click.Path(path_type=Path), help="Local bundle folder.")
@click.option("--repo-id", help="Download a published bundle from the Hub (needs a network) and check it.")
@click.option("--revision", default=None, help="Hub revision with --repo-id.")
@click.option("--model-dir", type=click.Path(path_type=Path), help="Also run parity against this checkpoint.")
@click.option("--model", help="Hub id, 'tiny' or 'trained' for parity.")
@click.option(
    "--clips", "clips_dir", type=click.Path(path_type=Path), default=Path("clips"), show_default=True
)
def verify(bundle, repo_id, revision, model_dir, model, clips_dir) -> None:
    """Portability audit (and checksums, and optionally parity); exit 1 on any failure."""
    from .verify import download_bundle, format_checks, kernel_warnings, verify_bundle

    if (bundle is None) == (repo_id is None):
        raise click.UsageError("give exactly one of --bundle DIR or --repo-id OWNER/NAME")
    folder = download_bundle(repo_id, revision) if repo_id is not None else bundle
    checks = verify_bundle(folder, require_manifest=repo_id is not None)
    for line in format_checks(checks):
        click.echo(line)
    for warning in kernel_warnings(folder):
        click.echo(f"warning: {warning}", err=True)
    failed = [c for c in checks if not c.ok]
    if model_dir is not None or model is not None:
        from .parity.harness import ParityOptions, run_parity
        from .parity.tables import summary_lines

        report = run_parity(folder, _source(model_dir, model, None), clips_dir, ParityOptions())
        for line in summary_lines(report):
            click.echo(line)
        failed += report.failed_gates()
    if failed:
        click.echo(f"verify failed: {len(failed)} check(s)", err=True)
        sys.exit(1)


@cli.command()
@click.option(
    "--bundle", required=True, type=click.Path(path_type=Path), help="Bundle after export and parity."
)
@click.option(
    "--expected", required=True, type=click.Path(path_type=Path), help="Committed expectation (JSON)."
)
@click.option("--update", is_flag=True, help="Write the bundle's snapshot as the new expectation.")
def expect(bundle: Path, expected: Path, update: bool) -> None:
    """Compare artefact sha256s and parity results with a committed expectation; exit 1 on a difference."""
    from .publish.expectation import differences, snapshot, toolchain_changes
    from .staging import write_text_atomic
    from .userfiles import is_file, read_json_object

    actual = snapshot(bundle)
    if update:
        write_text_atomic(expected, json.dumps(actual, indent=2, ensure_ascii=False) + "\n")
        click.echo(f"wrote {expected}")
        return
    if not is_file(expected):
        raise GraniteOnnxError(f"{expected} does not exist: create it with --update")
    want = read_json_object(expected, GraniteOnnxError, "create it again with --update")
    for line in toolchain_changes(actual, want):
        click.echo(f"note: {line}")
    diff = differences(actual, want)
    for line in diff:
        click.echo(line)
    if diff:
        click.echo(f"{bundle} differs from {expected} in {len(diff)} place(s)", err=True)
        sys.exit(1)
    click.echo(f"{bundle} matches {expected}: {len(actual['sha256'])} artefacts, parity results identical")


@cli.command("node-check")
@click.option("--bundle", required=True, type=click.Path(path_type=Path), help="Bundle after metadata.")
@click.option(
    "--clips",
    "clips_dirs",
    multiple=True,
    type=click.Path(path_type=Path),
    default=(Path("clips"),),
    show_default=True,
    help="Folder of clips (repeatable).",
)
@click.option("--tier", "tiers", multiple=True, help="Only these tiers (fp32 for FP32; default: every tier).")
@click.option("--max-new-tokens", default=200, show_default=True, type=click.IntRange(1, 4096))
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write the runs as JSON.")
def node_check(bundle, clips_dirs, tiers, max_new_tokens, json_path) -> None:
    """Run examples/node/transcribe.mjs beside the Python runtime; exit 1 unless every run agrees token for
    token (prompt ids, token ids and text)."""
    from .parity.clips import load_clip_sets
    from .parity.node import compare
    from .staging import write_text_atomic

    chosen = [None if t == "fp32" else t for t in tiers] or None
    result = compare(bundle, load_clip_sets(list(clips_dirs)), chosen, max_new_tokens, progress=click.echo)
    if json_path:
        write_text_atomic(json_path, json.dumps(result.to_json(), indent=2) + "\n")
    agreeing = sum(r.agrees for r in result.runs)
    tiers_seen = sorted({r.tier for r in result.runs})
    click.echo(
        f"node {result.node} vs Python on {bundle}: {agreeing} of {len(result.runs)} runs agree token for "
        "token "
        f"({len(tiers_seen)} tiers: {', '.join(tiers_seen)})"
    )
    if not result.agrees:
        sys.exit(1)


def _terminate(signum, frame) -> None:
    """SIGTERM (a job scheduler, ``kill``) unwinds like Ctrl-C: staging folders are removed and the
    previous bundle stays as it was, instead of the process dying with its temporary files in place."""
    raise Interrupted(signum)


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    cli(prog_name="granite-onnx")


if __name__ == "__main__":
    sys.exit(main())
