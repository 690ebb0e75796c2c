"""CAD IoU: sandboxed execution of CadQuery programs and solid IoU against reference programs.

A thin `evaluate.Metric` shell: all logic lives in `cadcoder.evaluation` (evaluate is in maintenance mode).
"""

import datasets
import evaluate

_CITATION = """\
@software{cadcoder,
  title = {CadCoder: image to CadQuery programs},
  year = {2026}
}
"""

_DESCRIPTION = """\
Executes predicted and reference CadQuery programs in an isolated sandbox (policy check, separate
processes, resource limits, wall-clock timeouts) and compares the resulting solids, handed over as BREP
to a fresh sandbox child in which no generated code ran (so a prediction cannot patch its scorer), by volume IoU under
a named protocol: "aligned" (centre of mass, radius of gyration, principal axes, best of 4 sign flips,
exact OpenCascade booleans), "bbox" (bounding-box centre, longest side 1) or "mecagent" (the MecAgent
challenge's surface-voxel best IoU, reimplemented). Also reports the valid syntax rate, IoU over valid
predictions and over all pairs (failures count 0), Chamfer distance, failure counts per reason,
reference failures, the share of distinct predictions and, optionally, a chance level.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): predicted CadQuery programs.
    references (list of str): reference CadQuery programs, one per prediction.
    protocol (str): "aligned" (default), "bbox" or "mecagent".
    timeout (float): wall-clock seconds per sandbox job (running a program; scoring its solid), default 10.
    num_workers (int or None): sandbox worker processes, default CPU count (at most 8).
    with_chance (bool): also report `iou_chance` (references scored against shuffled references).
    fast (bool): mesh-boolean IoU (within 0.005 of exact) instead of exact OpenCascade booleans.
    seed (int): seed of the chance shuffle and Chamfer sampling.
    progress (bool): show progress bars, default False.
Returns:
    valid_syntax_rate, iou_mean, iou_median, iou_mean_all, chamfer_median, failures, ious, statuses,
    chamfers, errors, reference_failures, distinct_predictions, num_samples, protocol, fast
    (and iou_chance, iou_chance_pairs with with_chance=True).
Examples:
    >>> metric = evaluate.load("./metrics/cad_iou")
    >>> box = "solid = cq.Workplane().box(1, 2, 3)"
    >>> metric.compute(predictions=[box], references=[box])["iou_mean"]
    1.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CadIou(evaluate.Metric):
    """Sandboxed solid IoU between predicted and reference CadQuery programs."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
            reference_urls=["https://github.com/CadQuery/cadquery"],
        )

    def _compute(self, predictions, references, protocol="aligned", timeout=10.0, num_workers=None, with_chance=False, fast=False, seed=0, progress=False):
        from cadcoder.evaluation import evaluate_programs

        return evaluate_programs(
            predictions,
            references,
            protocol=protocol,
            timeout=timeout,
            num_workers=num_workers,
            with_chance=with_chance,
            fast=fast,
            seed=seed,
            progress=progress,
        )
