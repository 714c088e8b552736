"""The ``granite-onnx`` command: parse arguments, call the library, print results.

Known user errors (:class:`GraniteOnnxError`) become one line on stderr and exit code 2; torch and
transformers are imported only by the commands that need them, so ``transcribe`` runs without torch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from . import __version__
from .errors import GraniteOnnxError


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except GraniteOnnxError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="granite-onnx")
def cli() -> None:
    """Export Granite Speech checkpoints to ONNX, prove them against PyTorch, publish them."""


def _source(model_dir: Path | None, model: str | None, revision: str | None):
    from .checkpoint import resolve_checkpoint

    if (model_dir is None) == (model is None):
        raise click.UsageError(
            "give exactly one of --model-dir DIR or --model ID (use --model tiny for the fixture)"
        )
    return resolve_checkpoint(model_dir, model, revision)


@cli.command()
@click.option("--model-dir", type=click.Path(path_type=Path), help="Local Hugging Face checkpoint folder.")
@click.option("--model", help="Hub model id (needs a network), or 'tiny' for the built-in fixture.")
@click.option("--revision", help="Hub revision (branch, tag or commit) with --model.")
@click.option(
    "--out-dir", required=True, type=click.Path(path_type=Path), help="Bundle folder to (re)create."
)
@click.option("--graph", "graphs", multiple=True, help="Export only these graphs (repeatable).")
@click.option("--no-check", is_flag=True, help="Skip the onnxruntime-vs-PyTorch gate on each graph.")
def export(model_dir, model, revision, out_dir, graphs, no_check) -> None:
    """Export encoder, prompt_encode and decode_step (FP32) plus the processor files."""
    from .export.stage import ExportOptions, export_bundle
    from .specs import GRAPH_NAMES

    source = _source(model_dir, model, revision)
    options = ExportOptions(graphs=tuple(graphs) or GRAPH_NAMES, check=not no_check)
    result = export_bundle(source, out_dir, options, progress=lambda msg: click.echo(msg, err=True))
    for g in result.graphs:
        err = ", ".join(f"{k} {v:.2e}" for k, v in g.max_abs_error.items()) or "not checked"
        click.echo(f"{g.file:24s} {g.nodes:6d} nodes  {g.seconds:7.1f} s  max |onnx-torch|: {err}")
    click.echo(f"wrote {out_dir} in {result.seconds:.1f} s (peak RSS {result.peak_rss_mib:.0f} MiB)")


@cli.command()
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--seed", default=0, show_default=True, help="Seed of the random weights.")
def fixture(out_dir: Path, seed: int) -> None:
    """Write the built-in tiny Granite Speech checkpoint as a Hugging Face folder."""
    from .fixtures import TinySpec, write_tiny_checkpoint
    from .staging import check_output_dir

    check_output_dir(out_dir)
    path = write_tiny_checkpoint(out_dir, TinySpec(seed=seed))
    click.echo(f"wrote tiny checkpoint to {path}")


@cli.command()
@click.option("--bundle", required=True, type=click.Path(path_type=Path), help="Bundle folder from `export`.")
@click.option("--tier", default=None, help="Quantised tier (e.g. int8); FP32 when omitted.")
@click.option("--max-new-tokens", default=200, show_default=True, type=click.IntRange(1, 4096))
@click.option("--threads", default=None, type=click.IntRange(1, 256), help="onnxruntime intra-op threads.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file instead of text.")
@click.argument("audio", nargs=-1, required=True, type=click.Path(path_type=Path))
def transcribe(bundle, tier, max_new_tokens, threads, as_json, audio) -> None:
    """Transcribe AUDIO files (wav/flac, any rate, stereo downmixed) with onnxruntime alone."""
    from .runtime.pipeline import SpeechPipeline

    pipeline = SpeechPipeline(bundle, tier=tier, threads=threads)
    for path in audio:
        result = pipeline.transcribe_file(path, max_new_tokens)
        if as_json:
            record = {
                "file": str(path),
                "text": result.text,
                "token_ids": list(result.token_ids),
                "audio_seconds": round(result.audio_seconds, 3),
                "seconds": round(result.seconds, 3),
            }
            click.echo(json.dumps(record))
        else:
            click.echo(f"{path}: {result.text}")


def main() -> None:
    cli(prog_name="granite-onnx")


if __name__ == "__main__":
    sys.exit(main())
