"""ipywidgets front ends: the prompt prober and the over-refusal explorer.

The widgets only collect choices and render results: the prober calls `dispsafe_nb.probe.probe`, the explorer
reads `dispsafe_nb.ui.over_refusal_explorer` tables. Bad input is shown in the widget as a message (never a traceback) and the
widget keeps working. Both render into `ipywidgets.HTML` values, so tests can drive them with `.value = ...` and
`button.click()` and read what a user would see.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

import ipywidgets as w
from IPython.display import display

from dispsafe_nb import plots, theory
from dispsafe_nb.ui import over_refusal_explorer as explorer
from dispsafe_nb.ui.prober import (
    DUAL,
    SECOND_JUDGE,
    STRING_JUDGES,
    ProbeDecoding,
    ProbeInputError,
    ProbeResult,
    ProbeSession,
    SystemAnswer,
    batch_journal_path,
    parse_prompts,
    probe,
)
from dispsafe_nb.ui.prompt_presets import presets

_CELL = "border:1px solid #ccc;padding:6px;vertical-align:top;text-align:left"


def _esc(text: str) -> str:
    return html.escape(text).replace("\n", "<br>")


def _q(logq: float | None) -> str:
    """A sequence probability as 'q = 1.2e-05 (log −11.3)' (or n/a)."""
    if logq is None:
        return "n/a (a mixture: see the refusal rate)"
    return f"{math.exp(logq):.2e} (log {logq:.1f})"


def _verdicts_html(a: SystemAnswer, i: int) -> str:
    parts = []
    for label in STRING_JUDGES:
        parts.append(f"{label}: {'refusal' if a.verdicts[label][i] else 'no refusal'}")
    if SECOND_JUDGE in a.verdicts:
        parts.append(f"{SECOND_JUDGE}: {'safe' if a.verdicts[SECOND_JUDGE][i] else 'unsafe'}")
    return "; ".join(parts)


def _answer_cell(a: SystemAnswer) -> str:
    lines = []
    for i, text in enumerate(a.answers):
        head = f"<b>sample {i + 1}</b> " if len(a.answers) > 1 else ""
        replaced = a.replaced
        note = ""
        if replaced is not None and replaced[i] and a.llm_answers is not None and a.llm_alphas is not None:
            note = (
                f"<br><i>replaced by the guard: the LLM said “{_esc(a.llm_answers[i][:200])}” "
                f"(α = {a.llm_alphas[i]:.3f})</i>"
            )
        lines.append(
            f"<div style='margin-bottom:6px'>{head}{_esc(text)}{note}<br>"
            f"<small>α = {a.alphas[i]:.3f} · {_verdicts_html(a, i)}</small></div>"
        )
    stats = (
        f"<small><b>refusal rate</b> {a.refusal_rate:.0%} of {len(a.answers)} · <b>mean α</b> "
        f"{a.mean_alpha:.3f}<br><b>q(y_r | x)</b> {_q(a.logq_refusal)}<br><b>q(y_base | x)</b> "
        f"{_q(a.logq_base_answer) if a.system != DUAL else 'n/a'}<br><b>latency</b> {a.latency_s:.2f} s</small>"
    )
    return "".join(lines) + stats


def answers_html(result: ProbeResult) -> str:
    """Every prompt as a row, every selected system as a column (systems that failed show their error)."""
    head = "".join(f"<th style='{_CELL}'>{_esc(s)}</th>" for s in result.systems)
    rows = []
    for prompt in result.prompts:
        cells = []
        for system in result.systems:
            if system in result.errors:
                cells.append(f"<td style='{_CELL};color:#b00'>{_esc(result.errors[system])}</td>")
            else:
                cells.append(f"<td style='{_CELL}'>{_answer_cell(result.answer(system, prompt))}</td>")
        rows.append(
            f"<tr><td colspan='{len(result.systems)}' style='{_CELL};background:#f4f4f4'>"
            f"<b>prompt</b>: {_esc(prompt)}</td></tr><tr>{''.join(cells)}</tr>"
        )
    legend = (
        f"<small>y_r = “{_esc(result.refusal)}”. α: the teacher guard's p(safe | x, y). Refusal: either string "
        "rule (JailbreakBench's or XSTest's) says so. q(·| x): the probability of that exact answer under the "
        "frozen LLM with the system's method at temperature 1 (the distribution distillation fits); y_base: the "
        "base model's greedy answer, scored as generated.</small>"
    )
    return (
        f"<table style='border-collapse:collapse;width:100%'><tr>{head}</tr>{''.join(rows)}</table>{legend}"
    )


def summary_html(result: ProbeResult) -> str:
    """The batch summary: one row per system."""
    summary = result.summary()
    errors = "".join(f"<p style='color:#b00'>{_esc(s)}: {_esc(e)}</p>" for s, e in result.errors.items())
    if summary.empty:
        return errors
    return summary.to_html(float_format=lambda v: f"{v:.3f}") + errors


def error_html(message: str) -> str:
    return f"<p style='color:#b00'><b>Cannot run:</b> {_esc(message)}</p>"


class Prober:
    """The prompt-probing widget. `Prober(session).show()` in a notebook; tests set the controls' values and
    call `run_button.click()`, then read `results.value` (HTML) and `last_result` (the `ProbeResult`)."""

    def __init__(
        self,
        session: ProbeSession,
        default_systems: Sequence[str] = ("base", DUAL),
        preset_sets: Sequence[Any] | None = None,
    ) -> None:
        self.session = session
        self.preset_sets = {p.label: p for p in (preset_sets if preset_sets is not None else presets())}
        self.last_result: ProbeResult | None = None
        self.last_figure: Any = (
            None  # the batch figure shown last (also kept for tests: no kernel, no Output)
        )
        self.preset_set = w.Dropdown(
            options=["(none)", *self.preset_sets], description="preset set", layout={"width": "60%"}
        )
        self.preset = w.Dropdown(options=["(none)"], description="preset", layout={"width": "90%"})
        self.use_set = w.Button(
            description="whole set → batch", tooltip="paste the set's prompts, one a line"
        )
        self.prompt = w.Textarea(
            placeholder="Type a prompt (batch mode: one prompt a line)",
            layout={"width": "90%", "height": "80px"},
        )
        self.mode = w.ToggleButtons(options=["single", "batch"], description="mode")
        self.systems = w.SelectMultiple(description="systems", layout={"width": "60%", "height": "110px"})
        self.refresh = w.Button(description="refresh systems", tooltip="find artifacts saved since")
        self.decoding = w.ToggleButtons(options=["greedy", "sampled"], description="decoding")
        self.temperature = w.FloatSlider(value=0.7, min=0.1, max=2.0, step=0.1, description="temperature")
        self.max_new_tokens = w.IntSlider(value=48, min=1, max=256, description="max tokens")
        self.k = w.IntSlider(value=1, min=1, max=16, description="k samples")
        self.run_button = w.Button(description="Run", button_style="primary", icon="play")
        self.progress = w.IntProgress(value=0, min=0, max=1, description="")
        self.status = w.Label(value="")
        self.results = w.HTML(value="")
        self.figure = w.Output()
        self._refresh_systems(default_systems)
        self.preset_set.observe(self._on_preset_set, names="value")
        self.preset.observe(self._on_preset, names="value")
        self.use_set.on_click(self._on_use_set)
        self.refresh.on_click(lambda _: self._refresh_systems(self.systems.value))
        self.decoding.observe(self._on_decoding, names="value")
        self.run_button.on_click(self._on_run)
        self._on_decoding({"new": self.decoding.value})

    # ---- layout ----------------------------------------------------------------------------------------
    def widget(self) -> w.Widget:
        return w.VBox(
            [
                w.HBox([self.preset_set, self.use_set]),
                self.preset,
                self.prompt,
                self.mode,
                w.HBox([self.systems, self.refresh]),
                w.HBox([self.decoding, self.temperature]),
                w.HBox([self.max_new_tokens, self.k]),
                w.HBox([self.run_button, self.progress, self.status]),
                self.results,
                self.figure,
            ]
        )

    def show(self) -> None:
        display(self.widget())

    # ---- callbacks -------------------------------------------------------------------------------------
    def _refresh_systems(self, keep: Sequence[str]) -> None:
        specs = self.session.systems()
        labels = [(s.name if s.loadable else f"{s.name} (cannot load: {s.note})", s.name) for s in specs]
        self.systems.options = labels
        self.systems.value = tuple(name for name in keep if name in {s.name for s in specs})

    def _on_preset_set(self, change: Mapping[str, Any]) -> None:
        chosen = self.preset_sets.get(change["new"])
        self.preset.options = ["(none)", *(chosen.prompts if chosen else [])]

    def _on_preset(self, change: Mapping[str, Any]) -> None:
        if change["new"] and change["new"] != "(none)":
            self.prompt.value = change["new"]

    def _on_use_set(self, _: Any) -> None:
        chosen = self.preset_sets.get(self.preset_set.value)
        if chosen:
            self.mode.value = "batch"
            self.prompt.value = "\n".join(chosen.prompts)

    def _on_decoding(self, change: Mapping[str, Any]) -> None:
        sampled = change["new"] == "sampled"
        self.temperature.disabled = not sampled
        self.k.disabled = not sampled
        if not sampled:
            self.k.value = 1

    def _set_progress(self, done: int, total: int, what: str) -> None:
        self.progress.max = max(total, 1)
        self.progress.value = done
        self.status.value = f"running: {what}" if done < total else "rendering"

    def request(self) -> tuple[list[str] | str, list[str], ProbeDecoding]:
        """The prompts, systems and decoding the controls describe (raises ProbeInputError on bad values)."""
        text = self.prompt.value
        prompts: list[str] | str = text if self.mode.value == "batch" else ([text] if text.strip() else [])
        decoding = ProbeDecoding(
            mode=self.decoding.value,
            temperature=self.temperature.value,
            max_new_tokens=self.max_new_tokens.value,
            k=self.k.value if self.decoding.value == "sampled" else 1,
        )
        return prompts, list(self.systems.value), decoding

    def _on_run(self, _: Any) -> None:
        self.run_button.disabled = True
        self.figure.clear_output()
        self.results.value = "<i>running…</i>"
        try:
            prompts, systems, decoding = self.request()
            # A batch is journaled (a crashed kernel loses nothing: the same batch again resumes it).
            journal = None
            if self.mode.value == "batch":
                journal = batch_journal_path(self.session, parse_prompts(prompts), systems, decoding)
            result = probe(
                self.session, prompts, systems, decoding, progress=self._set_progress, journal=journal
            )
        except ProbeInputError as err:
            self.results.value = error_html(str(err))
            self.status.value = "fix the input and run again"
            return
        except Exception as err:  # the widget must keep working whatever a system does
            self.results.value = error_html(f"{type(err).__name__}: {err}")
            self.status.value = "failed; the widget still works"
            return
        finally:
            self.run_button.disabled = False
        self.last_result = result
        if self.mode.value == "batch":
            self.results.value = summary_html(result) + answers_html(result)
            self.last_figure = plots.refusal_probability_figure(result.table())
            with self.figure:
                display(self.last_figure)
        else:
            self.results.value = answers_html(result)
        self.status.value = "done"  # only once everything is shown


class OverRefusalExplorer:
    """Bars of refusal rate per prompt type and system on a benchmark of safe prompts (XSTest: the paper's
    aggregate beside ours), and the prompts each system refused for the chosen type, with its answer."""

    def __init__(
        self, sources: Mapping[str, Sequence[Any]], paper: Mapping[str, float] | None = None
    ) -> None:
        if not sources:
            raise ValueError("no evaluation records to explore: run explorer.load_or_compute(...) first")
        self.rows = {name: explorer.prompt_rows(records) for name, records in sources.items()}
        self.paper = dict(paper or {})
        self.last_figure: Any = None
        self._quiet = False
        self.source = w.Dropdown(options=list(self.rows), description="records")
        self.benchmark = w.Dropdown(description="benchmark")
        self.category = w.Dropdown(description="prompt type")
        self.figure = w.Output()
        self.refused = w.HTML()
        self.source.observe(lambda _: self._on_source(), names="value")
        self.benchmark.observe(lambda _: self._on_benchmark(), names="value")
        self.category.observe(lambda _: self._render_refused(), names="value")
        self._on_source()

    def widget(self) -> w.Widget:
        return w.VBox([w.HBox([self.source, self.benchmark, self.category]), self.figure, self.refused])

    def show(self) -> None:
        display(self.widget())

    @property
    def _rows(self) -> Any:
        return self.rows[self.source.value]

    def table(self) -> Any:
        return explorer.over_refusal_table(self._rows, self.benchmark.value)

    def _on_source(self) -> None:
        benches = [b for b in explorer.EXPLORER_BENCHMARKS if b in set(self._rows["benchmark"])]
        self._quiet = True  # setting options may select a value and fire the observer: render once, below
        try:
            self.benchmark.options = [(explorer.EXPLORER_BENCHMARKS[b], b) for b in benches]
            self.benchmark.value = benches[0] if benches else None
        finally:
            self._quiet = False
        self._on_benchmark()

    def _on_benchmark(self) -> None:
        if self._quiet:
            return
        if self.benchmark.value is None:  # a source without any explorer benchmark: show nothing stale
            self.figure.clear_output()
            self.refused.value = "<p>These records hold no XSTest or JBB benign evaluation.</p>"
            return
        self.category.options = explorer.categories(self._rows, self.benchmark.value)
        self.category.value = explorer.ALL
        self.figure.clear_output()
        paper = self.paper if self.benchmark.value == "xstest_safe" else None
        self.last_figure = plots.over_refusal_by_type_figure(self.table(), paper, title=self.benchmark.label)
        with self.figure:
            display(self.last_figure)
        self._render_refused()

    def _render_refused(self) -> None:
        if self._quiet or self.benchmark.value is None or self.category.value is None:
            return
        refused = explorer.refused_prompts(self._rows, self.benchmark.value, self.category.value)
        if refused.empty:
            self.refused.value = "<p>No system refused a prompt of this type.</p>"
            return
        blocks = []
        for system, part in refused.groupby("system", sort=False):
            items = "".join(
                f"<li><b>{_esc(p)}</b><br>{_esc(a[:300])}</li>"
                for p, a in zip(part["prompt"], part["answer"], strict=True)
            )
            blocks.append(f"<h4>{_esc(system)}: {len(part)} refused</h4><ul>{items}</ul>")
        self.refused.value = "".join(blocks)


class ToyExplorer:
    """Sliders over notebook 01's toy over-refusal experiment: the guard's α on benign prompts and on the unsafe
    answers of harmful prompts (how well it separates them), and the noise in the student's view of harmfulness.
    Each change reruns `theory.toy_overrefusal_experiment` and redraws its figure and the final refusal rates."""

    def __init__(self, steps: int = 300, seed: int = 0) -> None:
        self.steps, self.seed = steps, seed
        style = {"description_width": "initial"}
        common = dict(continuous_update=False, style=style, layout={"width": "420px"})
        self.alpha_safe = w.FloatSlider(
            0.95, min=0.5, max=0.99, step=0.01, description="α on benign", **common
        )
        self.alpha_unsafe = w.FloatSlider(
            0.1, min=0.01, max=0.5, step=0.01, description="α on unsafe answers", **common
        )
        self.feature_noise = w.FloatSlider(
            1.0, min=0.0, max=2.0, step=0.1, description="feature noise", **common
        )
        self.summary = w.HTML()
        self.figure = w.Output()
        self.last_figure: Any = None
        self.last_result: Any = None
        for slider in (self.alpha_safe, self.alpha_unsafe, self.feature_noise):
            slider.observe(lambda _: self.update(), names="value")
        self.update()

    def update(self) -> None:

        result = theory.toy_overrefusal_experiment(
            alpha_safe=self.alpha_safe.value,
            alpha_unsafe=self.alpha_unsafe.value,
            feature_noise=self.feature_noise.value,
            steps=self.steps,
            seed=self.seed,
        )
        self.last_result = result
        teacher, tv, kl = result["teacher"], result["tv"], result["kl"]
        self.summary.value = (
            f"<p>benign refusal after {self.steps} steps: teacher {teacher['refusal_benign']:.3f}, TV-DiSP "
            f"{tv['refusal_benign'][-1]:.3f}, KL-DiSP {kl['refusal_benign'][-1]:.3f} (KL − TV "
            f"{100 * (kl['refusal_benign'][-1] - tv['refusal_benign'][-1]):+.1f} points); harmful: teacher "
            f"{teacher['refusal_harmful']:.3f}, TV {tv['refusal_harmful'][-1]:.3f}, KL "
            f"{kl['refusal_harmful'][-1]:.3f}</p>"
        )
        self.last_figure = plots.toy_overrefusal_figure(result, title="Toy distillation with your settings")
        self.figure.clear_output(wait=True)
        with self.figure:
            display(self.last_figure)

    def widget(self) -> w.Widget:
        return w.VBox([self.alpha_safe, self.alpha_unsafe, self.feature_noise, self.summary, self.figure])

    def show(self) -> None:
        display(self.widget())
