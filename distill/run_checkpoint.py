"""The trainer's checkpoint half: what a checkpoint holds, writing it, and resuming from it.

``CheckpointedRun`` is a mixin of ``distill.trainer.Trainer`` (split out of it to keep one
concept per module): ``state`` builds the checkpoint dict (``distill.checkpoint`` documents its
keys), ``save`` checks that every rank holds the same banks, student and key student and writes
it atomically (rank 0), ``try_resume`` loads this run's checkpoint (refusing another run's,
naming the options that differ) and restores every random state, so a resumed run continues
exactly where the uninterrupted one would be.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from cache_builder import distributed as D
from distill.checkpoint import CHECKPOINT, FORMAT, capture_rng_state, load_checkpoint, restore_rng_state, save_atomic
from distill.config import DistillConfig
from distill.run_identity import RunIdentity, RunMismatchError


class CheckpointedRun:
    """Checkpoint methods of a ``Trainer`` (the attributes below are the trainer's)."""

    cfg: DistillConfig
    targets: Any
    student: torch.nn.Module
    key_student: torch.nn.Module | None
    objective: torch.nn.Module
    optimizer: torch.optim.Optimizer
    world: int
    epoch: int
    step_in_epoch: int
    global_step: int
    input_size: int

    @property
    def out(self) -> str:
        return self.cfg.out or "."

    @property
    def identity(self) -> RunIdentity:
        raise NotImplementedError  # the trainer's (it knows the decoder and bank precision)

    @property
    def fingerprint(self) -> str:
        return self.identity.fingerprint

    @property
    def finished(self) -> bool:
        return self.epoch >= self.cfg.epochs

    def state(self, rng_states: list[dict[str, Any]]) -> dict[str, Any]:
        """The checkpoint (``distill.checkpoint``); ``rng_states`` holds every rank's random states."""
        return {
            "format": FORMAT, "fingerprint": self.fingerprint, "identity": self.identity.to_json(),
            "config": json.dumps(self.cfg.to_json(), default=str), "student_name": self.cfg.student,
            "student": self.student.state_dict(),
            "key_student": self.key_student.state_dict() if self.key_student is not None else {},
            "objective": self.objective.state_dict(), "optimizer": self.optimizer.state_dict(),
            "rng": rng_states, "world_size": self.world, "epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step, "finished": self.finished,
            "teacher": self.targets.teacher_name, "input_size": self.input_size,
        }

    def replicated_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors every rank must hold identically: banks (anchors, pointers, row ids), the 1q
        projection, the student's and the key student's parameters. (BN running statistics are
        left out: each rank updates them from its own batch after rank 0's are broadcast.)"""
        # (a module's non-tensor extra state, e.g. the static support's step counter, is skipped)
        out = {f"objective.{k}": v for k, v in self.objective.state_dict().items() if isinstance(v, torch.Tensor)}
        out.update({f"student.{k}": v for k, v in self.student.named_parameters()})
        if self.key_student is not None:
            out.update({f"key_student.{k}": v for k, v in self.key_student.named_parameters()})
        return out

    def save(self) -> None:
        """Check the ranks agree, then write the checkpoint atomically (rank 0 only)."""
        D.check_same_across_ranks(self.replicated_tensors())
        rng_states = D.all_gather_object(capture_rng_state())
        if D.rank() == 0:
            save_atomic(self.state(rng_states), os.path.join(self.out, CHECKPOINT))
        D.barrier()

    def try_resume(self) -> bool:
        """Load ``out``'s checkpoint if it is this run's; False when there is none (or ``--fresh``).

        Raises:
            RunMismatchError: it is another run's (naming the options that differ) or was
                written with another number of processes.
        """
        path = os.path.join(self.out, CHECKPOINT)
        if self.cfg.fresh or not os.path.exists(path):
            return False
        ckpt = load_checkpoint(path)
        if ckpt["fingerprint"] != self.fingerprint:
            differences = RunIdentity.from_json(ckpt["identity"]).differences(self.identity)
            raise RunMismatchError(
                f"{self.out} holds a run with a different config or cache ({'; '.join(differences) or 'fingerprint ' + ckpt['fingerprint']}); "
                "use another --out, or --fresh to start over there")
        saved_world = int(ckpt["world_size"])
        if saved_world != self.world:
            raise RunMismatchError(
                f"{path} was written by a run with {saved_world} processes and this one has {self.world}; the global batch and "
                f"the data order depend on it. Resume with {saved_world} processes, or use another --out (or --fresh)")
        self.student.load_state_dict(ckpt["student"])
        if self.key_student is not None:
            self.key_student.load_state_dict(ckpt["key_student"])
        self.objective.load_state_dict(ckpt["objective"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        restore_rng_state(ckpt["rng"][D.rank()])
        self.epoch, self.step_in_epoch, self.global_step = ckpt["epoch"], ckpt["step_in_epoch"], ckpt["global_step"]
        return True
