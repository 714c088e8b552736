"""Plain-text tables of a parity report for the terminal (the model card renders its own)."""

from __future__ import annotations

from .report import ParityReport


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def kernel_lines(report: ParityReport) -> list[str]:
    """Where the figures were measured, and which tiers' figures hold on every CPU."""
    cpu = report.cpu
    if not cpu:
        return []
    flags = " ".join(cpu.get("features", [])) or "-"
    lines = [
        f"measured on: {cpu.get('model')} ({cpu.get('machine')}; {flags}; integer kernel: "
        f"{cpu.get('integer_kernel')})"
    ]
    for tier, verdict in report.kernel_saturation.items():
        if verdict.get("can_saturate"):
            lines.append(
                f"  WARNING {tier}: {verdict['sites_that_can_saturate']} of {verdict['integer_sites']} "
                "integer products can saturate on x86 CPUs without VNNI: figures hold for this CPU's kernels"
            )
        elif verdict.get("integer_sites"):
            lines.append(f"  {tier}: no integer product can saturate on any CPU (weights |w0|+|w1| <= 128)")
    return lines


def summary_lines(report: ParityReport) -> list[str]:
    lines = ["numeric block (reference clip):"]
    lines.append(
        f"  {'tier':8s} {'enc max':>9s} {'enc p99':>9s} {'logit max':>9s} {'argmax':>6s} "
        f"{'kv max':>9s} {'tf mism.':>9s} transcript"
    )
    for b in report.single_clip:
        if b.error:
            lines.append(f"  {b.tier:8s} ERROR {b.error}")
            continue
        lines.append(
            f"  {b.tier:8s} {b.encoder.max_abs:9.2e} {b.encoder.p99_abs:9.2e} {b.prompt_logits_max_abs:9.2e} "
            f"{'ok' if b.prompt_argmax_agrees else 'DIFF':>6s} "
            f"{'-' if b.kv_max_abs is None else f'{b.kv_max_abs:9.2e}':>9s} "
            f"{f'{b.decode.mismatches}/{b.decode.steps}':>9s} {'match' if b.transcript_match else 'DIFFERS'}"
        )
    lines.append("transcripts (WER vs PyTorch / vs human reference, edit distance vs fp32):")
    for c in report.multi_clip_parity:
        lines.append(
            f"  {c.clip} ({c.duration_s:.1f} s) pytorch vs reference {_pct(c.pytorch_wer_vs_reference)}"
        )
        for t in c.tiers:
            state = "byte-exact" if t.byte_exact else f"first divergence at step {t.first_divergent_step}"
            if t.error:
                state = f"ERROR {t.error}"
            lines.append(
                f"    {t.tier:8s} {_pct(t.wer_vs_pytorch):>7s} {_pct(t.wer_vs_reference):>7s} "
                f"{t.levenshtein_vs_fp32:5d}  {state}"
            )
    lines += set_lines(report.sets)
    lines += kernel_lines(report)
    lines.append("gates:")
    lines += [f"  {'PASS' if g.passed else 'FAIL'} {g.name}: {g.detail}" for g in report.gates]
    return lines


def set_lines(sets: dict) -> list[str]:
    """Per clip set: PyTorch against the references, then each tier against PyTorch and the references."""
    lines = []
    for name, s in sets.items():
        lines.append(
            f"clip set {name} ({s['clips']} clips): PyTorch WER vs reference "
            f"{_pct(s['pytorch_wer_vs_reference'])}, CER {_pct(s['pytorch_cer_vs_reference'])}, "
            f"median top-1/top-2 margin {s['pytorch_median_margin']}"
        )
        for tier, t in s["tiers"].items():
            margins = ", ".join(f"{m:.2f}" for m in t["margins_at_divergence"]) or "none"
            lines.append(
                f"  {tier:8s} WER vs PyTorch {_pct(t['wer_vs_pytorch']):>7s}  vs reference "
                f"{_pct(t['wer_vs_reference']):>7s}  margins at divergence: {margins}"
            )
    return lines
