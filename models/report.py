"""Reports: the console's one-lesion report and the vendor's evaluation report.

- :func:`write_lesion_report` writes ``report.json`` (schema :class:`LesionReport`), the mask
  and an overlay PNG (contour and seed on the image), and a self-contained ``report.html``.
- :func:`write_evaluation_report` writes one self-contained HTML page (figures embedded as
  base64 PNG): ROC curves pooled and per site, a reliability diagram, metrics pooled, per site
  and per scanner, the modes' operating points and descriptor agreement.

Every file is written atomically (:func:`data_registry.files.write_atomic`: a temporary file in
the same folder, then ``os.replace``), so
a reader never sees half a report.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from data_registry.files import write_atomic
from data_registry.schema import BiRads, Descriptors, Pseudonym, SeedPoint
from models import metrics
from models.calibration import Mode, OperatingPoints
from models.exceptions import ReportError
from models.verdict import NO_LESION, lesion_at_click

if TYPE_CHECKING:  # matplotlib and scikit-learn load only for the vendor's evaluation report
    from matplotlib.figure import Figure

INTENDED_USE = (
    "Research software, not a medical device. The suggestion supports and never replaces "
    "the radiologist's assessment."
)
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
OVERLAY_PNG = "overlay.png"
MASK_PNG = "mask.png"
CONTOUR_RGB = (255, 196, 0)
"""Colour of the lesion contour on the overlay (amber: visible on grey and on dark lesions)."""
SEED_RGB = (0, 200, 255)
"""Colour of the seed marker."""
SEED_ARM_FRACTION = 0.02
"""Arm length of the seed cross, as a fraction of the image's longer side (at least 3 px)."""
FIGURE_DPI = 110


class LesionReport(BaseModel):
    """Schema of the console's ``report.json``; consumers validate with it.

    Attributes:
        case_id: pseudonymous identifier of the case.
        lesion_found: whether the segmentation is a plausible lesion under the click
            (:func:`models.verdict.lesion_at_click`); without one there is no verdict.
        finding: one line: the lesion was found, or ``no lesion found at the click`` and why.
        malignancy_probability: calibrated probability of malignancy (null without a lesion).
        suggestion: ``possibly benign`` or ``possibly malignant`` at the mode's threshold
            (null without a lesion).
        birads_note: when the suggestion and the BI-RADS band seem to disagree, the sentence
            saying that the category governs and why; else null.
        mode: the operating mode the suggestion was made in.
        birads: suggested BI-RADS category (null without a lesion).
        descriptors: lexicon descriptors of the lesion (null without a lesion).
        lesion_area_px: area of the segmented region in pixels.
        mask_png: file name of the mask, relative to the report's folder.
        model_version: version of the model that produced the result.
        release_status: ``signed-release`` or ``unreleased-candidate``.
        release_statement: ``signed release X`` or ``unreleased candidate: not for clinical
            use``, shown at the top of the HTML report.
        latency_ms: time from the click to the result.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    case_id: Pseudonym
    lesion_found: bool
    finding: str = Field(min_length=1, max_length=400)
    malignancy_probability: float | None = Field(ge=0.0, le=1.0)
    suggestion: Literal["possibly benign", "possibly malignant"] | None
    birads_note: str | None = None
    mode: Mode
    birads: BiRads | None
    descriptors: Descriptors | None
    lesion_area_px: int = Field(ge=0)
    mask_png: str = Field(pattern=r"^[^/\\]+\.png$")
    model_version: str = Field(min_length=1, max_length=128)
    release_status: Literal["signed-release", "unreleased-candidate"]
    release_statement: str = Field(min_length=1, max_length=200)
    latency_ms: float = Field(ge=0.0)

    @model_validator(mode="after")
    def _no_verdict_without_a_lesion(self) -> LesionReport:
        verdict = (self.malignancy_probability, self.suggestion, self.birads, self.descriptors)
        if self.lesion_found and any(v is None for v in verdict):
            raise ValueError("a found lesion needs malignancy_probability, suggestion, birads")
        if not self.lesion_found:
            if any(v is not None for v in (*verdict, self.birads_note)):
                raise ValueError("no verdict without a lesion: probability, suggestion, "
                                 "birads, birads_note and descriptors must be null")  # fmt: skip
            if not self.finding.startswith(NO_LESION):
                raise ValueError(f"finding must say {NO_LESION!r}")
        if self.lesion_found and self.lesion_area_px == 0:
            raise ValueError("lesion_found with an empty mask")
        return self


class _Evaluation(BaseModel):
    """The input of :func:`write_evaluation_report` (see its docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_version: str = Field(min_length=1)
    title: str = "sonofed evaluation"
    y_true: list[int] = Field(min_length=1)
    prob: list[float] = Field(min_length=1)
    groups: dict[str, list[str]] = {}
    operating_points: dict[str, dict[str, float]] | None = None
    descriptor_agreement: dict[str, dict[str, Any]] = {}
    dice: list[float] | None = None
    summary: dict[str, Any] | None = None
    n_bootstrap: int = Field(default=metrics.N_BOOTSTRAP, ge=1)


def write_lesion_report(
    out_dir: str | os.PathLike[str],
    *,
    image: NDArray[np.uint8],
    mask: NDArray[np.bool_],
    seed: SeedPoint | tuple[int, int],
    result: Mapping[str, Any],
) -> dict[str, Path]:
    """Write the one-lesion report: JSON, mask PNG, overlay PNG and HTML.

    Args:
        out_dir: folder of this lesion's report (created if missing).
        image: the B-mode image, 2-D uint8.
        mask: the lesion mask, same shape (non-zero = lesion).
        seed: the radiologist's click, as a :class:`SeedPoint` or ``(x, y)``.
        result: the :class:`LesionReport` fields but ``lesion_area_px`` and ``mask_png``
            (filled in here), as :meth:`models.analysis.LesionAnalyser.analyze` returns them;
            ``descriptors`` may be a :class:`Descriptors` or a dict of its fields.

    Returns:
        Paths by kind: ``json``, ``html``, ``overlay``, ``mask``.

    Raises:
        ReportError: the image is not 2-D uint8, the mask or seed does not fit it, the result
            claims a lesion the mask does not show at the click, or it does not validate
            against :class:`LesionReport`.
    """
    pixels, lesion, point = _check_inputs(image, mask, seed)
    if {"lesion_area_px", "mask_png"} & set(result):
        raise ReportError("result must not set lesion_area_px or mask_png; they are computed here")
    check = lesion_at_click(lesion, point)
    if result.get("lesion_found") and not check.found:  # no verdict without a lesion
        raise ReportError(f"the result claims a lesion, but {check.reason}")
    try:
        report = LesionReport.model_validate(
            {**result, "lesion_area_px": int(lesion.sum()), "mask_png": MASK_PNG}
        )
    except ValidationError as e:
        raise ReportError(f"the result does not make a valid lesion report: {e}") from e
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    overlay = _png_bytes(_overlay(pixels, lesion, point))
    paths = {
        "mask": write_atomic(folder / MASK_PNG, _png_bytes(lesion.astype(np.uint8) * 255)),
        "overlay": write_atomic(folder / OVERLAY_PNG, overlay),
        "json": write_atomic(folder / REPORT_JSON, report.model_dump_json(indent=2).encode()),
    }
    paths["html"] = write_atomic(folder / REPORT_HTML, _lesion_html(report, overlay).encode())
    return paths


def write_evaluation_report(path: str | os.PathLike[str], evaluation: Mapping[str, Any]) -> Path:
    """Write the self-contained HTML evaluation report.

    Args:
        path: the HTML file to write.
        evaluation: a dict with ``model_version``; ``y_true`` (0/1) and ``prob`` per test
            case; optionally ``title``, ``groups`` (grouping name such as ``site`` or
            ``scanner`` to each case's group), ``operating_points``
            (:meth:`OperatingPoints.to_dict`), ``descriptor_agreement`` (descriptor or margin
            term to :meth:`models.metrics.Agreement.to_dict`), ``dice`` (per case),
            ``summary`` (:func:`models.metrics.summarize` output, computed when absent, with
            the modes' thresholds when operating points are given) and ``n_bootstrap``.

    Returns:
        The path written.

    Raises:
        ReportError: the evaluation dict is malformed or its metrics cannot be computed.
    """
    try:
        ev = _Evaluation.model_validate(dict(evaluation))
        points = (
            None if ev.operating_points is None else OperatingPoints.from_dict(ev.operating_points)
        )
        summary = ev.summary or metrics.summarize(
            ev.y_true,
            ev.prob,
            groups=ev.groups,
            thresholds=metrics.DEFAULT_THRESHOLDS if points is None else points.thresholds(),
            dice_per_case=ev.dice,
            n_bootstrap=ev.n_bootstrap,
        )
        sections = [
            _section("ROC curves", _img(_roc_figure(ev))),
            _section("Reliability", _img(_reliability_figure(ev))),
            _section("Metrics, pooled", _metrics_table({"all cases": summary["pooled"]})),
        ]
    except (ValidationError, ValueError) as e:  # the metrics' errors are ValueErrors too
        raise ReportError(f"cannot build the evaluation report: {e}") from e
    for grouping, blocks in summary.get("groups", {}).items():
        sections.append(_section(f"Metrics per {grouping}", _metrics_table(blocks)))
    if points is not None:
        sections.append(_section("Operating modes (chosen on validation)", _modes_table(points)))
    if ev.descriptor_agreement:
        sections.append(_section("Descriptor agreement", _agreement_table(ev.descriptor_agreement)))
    body = "".join(sections)
    title = f"{ev.title} — model {ev.model_version}"
    return write_atomic(Path(path), _page(title, body).encode())


# --- lesion report helpers -------------------------------------------------------------------


def _check_inputs(
    image: NDArray, mask: NDArray, seed: SeedPoint | tuple[int, int]
) -> tuple[NDArray[np.uint8], NDArray[np.bool_], tuple[int, int]]:
    pixels, lesion = np.asarray(image), np.asarray(mask) != 0
    if pixels.ndim != 2 or pixels.dtype != np.uint8:
        raise ReportError(f"expected a 2-D uint8 image; got {pixels.dtype} {pixels.shape}")
    if lesion.shape != pixels.shape:
        raise ReportError(f"mask shape {lesion.shape} differs from image shape {pixels.shape}")
    x, y = (seed.x, seed.y) if isinstance(seed, SeedPoint) else seed
    if not (0 <= x < pixels.shape[1] and 0 <= y < pixels.shape[0]):
        raise ReportError(
            f"seed ({x}, {y}) lies outside the {pixels.shape[1]}x{pixels.shape[0]} image"
        )
    return pixels, lesion, (int(x), int(y))


def _overlay(
    image: NDArray[np.uint8], mask: NDArray[np.bool_], seed: tuple[int, int]
) -> Image.Image:
    """The image in colour with the lesion's contour and a cross at the seed."""
    rgb = np.repeat(image[:, :, None], 3, axis=2)
    rgb[_inner_boundary(mask)] = CONTOUR_RGB
    picture = Image.fromarray(rgb)
    arm = max(3, round(SEED_ARM_FRACTION * max(image.shape)))
    x, y = seed
    draw = ImageDraw.Draw(picture)
    draw.line([(x - arm, y), (x + arm, y)], fill=SEED_RGB, width=1)
    draw.line([(x, y - arm), (x, y + arm)], fill=SEED_RGB, width=1)
    return picture


def _inner_boundary(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Lesion pixels with a 4-neighbour outside the lesion (the image edge does not count)."""
    m = np.pad(np.asarray(mask, dtype=bool), 1, mode="edge")
    core = m[1:-1, 1:-1]
    return core & ~(m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:])


def _lesion_html(report: LesionReport, overlay_png: bytes) -> str:
    signed = report.release_status == "signed-release"
    banner = (
        f'<p class="release {"signed" if signed else "candidate"}" id="release-status">'
        f"Model: {html.escape(report.release_statement)}"
        f"{'' if signed else ' (this model has not been released; do not act on its output)'}"
        "</p>"
    )
    if report.lesion_found:
        finding = f'<p class="finding" id="finding">{html.escape(report.finding.capitalize())}</p>'
    else:
        finding = (
            f'<p class="finding none" id="finding"><strong>{html.escape(NO_LESION.capitalize())}'
            f"</strong>: {html.escape(report.finding.removeprefix(NO_LESION + ': '))}. No "
            "probability, suggestion or BI-RADS category is given.</p>"
        )
    rows: list[tuple[str, str]] = [
        ("Case", report.case_id),
        ("Lesion found", "yes" if report.lesion_found else "no"),
    ]
    if report.lesion_found:
        d = report.descriptors or Descriptors()
        probability = report.malignancy_probability or 0.0
        rows += [
            ("Probability of malignancy", f"{100 * probability:.1f} %"),
            ("Suggestion", f"{report.suggestion} ({report.mode.value} mode)"),
            ("BI-RADS suggestion", report.birads.value if report.birads else "—"),
            ("Shape", _term(d.shape)),
            ("Orientation", _term(d.orientation)),
            ("Margin", ", ".join(m.value for m in d.margin) or "unknown"),
            ("Echo pattern", _term(d.echo_pattern)),
            ("Posterior features", _term(d.posterior_features)),
        ]
    rows += [
        ("Segmented area", f"{report.lesion_area_px} px"),
        ("Model version", report.model_version),
        ("Release status", report.release_statement),
        ("Latency", f"{report.latency_ms:.0f} ms"),
    ]
    table = _table(["", ""], [[k, v] for k, v in rows], show_header=False)
    note = (
        f'<p class="note" id="birads-note">{html.escape(report.birads_note)}</p>'
        if report.birads_note
        else ""
    )
    image = _img(overlay_png, alt="image with the segmented region and the click")
    body = banner + finding + note + image + table  # the note next to the finding, not below
    return _page(f"Lesion report {report.case_id}", body)


def _term(value: object) -> str:
    return "unknown" if value is None else str(value)


# --- evaluation report helpers ---------------------------------------------------------------


def _roc_figure(ev: _Evaluation) -> bytes:
    from matplotlib.figure import Figure
    from sklearn.metrics import roc_curve

    figure = Figure(figsize=(5.0, 5.0))
    axes = figure.add_subplot()
    y, p = np.asarray(ev.y_true), np.asarray(ev.prob)
    curves = [("pooled", np.ones(len(y), dtype=bool))]
    sites = np.asarray(ev.groups.get("site", []))
    curves += [(s, sites == s) for s in sorted(set(sites.tolist()))]
    for label, chosen in curves:
        if len(set(y[chosen].tolist())) < 2:
            continue  # one class: no curve
        fpr, tpr, _ = roc_curve(y[chosen], p[chosen])
        width = 2.0 if label == "pooled" else 1.0
        axes.plot(fpr, tpr, linewidth=width, label=label)
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey")
    axes.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1))
    axes.legend(loc="lower right", fontsize="small")
    return _figure_png(figure)


def _reliability_figure(ev: _Evaluation) -> bytes:
    bins = metrics.reliability_bins(ev.y_true, ev.prob)
    centres = (bins.edges[:-1] + bins.edges[1:]) / 2
    filled = bins.counts > 0
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.0, 5.0))
    axes = figure.add_subplot()
    axes.bar(
        centres[filled],
        bins.fraction_positive[filled],
        width=np.diff(bins.edges)[filled],
        edgecolor="black",
        alpha=0.6,
        label="observed share malignant",
    )
    axes.plot(bins.mean_probability[filled], bins.fraction_positive[filled], "o", color="black")
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey", label="perfect calibration")
    ece = metrics.expected_calibration_error(ev.y_true, ev.prob)
    axes.set(xlabel="predicted probability", ylabel="observed share", xlim=(0, 1), ylim=(0, 1))
    axes.set_title(f"ECE {ece:.3f}")
    axes.legend(loc="upper left", fontsize="small")
    return _figure_png(figure)


def _metrics_table(blocks: Mapping[str, Mapping[str, Any]]) -> str:
    names = list(next(iter(blocks.values()))["thresholds"]) if blocks else []
    header = ["group", "n", "malignant", "AUC [95 % CI]", "ECE", "Brier"]
    header += [f"sens / spec @ {name}" for name in names]
    has_dice = any("dice_mean" in block for block in blocks.values())
    header += ["Dice"] if has_dice else []
    rows = []
    for group, block in blocks.items():
        auc = block["auc"]
        auc_text = (
            f"{auc['auc']:.3f} [{auc['ci_low']:.3f}, {auc['ci_high']:.3f}]"
            if auc["auc"] is not None
            else f"— ({auc['reason']})"
        )
        row = [group, block["n"], block["n_positive"], auc_text]
        row += [f"{block['ece']:.3f}", f"{block['brier']:.3f}"]
        for name in names:
            rates = block["thresholds"][name]
            row.append(f"{_rate(rates['sensitivity'])} / {_rate(rates['specificity'])}")
        if has_dice:
            row.append(_rate(block.get("dice_mean")))
        rows.append(row)
    return _table(header, rows)


def _modes_table(points: OperatingPoints) -> str:
    rows = []
    for mode in Mode:
        point = points.point(mode)
        rows.append(
            [
                mode.value,
                f"{point.threshold:.4f}",
                _rate(point.sensitivity),
                _rate(point.specificity),
            ]
        )
    return _table(["mode", "threshold", "validation sensitivity", "validation specificity"], rows)


def _agreement_table(agreement: Mapping[str, Mapping[str, Any]]) -> str:
    rows = [
        [name, a.get("n", ""), _rate(a.get("accuracy")), _rate(a.get("kappa"))]
        for name, a in agreement.items()
    ]
    return _table(["descriptor", "n", "accuracy", "Cohen's kappa"], rows)


def _rate(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


# --- HTML and files --------------------------------------------------------------------------

_STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:60em}"
    "table{border-collapse:collapse;margin:1em 0}"
    "td,th{border:1px solid #bbb;padding:.3em .6em;text-align:left}"
    "th{background:#eee}.use{border-left:4px solid #c80;padding:.5em;background:#fff8e8}"
    ".release{font-size:1.3em;font-weight:bold;padding:.5em;border:2px solid}"
    ".signed{color:#064;border-color:#064;background:#eefaf2}"
    ".candidate{color:#a00;border-color:#a00;background:#fff0f0}"
    ".finding{font-size:1.2em}.none{color:#a00}"
    ".note{border-left:4px solid #06c;padding:.5em;background:#eef4ff}"
)


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{body}"
        f'<p class="use">Intended use: {html.escape(INTENDED_USE)}</p></body></html>\n'
    )


def _section(title: str, content: str) -> str:
    return f"<h2>{html.escape(title)}</h2>{content}"


def _table(
    columns: Sequence[str], rows: Sequence[Sequence[object]], *, show_header: bool = True
) -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in columns) + "</tr>"
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    return f"<table>{head if show_header else ''}{body}</table>"


def _img(png: bytes, alt: str = "figure") -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<p><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></p>'


def _figure_png(figure: Figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    buffer = io.BytesIO()
    FigureCanvasAgg(figure)  # attach the Agg canvas: no pyplot, no global backend state
    figure.savefig(buffer, format="png", dpi=FIGURE_DPI)
    return buffer.getvalue()


def _png_bytes(picture: Image.Image | NDArray[np.uint8]) -> bytes:
    if isinstance(picture, np.ndarray):
        picture = Image.fromarray(picture)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
